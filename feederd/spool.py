"""The negatives spool: JPEG files indexed by SQLite, bounded, crash-safe, kind to SD cards.

Layout of the spool directory::

    spool.db (+ -wal, -shm)   the index (SQLite, WAL)
    spool.lock                held (flock) by the one writer, the daemon
    samples/00000042.jpg      one JPEG per sample, named by sample id

Crash safety. A batch of samples is written as files first (temporary name, write, fsync,
rename), then the directory is fsynced, then ONE SQLite transaction adds their rows. So a row
never points at a partial file, and once the directory fsync is done the batch is durable *in
its files*: each file carries its full metadata (below). Start-up reconciles: rows whose file is
missing or of the wrong size (and, after an unclean stop, of the wrong sha256) are dropped;
intact files without a row -- a batch whose commit a crash cut short, or whose WAL tail a power
cut lost -- are indexed again; partial and temporary files are removed. Eviction removes files
before rows (so it never leaves an evicted file to be indexed again). Nothing that
:meth:`Spool.flush` reported committed is lost to kill -9 or a power cut.

Self-describing files. Each JPEG carries its sample's metadata as JSON in a COM segment (one
file, one write: no sidecar). If ``spool.db`` is unreadable or lost, it is moved aside as
``spool.db.corrupt-<time>`` and rebuilt from the intact files; a rebuilt spool gets a new
``spool_id`` (exported with every stream) so that feeder-sync knows to pull again from 0. Label
changes made after a sample was written live only in the index and are lost in a rebuild.

Sequence numbers. ``seq`` grows by one for every committed change a puller must see: a new
sample, or a new label on an old one (a reply after the frames were spooled). ``export --since
S`` streams rows with ``seq > S``; ``ack S`` marks them synced. Evicting the newest rows never
lets a seq be reused: the high-water mark is kept in the ``meta`` table.

Few, whole writes (the SD card). Per batch: one file write + fsync per sample, one directory
fsync, one WAL append. The WAL runs with ``synchronous=NORMAL``: batch commits are not fsynced
on their own, since the files make them durable already; this lets consecutive commits share
the WAL's dirty pages instead of rewriting a whole page each (an fsync per commit cost ~3-4 KiB
per commit more in the bench). Changes the files cannot restore -- labels, evictions, repairs
-- commit with ``synchronous=FULL``. 1 KiB pages keep a commit of a few ~250-byte rows small;
a checkpoint every ~2 MiB of WAL copies each changed page once. Figures:
``tools/bench/spool_bench.py``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import queue
import shutil
import sqlite3
import tarfile
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, get_args

from feederd.config import MiningConfig, SpoolConfig
from feederd.errors import SpoolError
from feederd.imagehash import HashIndex, from_signed, to_signed
from feederd.mining import Candidate, Reason, label_rank, priority

logger = logging.getLogger(__name__)

DB_NAME = "spool.db"
LOCK_NAME = "spool.lock"
SAMPLES_DIR = "samples"
MANIFEST_NAME = "manifest.jsonl"
FORMAT = 1
PAGE_SIZE = 1024  # see "Few, whole writes" above
WAL_AUTOCHECKPOINT_PAGES = 2000
_PRAGMAS = ("PRAGMA synchronous=NORMAL",
            f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}",
            "PRAGMA journal_size_limit=4194304", "PRAGMA busy_timeout=10000")
EVICT_TO = 0.95  # evict down to 95% of a bound, so eviction runs rarely, not every batch
RESUME_MARGIN = 256 * 1024  # free bytes beyond min_free_bytes before a paused spool resumes
QUEUE_MAX_ITEMS = 256
QUEUE_MAX_BYTES = 32 * 2**20
MAX_FULL_PROBS = 64
_COM_MAGIC = b"feederd-sample:"
_SOI, _APP0, _COM = b"\xff\xd8", b"\xff\xe0", b"\xff\xfe"
_COLUMNS = ("seq, id, visit_id, frame_seq, time, reasons, predicted, probs, margin, label, "
            "label_source, priority, model_version, phash, sha256, size, synced")
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS samples (
    seq INTEGER PRIMARY KEY, id INTEGER NOT NULL, visit_id TEXT NOT NULL,
    frame_seq INTEGER NOT NULL, time REAL NOT NULL, reasons TEXT NOT NULL,
    predicted TEXT NOT NULL, probs TEXT NOT NULL, margin REAL NOT NULL, label TEXT,
    label_source TEXT, priority REAL NOT NULL, model_version TEXT NOT NULL,
    phash INTEGER NOT NULL, sha256 BLOB NOT NULL, size INTEGER NOT NULL,
    synced INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
PRAGMA user_version={FORMAT};
"""


