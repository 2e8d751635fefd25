"""The daemon's side of the spool: the frame loop's queue, the batch writer, eviction.

:class:`SpoolWriter` holds the methods; :class:`~feederd.spool.store.Spool` (its only
subclass) sets up the state they share, opens the index and adds the labels and readers.
Crash safety and the SD card's sake decide the order of writes: see :mod:`feederd.spool`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import math
import queue
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feederd.atomic import fsync_dir, write_bytes
from feederd.config import SpoolConfig
from feederd.errors import SpoolError
from feederd.mining.decisions import Candidate, label_rank
from feederd.mining.imagehash import HashIndex
from feederd.spool.fileformat import SOI, embed_metadata, sample_file, sample_meta
from feederd.spool.index import high_water, insert_rows, set_meta, to_row, transaction

# The package's name, as before feederd.spool became a package: log lines and
# ``[logging] levels`` keep naming it.
logger = logging.getLogger("feederd.spool")

EVICT_TO = 0.95  # evict down to 95% of a bound, so eviction runs rarely, not every batch
RESUME_MARGIN = 256 * 1024  # free bytes beyond min_free_bytes before a paused spool resumes
QUEUE_MAX_ITEMS = 256
QUEUE_MAX_BYTES = 32 * 2**20


@dataclass(frozen=True, slots=True)
class _Pending:
    id: int
    candidate: Candidate
    jpeg: bytes
    model_version: str


class SpoolWriter:
    """Queue, batch writer and eviction of a :class:`~feederd.spool.store.Spool`."""

    # Set up by Spool.__init__; see there for the two locks' order.
    directory: Path
    cfg: SpoolConfig
    labels: tuple[str, ...]
    writer: bool
    dedup_distance: int
    _samples: Path
    _db: sqlite3.Connection
    _lock: threading.RLock
    _state: threading.Lock
    _flush_lock: threading.Lock
    _queue: queue.SimpleQueue[_Pending]
    _queued: list[int]
    _hashes: HashIndex
    _counters: dict[str, int]
    _paused: bool
    _wake: threading.Event
    _closing: bool
    _thread: threading.Thread | None
    _next_id: int
    _next_seq: int
    _count: int
    _bytes: int

    # ---- the frame loop's side -----------------------------------------------------------

    def put(self, candidate: Candidate, jpeg: bytes, model_version: str) -> None:
        """Queue a sample for the writer; never blocks and never raises for disk trouble.

        Skipped (and counted): while paused, when the queue is full, near-duplicates (closer
        than ``dedup_distance`` bits) of a sample at least as well labelled, invalid JPEGs.
        """
        if not self.writer:
            raise SpoolError("this spool was opened read-only; only the daemon stores samples")
        if not jpeg.startswith(SOI):
            self._count_up("invalid_jpeg")
            logger.warning("sample of visit %s is not a JPEG; not spooled",
                           candidate.frame.visit_id)
            return
        if not _finite(candidate):
            self._count_up("invalid_sample")
            logger.warning("sample of visit %s has non-finite probabilities (a model fault); "
                           "not spooled", candidate.frame.visit_id)
            return
        rank = label_rank(candidate.label_source)
        with self._state:
            if self._paused:
                self._counters["dropped_paused"] += 1
                return
            if self._queued[0] >= QUEUE_MAX_ITEMS or self._queued[1] + len(jpeg) > \
                    QUEUE_MAX_BYTES:
                self._counters["dropped_queue_full"] += 1
                return
            if self.dedup_distance > 0 and \
                    self._hashes.nearest(candidate.phash, rank) < self.dedup_distance:
                self._counters["skipped_duplicates"] += 1
                return
            sample_id, self._next_id = self._next_id, self._next_id + 1
            self._hashes.add(sample_id, candidate.phash, rank)
            self._queued[0] += 1
            self._queued[1] += len(jpeg)
        self._queue.put(_Pending(sample_id, candidate, jpeg, model_version))
        if self.cfg.commit_interval_s == 0:
            self._wake.set()

    # ---- the writer ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread: a batch commit every ``commit_interval_s``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
            self._thread.start()


    def _run(self) -> None:
        while True:
            self._wake.wait(self.cfg.commit_interval_s or None)
            if self._closing:
                return
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the writer must outlive any single bad batch
                logger.exception("spool writer: batch failed")

    def flush(self) -> int:
        """Write the queued samples and commit them in one transaction; -> samples committed.

        Files: temporary name, write, fsync, rename; then the directory is fsynced; then the
        rows are committed. Disk full (or under ``min_free_bytes``) pauses spooling and drops
        the batch; other I/O errors drop the batch and are counted. Never raises for either.
        """
        with self._flush_lock:
            batch = self._drain()
            if self._paused and not self._try_resume():
                self._drop(batch, "dropped_paused")
                return 0
            if not batch:
                return 0
            if not self._space_ok(sum(len(p.jpeg) for p in batch)):
                self._pause(f"less than {self.cfg.min_free_bytes} bytes free")
                self._drop(batch, "dropped_paused")
                return 0
            return self._write_batch(batch)

    def _write_batch(self, batch: list[_Pending]) -> int:
        written: list[Path] = []
        try:
            metas = [sample_meta(p.id, p.candidate, p.model_version, self.labels)
                     for p in batch]
            files = [self._write_file(p, meta, written) for p, meta in zip(batch, metas,
                                                                           strict=True)]
            fsync_dir(self._samples)
            with self._lock, transaction(self._db):
                rows = [to_row(self._next_seq + i, meta, p.candidate.phash, sha, size)
                        for i, (p, meta, (sha, size)) in enumerate(zip(batch, metas, files,
                                                                       strict=True))]
                insert_rows(self._db, rows)
                self._next_seq += len(rows)
        except (OSError, sqlite3.Error) as exc:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
            if len(batch) > 1 and not _disk_full(exc):
                # one bad sample must not cost the others: store them one by one
                return sum(self._write_batch([pending]) for pending in batch)
            self._write_failed(exc, batch)
            return 0
        with self._state:
            self._count += len(batch)
            self._bytes += sum(size for _, size in files)
            self._counters["committed"] += len(batch)
        self._evict_if_over()
        return len(batch)

    def _write_file(self, pending: _Pending, meta: dict[str, Any],
                    written: list[Path]) -> tuple[bytes, int]:
        data = embed_metadata(pending.jpeg, meta)
        final = self._samples / sample_file(pending.id)
        write_bytes(final, data, sync_dir=False)  # the batch fsyncs the directory once
        written.append(final)
        return hashlib.sha256(data).digest(), len(data)

    def _write_failed(self, exc: Exception, batch: list[_Pending]) -> None:
        if _disk_full(exc):
            self._pause(f"disk full ({exc})")
            self._drop(batch, "dropped_paused")
        else:
            logger.error("spool: cannot store %d sample(s) in %s: %s", len(batch),
                         self.directory, exc)
            self._drop(batch, "write_errors")

    def _drain(self) -> list[_Pending]:
        batch = []
        with contextlib.suppress(queue.Empty):
            while True:
                batch.append(self._queue.get_nowait())
        with self._state:
            self._queued[0] -= len(batch)
            self._queued[1] -= sum(len(p.jpeg) for p in batch)
        return batch

    def _drop(self, batch: list[_Pending], counter: str) -> None:
        with self._state:
            self._counters[counter] += len(batch)
            for pending in batch:
                self._hashes.remove(pending.id)

    def _space_ok(self, need: int) -> bool:
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:
            return False
        margin = RESUME_MARGIN if self._paused else 0
        return free >= self.cfg.min_free_bytes + need + margin

    def _pause(self, why: str) -> None:
        with self._state:
            if self._paused:
                return
            self._paused = True
            self._counters["pauses"] += 1
        logger.warning("spool paused: %s in %s; samples are dropped until space returns "
                       "(alerts are not affected)", why, self.directory)

    def _try_resume(self) -> bool:
        if not self._space_ok(0):
            return False
        with self._state:
            self._paused = False
        logger.warning("spool resumed: disk space is back in %s", self.directory)
        return True

    # ---- quota ---------------------------------------------------------------------------

    def enforce_quota(self) -> int:
        """Evict down to 95% of ``max_bytes``/``max_count`` when over either; -> evicted.

        Order: unlabelled before pseudo-labelled before owner-labelled; within that, samples
        already synced (safe on the laptop) first, then the lowest priority, then the oldest.
        """
        self._require_writer()
        with self._lock:
            with self._state:
                count, size, id_floor = self._count, self._bytes, self._next_id - 1
            if count <= self.cfg.max_count and size <= self.cfg.max_bytes:
                return 0
            rows = self._db.execute("SELECT seq, id, size, label_source, synced, priority "
                                    "FROM samples").fetchall()
            victims = _victims(rows, count, size, self.cfg)
            self._evict(victims, id_floor)
        logger.info("spool over its bound: evicted %d sample(s)", len(victims))
        return len(victims)

    def _evict(self, victims: list[Any], id_floor: int) -> None:
        """Remove the victims' files, then their rows (the caller holds the lock).

        The seq and id floors are kept in ``meta``, so that neither is ever given out again.
        """
        with self._state:
            for row in victims:
                self._hashes.remove(row[1])
        for row in victims:  # files first: a crash leaves rows without files, dropped
            (self._samples / sample_file(row[1])).unlink(missing_ok=True)
        fsync_dir(self._samples)
        with transaction(self._db, durable=True):
            set_meta(self._db, "seq_floor", str(high_water(self._db)))
            set_meta(self._db, "id_floor", str(id_floor))
            self._db.executemany("DELETE FROM samples WHERE seq = ?",
                                 [(r[0],) for r in victims])
        with self._state:
            self._count -= len(victims)
            self._bytes -= sum(r[2] for r in victims)
            self._counters["evicted"] += len(victims)

    def _evict_if_over(self) -> None:
        try:
            self.enforce_quota()
        except (OSError, sqlite3.Error) as exc:
            logger.error("spool: eviction failed, will retry after the next batch: %s", exc)

    # ---- small helpers -------------------------------------------------------------------

    def _count_up(self, counter: str) -> None:
        with self._state:
            self._counters[counter] += 1

    def _require_writer(self) -> None:
        if not self.writer:
            raise SpoolError("this spool was opened read-only; only the daemon changes it")


def _disk_full(exc: Exception) -> bool:
    return (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        (isinstance(exc, sqlite3.Error) and "full" in str(exc).lower())


def _finite(candidate: Candidate) -> bool:
    """A sample whose margin or probabilities are NaN cannot be indexed (nor taught from)."""
    prediction = candidate.frame.prediction
    return math.isfinite(prediction.margin) and bool(np.isfinite(prediction.probs).all())


def _victims(rows: list[Any], count: int, size: int, cfg: SpoolConfig) -> list[Any]:
    """Rows (seq, id, size, label_source, synced, priority) to evict, in eviction order."""
    rows = sorted(rows, key=lambda r: (label_rank(r[3]), -r[4], r[5], r[0]))
    victims = []
    for row in rows:
        if count <= cfg.max_count * EVICT_TO and size <= cfg.max_bytes * EVICT_TO:
            break
        victims.append(row)
        count, size = count - 1, size - row[2]
    return victims