@dataclass(frozen=True, slots=True)
class Sample:
    """One spooled sample as indexed (``path`` is the file name under ``samples/``)."""

    id: int
    seq: int
    visit_id: str
    frame_seq: int
    time: float
    reasons: tuple[str, ...]
    predicted: str
    probs: dict[str, float]
    margin: float
    label: str | None
    label_source: str | None
    priority: float
    model_version: str
    phash: int
    sha256: str
    size: int
    synced: bool

    @property
    def path(self) -> str:
        return sample_file(self.id)

    def manifest(self) -> dict[str, Any]:
        """The manifest.jsonl entry: every field, the file name and the phash as hex."""
        return {"id": self.id, "seq": self.seq, "file": self.path, "sha256": self.sha256,
                "size": self.size, "visit_id": self.visit_id, "frame_seq": self.frame_seq,
                "time": self.time, "reasons": list(self.reasons), "predicted": self.predicted,
                "probs": self.probs, "margin": self.margin, "label": self.label,
                "label_source": self.label_source, "priority": self.priority,
                "model_version": self.model_version, "phash": f"{self.phash:016x}",
                "synced": self.synced}


@dataclass(frozen=True, slots=True)
class _Pending:
    id: int
    candidate: Candidate
    jpeg: bytes
    model_version: str


def sample_file(sample_id: int) -> str:
    return f"{sample_id:08d}.jpg"


class Spool:
    """The spool directory; one writer (the daemon) and any number of readers (the CLI)."""

    def __init__(self, directory: Path, cfg: SpoolConfig, *, labels: Sequence[str] = (),
                 writer: bool = True,
                 dedup_distance: int = MiningConfig.model_fields["dedup_distance"].default
                 ) -> None:
        """Open (a writer: create, lock and reconcile) the spool in ``directory``.

        ``labels`` are the current model's classes in output order (set :attr:`labels` when
        the model changes): with them the full probability vector is stored (up to 64
        classes), else the prediction's top-k. A reader (``writer=False``, the CLI) never
        creates, repairs or locks anything; it can list, export and ack while the daemon runs.
        """
        self.directory = Path(directory)
        self.cfg = cfg
        self.labels = tuple(labels)
        self.writer = writer
        self.dedup_distance = dedup_distance
        self._samples = self.directory / SAMPLES_DIR
        # Two locks, always taken in this order: _lock guards the connection and _next_seq
        # and may be held across fsyncs; _state guards the small in-memory state that put()
        # needs, and is only ever held for microseconds, so put() never waits on the disk.
        self._lock = threading.RLock()
        self._state = threading.Lock()
        self._flush_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._queued = [0, 0]  # items, bytes
        self._hashes = HashIndex()
        self._counters = dict.fromkeys(
            ("committed", "dropped_queue_full", "dropped_paused", "skipped_duplicates",
             "write_errors", "evicted", "pauses", "invalid_jpeg"), 0)
        self._paused = False
        self._wake = threading.Event()
        self._closing = self._closed = False
        self._thread: threading.Thread | None = None
        self._lock_fd = -1
        self._next_id = self._next_seq = 1
        self._count = self._bytes = 0
        try:
            self._db = self._open_writer() if writer else self._open_reader()
        except (OSError, sqlite3.Error) as exc:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
            raise SpoolError(f"cannot open the spool in {self.directory}: {exc}; check that "
                             "the directory is writable and the disk healthy") from exc

    # ---- the frame loop's side -------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """Spooling is paused for lack of disk space; it resumes by itself."""
        return self._paused

    @property
    def last_seq(self) -> int:
        """The highest committed sequence number (0 for an empty spool)."""
        with self._lock:
            return self._high_water()

    def put(self, candidate: Candidate, jpeg: bytes, model_version: str) -> None:
        """Queue a sample for the writer; never blocks and never raises for disk trouble.

        Skipped (and counted): while paused, when the queue is full, near-duplicates (closer
        than ``dedup_distance`` bits) of a sample at least as well labelled, invalid JPEGs.
        """
        if not self.writer:
            raise SpoolError("this spool was opened read-only; only the daemon stores samples")
        if not jpeg.startswith(_SOI):
            self._count_up("invalid_jpeg")
            logger.warning("sample of visit %s is not a JPEG; not spooled",
                           candidate.frame.visit_id)
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

    # ---- the writer --------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread: a batch commit every ``commit_interval_s``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spool-writer", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the writer, commit what is queued, mark a clean stop, release the lock."""
        if self._thread is not None:
            self._closing = True
            self._wake.set()
            self._thread.join()
            self._thread = None
        if self._closed:
            return
        if self.writer:
            self.flush()
        with self._lock:
            self._closed = True
            if self.writer:
                try:
                    with self._transaction():
                        self._set_meta("clean", "1")
                except sqlite3.Error as exc:  # the next start verifies every file: harmless
                    logger.warning("spool: cannot record a clean stop: %s", exc)
            self._db.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            metas = [self._file_meta(p) for p in batch]
            files = [self._write_file(p, meta, written) for p, meta in zip(batch, metas,
                                                                           strict=True)]
            _fsync_dir(self._samples)
            with self._lock, self._transaction():
                rows = [_row(self._next_seq + i, meta, p.candidate.phash, sha, size)
                        for i, (p, meta, (sha, size)) in enumerate(zip(batch, metas, files,
                                                                       strict=True))]
                self._db.executemany(
                    f"INSERT INTO samples ({_COLUMNS}) VALUES ({','.join('?' * 17)})", rows)
                self._next_seq += len(rows)
        except (OSError, sqlite3.Error) as exc:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
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
        tmp = final.with_name(f".tmp-{final.name}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        finally:
            os.close(fd)
        os.rename(tmp, final)
        written.append(final)
        return hashlib.sha256(data).digest(), len(data)

    def _write_failed(self, exc: Exception, batch: list[_Pending]) -> None:
        full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or \
            (isinstance(exc, sqlite3.Error) and "full" in str(exc).lower())
        if full:
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

    def _file_meta(self, p: _Pending) -> dict[str, Any]:
        c, pred = p.candidate, p.candidate.frame.prediction
        return {"id": p.id, "visit_id": c.frame.visit_id, "frame_seq": c.frame.seq,
                "time": c.frame.wall, "reasons": list(c.reasons), "predicted": pred.label,
                "probs": self._probs(p), "margin": round(float(pred.margin), 6),
                "label": c.label, "label_source": c.label_source, "priority": c.priority,
                "model_version": p.model_version, "phash": f"{c.phash:016x}"}

    def _probs(self, p: _Pending) -> dict[str, float]:
        pred = p.candidate.frame.prediction
        probs = pred.probs.reshape(-1) if pred.probs is not None else None
        if probs is not None and len(self.labels) == probs.size <= MAX_FULL_PROBS:
            return {name: round(float(v), 5) for name, v in zip(self.labels, probs, strict=True)}
        return {name: round(float(v), 5) for name, v in zip(pred.labels, pred.scores,
                                                            strict=False)}


    # ---- labels, quota -------------------------------------------------------------------

    def label_visit(self, visit_id: str, label: str, source: str, reason: str, *,
                    predicted: Collection[str] | None = None) -> int:
        """Re-label the samples already spooled from a visit (a reply after they were mined).

        Only samples whose predicted class is in ``predicted`` change (``None``: all). Each
        gets a new seq and ``synced = False``, so the next pull fetches the new label. Wiring
        for a reply: ``not_a_bird`` -> (``other``, "user", "rejected"), all samples; a species
        -> (it, "user", "corrected", predicted=the model's species); ``correct`` -> (the
        alerted label, "user", "confirmed", predicted={that label}). -> samples changed.
        """
        self._require_writer()
        if source not in ("user", "pseudo"):
            raise ValueError(f"unknown label source {source!r}; expected 'user' or 'pseudo'")
        if reason not in get_args(Reason):
            raise ValueError(f"unknown reason {reason!r}; expected one of "
                             f"{', '.join(get_args(Reason))}")
        with self._lock, self._transaction():
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM samples WHERE visit_id = ? "
                                    "ORDER BY seq", (visit_id,)).fetchall()
            changed = [s for s in map(_sample, rows)
                       if predicted is None or s.predicted in predicted]
            for sample in changed:
                reasons = sample.reasons + (() if reason in sample.reasons else (reason,))
                prio = priority(reasons, source, sample.probs.get(sample.predicted, 0.0),
                                sample.margin)
                self._db.execute(
                    "UPDATE samples SET seq = ?, label = ?, label_source = ?, reasons = ?, "
                    "priority = ?, synced = 0 WHERE seq = ?",
                    (self._next_seq, label, source, ",".join(reasons), prio, sample.seq))
                self._next_seq += 1
        with self._state:
            for sample in changed:
                self._hashes.set_rank(sample.id, label_rank(source))
        return len(changed)

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
            with self._state:
                for row in victims:
                    self._hashes.remove(row[1])
            for row in victims:  # files first: a crash leaves rows without files, dropped
                (self._samples / sample_file(row[1])).unlink(missing_ok=True)
            _fsync_dir(self._samples)
            with self._transaction(durable=True):
                self._set_meta("seq_floor", str(self._high_water()))
                self._set_meta("id_floor", str(id_floor))
                self._db.executemany("DELETE FROM samples WHERE seq = ?",
                                     [(r[0],) for r in victims])
            with self._state:
                self._count -= len(victims)
                self._bytes -= sum(r[2] for r in victims)
                self._counters["evicted"] += len(victims)
        logger.info("spool over its bound: evicted %d sample(s)", len(victims))
        return len(victims)

    def _evict_if_over(self) -> None:
        try:
            self.enforce_quota()
        except (OSError, sqlite3.Error) as exc:
            logger.error("spool: eviction failed, will retry after the next batch: %s", exc)

    # ---- readers -------------------------------------------------------------------------

    def ls(self, since: int = 0, limit: int = 100) -> list[Sample]:
        """Samples with ``seq > since`` in seq order, at most ``limit``."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM samples WHERE seq > ? ORDER BY seq "
                                    "LIMIT ?", (since, limit)).fetchall()
        return [_sample(row) for row in rows]

    def get(self, sample_id: int) -> Sample:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM samples WHERE id = ?",
                                   (sample_id,)).fetchone()
        if row is None:
            raise SpoolError(f"no sample with id {sample_id} in {self.directory}; "
                             "'feederd spool ls' lists them")
        return _sample(row)

    def file(self, sample: Sample) -> Path:
        """Where a sample's JPEG is (it carries the metadata in a COM segment)."""
        return self._samples / sample.path

    def stats(self) -> dict[str, Any]:
        """Counts for the stats topic and ``feederd spool stats``."""
        with self._lock:
            count, size, unsynced, user, pseudo = self._db.execute(
                "SELECT count(*), total(size), total(synced = 0), "
                "total(label_source = 'user'), total(label_source = 'pseudo') FROM samples"
            ).fetchone()
            rebuilt = self._get_meta("rebuilt")
            with self._state:
                counters, queued, paused = dict(self._counters), self._queued[0], self._paused
            out: dict[str, Any] = {
                "spool_id": self._get_meta("spool_id"), "samples": count, "bytes": int(size),
                "unsynced": int(unsynced), "labelled_user": int(user),
                "labelled_pseudo": int(pseudo), "last_seq": self._high_water(),
                "max_bytes": self.cfg.max_bytes, "max_count": self.cfg.max_count,
                "queued": queued, "paused": paused, **counters,
                "rebuilt": json.loads(rebuilt) if rebuilt else None,
            }
        with contextlib.suppress(OSError):
            out["free_bytes"] = shutil.disk_usage(self.directory).free
        return out

    def export(self, since: int, out: BinaryIO) -> int:
        """Stream samples with ``seq > since`` as a tar (``mode="w|"``); -> last seq exported.

        The rows are read in one read transaction (a consistent snapshot while the daemon
        writes); the JPEGs follow in seq order, then ``manifest.jsonl`` LAST, so that it lists
        exactly the files streamed: a sample evicted between the snapshot and the read of its
        file is left out rather than promised. The manifest member's PAX headers carry
        ``feederd.spool_id``, ``feederd.last_seq`` (the spool's high-water mark) and
        ``feederd.since``, also when no sample follows. Returns ``since`` when empty.
        """
        conn = self._connect(self.directory / DB_NAME)
        try:
            conn.execute("BEGIN")
            rows = conn.execute(f"SELECT {_COLUMNS} FROM samples WHERE seq > ? ORDER BY seq",
                                (since,)).fetchall()
            high = _high_water(conn)
            spool_id = _get_meta(conn, "spool_id") or ""
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"cannot read {self.directory / DB_NAME}: {exc}") from exc
        finally:
            conn.close()
        last, lines = since, []
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for sample in map(_sample, rows):
                data = self._read_for_export(sample)
                if data is None:
                    continue
                _add_member(tar, sample.path, data, sample.time)
                lines.append(json.dumps(sample.manifest(), separators=(",", ":")))
                last = sample.seq
            manifest = "".join(line + "\n" for line in lines).encode()
            _add_member(tar, MANIFEST_NAME, manifest, time.time(), {
                "feederd.spool_id": spool_id, "feederd.last_seq": str(high),
                "feederd.since": str(since), "feederd.count": str(len(lines))})
        return last

    def _read_for_export(self, sample: Sample) -> bytes | None:
        try:
            data = (self._samples / sample.path).read_bytes()
        except FileNotFoundError:
            return None  # evicted since the snapshot
        if len(data) != sample.size:
            logger.warning("spool: %s has %d bytes, the index says %d; left out of the export",
                           sample.path, len(data), sample.size)
            return None
        return data

    def ack(self, seq: int) -> int:
        """Mark samples with ``seq <=`` the given one as synced; -> samples newly marked."""
        with self._lock:
            high = self._high_water()
            if seq < 0 or seq > high:
                raise SpoolError(
                    f"cannot ack seq {seq}: the spool's last sequence number is {high} "
                    f"(spool id {self._get_meta('spool_id')}); ack only what an export "
                    "returned, and pull again from 0 if the spool id changed")
            with self._transaction():
                cur = self._db.execute("UPDATE samples SET synced = 1 WHERE seq <= ? AND "
                                       "synced = 0", (seq,))
            return cur.rowcount

    # ---- opening, reconciling, rebuilding ------------------------------------------------

    def _open_reader(self) -> sqlite3.Connection:
        path = self.directory / DB_NAME
        if not path.exists():
            raise SpoolError(f"no spool in {self.directory} yet (no {DB_NAME}); it is created "
                             "when feederd stores its first sample")
        try:
            conn = self._connect(path)
            self._read_counters(conn)
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"{path} is damaged ({exc}); start feederd, which moves it aside "
                             "and rebuilds it from the sample files") from exc
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        self._samples.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        path = self.directory / DB_NAME
        existed = path.exists() and path.stat().st_size > 0
        conn, damage = self._open_index(path, existed)
        self._db = conn
        clean = self._get_meta("clean") == "1"
        with self._transaction():
            self._set_meta("clean", "0")
            if self._get_meta("spool_id") is None:
                self._set_meta("spool_id", uuid.uuid4().hex)
        if damage is None:
            self._reconcile(verify_sha=not clean)
        self._read_counters(conn)
        return conn

    def _open_index(self, path: Path, existed: bool) -> tuple[sqlite3.Connection, str | None]:
        """The index connection, rebuilt from the files when the index is damaged or lost."""
        if not existed and any(self._sample_files()):
            return self._rebuild(path, "the index is missing"), "the index is missing"
        try:
            conn = self._connect(path)
        except sqlite3.DatabaseError as exc:
            return self._rebuild(path, str(exc)), str(exc)
        try:
            damage = _damage(conn) if existed else None
            if damage is None:
                _create_schema(conn)
                return conn, None
        except sqlite3.DatabaseError as exc:
            damage = str(exc)
        conn.close()
        return self._rebuild(path, damage), damage

    def _take_lock(self) -> None:
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SpoolError(f"{self.directory} is in use by another feederd (pid {holder}); "
                             "stop it first, or open the spool read-only") from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _connect(self, path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=10.0)
        for pragma in _PRAGMAS:
            conn.execute(pragma)
        return conn

    def _sample_files(self) -> Iterator[Path]:
        with os.scandir(self._samples) as entries:
            for entry in entries:
                if entry.name.endswith(".jpg") and entry.is_file():
                    yield Path(entry.path)

    def _reconcile(self, verify_sha: bool) -> None:
        """Make index and files agree after whatever stopped the last writer.

        Rows whose file is missing or damaged go (an eviction removes files before rows).
        Intact files without a row are indexed (a batch whose commit was cut short: its files
        were durable first); damaged and temporary files are removed.
        """
        files = {p.name: p for p in self._sample_files()}
        rows = self._db.execute("SELECT seq, id, size, sha256 FROM samples").fetchall()
        bad = [r for r in rows if not _file_matches(files.get(sample_file(r[1])), r[2],
                                                    r[3] if verify_sha else None)]
        if bad:
            with self._transaction(durable=True):
                self._db.executemany("DELETE FROM samples WHERE seq = ?", [(r[0],) for r in bad])
            logger.warning("spool: %d indexed sample(s) without an intact file were dropped "
                           "from the index", len(bad))
        for row in bad:
            (self._samples / sample_file(row[1])).unlink(missing_ok=True)
        indexed = {sample_file(r[1]) for r in rows}
        orphans = [p for name, p in files.items() if name not in indexed]
        if orphans:
            adopted, removed = self._adopt(orphans, _high_water(self._db) + 1)
            logger.info("spool reconciled: %d uncommitted sample file(s) indexed, %d partial "
                        "file(s) removed", adopted, removed)

    def _adopt(self, paths: list[Path], first_seq: int) -> tuple[int, int]:
        """Index the intact files among ``paths`` (new seqs, in id order), remove the others."""
        found, removed = [], 0
        for path in paths:
            row = None if path.name.startswith(".tmp-") else _file_row(path)
            if row is None:
                path.unlink(missing_ok=True)
                removed += 1
            else:
                found.append(row)
        found.sort(key=lambda r: r[1])
        rows = [(seq, *row[1:]) for seq, row in enumerate(found, start=first_seq)]
        if removed:
            _fsync_dir(self._samples)
        with self._transaction(durable=True):
            self._db.executemany(
                f"INSERT INTO samples ({_COLUMNS}) VALUES ({','.join('?' * 17)})", rows)
        return len(rows), removed

    def _rebuild(self, path: Path, damage: str) -> sqlite3.Connection:
        """Move the damaged index aside and index again every intact sample file."""
        damage = " ".join(damage.split())
        moved = path.with_name(f"{DB_NAME}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            src = path.with_name(DB_NAME + suffix)
            if src.exists() and suffix == "-shm":
                src.unlink()
            elif src.exists():
                src.rename(moved.with_name(moved.name + suffix))
        self._db = self._connect(path)
        _create_schema(self._db)
        recovered, discarded = self._adopt(sorted(self._sample_files()), 1)
        report = {"at": time.time(), "damage": damage,
                  "moved_to": moved.name if moved.exists() else None,
                  "recovered": recovered, "discarded": discarded}
        with self._transaction(durable=True):
            self._set_meta("rebuilt", json.dumps(report))
            self._set_meta("spool_id", uuid.uuid4().hex)
            self._set_meta("clean", "1")
        logger.error("spool index %s was unusable (%s): moved aside as %s and rebuilt from the "
                     "files: %d sample(s) recovered, %d damaged file(s) removed; labels given "
                     "after a sample was stored are lost", path, damage, report["moved_to"],
                     recovered, discarded)
        return self._db

    def _read_counters(self, conn: sqlite3.Connection) -> None:
        count, size, max_id = conn.execute(
            "SELECT count(*), total(size), max(id) FROM samples").fetchone()
        self._count, self._bytes = int(count), int(size)
        self._next_seq = _high_water(conn) + 1
        on_disk = [int(p.stem) for p in self._sample_files() if p.stem.isdigit()] \
            if self._samples.is_dir() else []
        floor = int(_get_meta(conn, "id_floor") or 0)
        self._next_id = max([max_id or 0, floor, *on_disk]) + 1
        if self.writer:
            for sample_id, phash, source in conn.execute(
                    "SELECT id, phash, label_source FROM samples"):
                self._hashes.add(sample_id, from_signed(phash), label_rank(source))

    # ---- small helpers -------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, durable: bool = False) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (the caller holds the lock).

        ``durable``: fsync the WAL at this commit (``synchronous=FULL``), for changes that the
        files cannot restore after a power cut: labels, evictions, repairs.
        """
        if durable:
            self._db.execute("PRAGMA synchronous=FULL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # also when COMMIT itself failed (disk full)
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        finally:
            if durable:
                self._db.execute("PRAGMA synchronous=NORMAL")

    def _high_water(self) -> int:
        return _high_water(self._db)

    def _get_meta(self, key: str) -> str | None:
        return _get_meta(self._db, key)

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _count_up(self, counter: str) -> None:
        with self._state:
            self._counters[counter] += 1

    def _require_writer(self) -> None:
        if not self.writer:
            raise SpoolError("this spool was opened read-only; only the daemon changes it")


def _row(seq: int, meta: dict[str, Any], phash: int, sha: bytes, size: int) -> tuple[Any, ...]:
    return (seq, meta["id"], meta["visit_id"], meta["frame_seq"], meta["time"],
            ",".join(meta["reasons"]), meta["predicted"],
            json.dumps(meta["probs"], separators=(",", ":")), meta["margin"], meta["label"],
            meta["label_source"], meta["priority"], meta["model_version"], to_signed(phash),
            sha, size, 0)


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


def _sample(row: Sequence[Any]) -> Sample:
    (seq, sample_id, visit_id, frame_seq, when, reasons, predicted, probs, margin, label,
     source, prio, version, phash, sha, size, synced) = row
    return Sample(id=sample_id, seq=seq, visit_id=visit_id, frame_seq=frame_seq, time=when,
                  reasons=tuple(r for r in reasons.split(",") if r), predicted=predicted,
                  probs=json.loads(probs), margin=margin, label=label, label_source=source,
                  priority=prio, model_version=version, phash=from_signed(phash),
                  sha256=bytes(sha).hex(), size=size, synced=bool(synced))


def _high_water(conn: sqlite3.Connection) -> int:
    (max_seq,) = conn.execute("SELECT max(seq) FROM samples").fetchone()
    return max(max_seq or 0, int(_get_meta(conn, "seq_floor") or 0))


def _get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _create_schema(conn: sqlite3.Connection) -> None:
    """Page size and WAL first: a WAL database cannot change its page size afterwards."""
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_SCHEMA)


def _damage(conn: sqlite3.Connection) -> str | None:
    """Why the index cannot be trusted, or ``None`` when it is sound."""
    result = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    if result != ["ok"]:
        return "; ".join(result[:3])
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return None if {"samples", "meta"} <= tables else "tables are missing"


def _file_matches(path: Path | None, size: int, sha: bytes | None) -> bool:
    if path is None:
        return False
    try:
        if path.stat().st_size != size:
            return False
        return sha is None or hashlib.sha256(path.read_bytes()).digest() == bytes(sha)
    except OSError:
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float,
                pax: dict[str, str] | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    if pax:
        info.pax_headers = pax
    tar.addfile(info, io.BytesIO(data))


# ---- metadata inside the JPEG (a COM segment after SOI/APP0) ------------------------------

def embed_metadata(jpeg: bytes, meta: dict[str, Any]) -> bytes:
    """``jpeg`` with ``meta`` (plus the body's sha256) as JSON in a COM segment.

    Decoders ignore COM segments, so the file stays a plain JPEG; the sha256 of the original
    bytes lets a rebuild tell an intact file from a damaged one.
    """
    payload = _COM_MAGIC + json.dumps(
        {**meta, "format": FORMAT, "body_sha256": hashlib.sha256(jpeg).hexdigest()},
        separators=(",", ":")).encode()
    if len(payload) > 65533:
        raise SpoolError("sample metadata too large for a JPEG comment")
    at = 2
    if jpeg[2:4] == _APP0:
        at = 4 + int.from_bytes(jpeg[4:6], "big")
    return jpeg[:at] + _COM + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[at:]


def extract_metadata(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    """(metadata, original JPEG) of a spool file, or ``None`` if absent or damaged."""
    at = 2
    while data[:2] == _SOI and at + 4 <= len(data) and data[at] == 0xFF and \
            data[at + 1] not in (0xDA, 0xD9):
        length = int.from_bytes(data[at + 2:at + 4], "big")
        segment = data[at + 4:at + 2 + length]
        if data[at:at + 2] == _COM and segment.startswith(_COM_MAGIC):
            body = data[:at] + data[at + 2 + length:]
            try:
                meta = json.loads(segment[len(_COM_MAGIC):])
            except ValueError:
                return None
            ok = isinstance(meta, dict) and meta.get("body_sha256") == \
                hashlib.sha256(body).hexdigest() and body.endswith(b"\xff\xd9")
            return (meta, body) if ok else None
        at += 2 + length
    return None


def _file_row(path: Path) -> tuple[Any, ...] | None:
    """The index row (seq left 0) of an intact sample file, else ``None``."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    found = extract_metadata(data)
    if found is None:
        return None
    meta = found[0]
    try:
        row = _row(0, meta, int(meta["phash"], 16), hashlib.sha256(data).digest(), len(data))
    except (KeyError, TypeError, ValueError):
        return None
    return row if isinstance(meta["id"], int) and path.name == sample_file(meta["id"]) else None
