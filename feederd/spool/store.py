"""The :class:`Spool`: opening and closing a spool directory, labels and the readers.

The daemon's side (queue, batch writer, eviction) is :class:`~feederd.spool.writer.
SpoolWriter`, which this class extends; the design is described in :mod:`feederd.spool`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, BinaryIO, get_args

from feederd.atomic import remove_stale
from feederd.config import MiningConfig, SpoolConfig
from feederd.errors import SpoolError
from feederd.mining.decisions import Reason, label_rank, priority
from feederd.mining.imagehash import HashIndex, from_signed
from feederd.spool.export import export_tar
from feederd.spool.fileformat import SAMPLES_DIR, sample_files, take_lock
from feederd.spool.index import (
    COLUMNS,
    DB_NAME,
    Sample,
    connect,
    get_meta,
    high_water,
    set_meta,
    to_sample,
    transaction,
)
from feederd.spool.repair import open_index, reconcile
from feederd.spool.writer import SpoolWriter

# The package's name, as before feederd.spool became a package: log lines and
# ``[logging] levels`` keep naming it.
logger = logging.getLogger("feederd.spool")


class Spool(SpoolWriter):
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
        self._queue = queue.SimpleQueue()
        self._queued = [0, 0]  # items, bytes
        self._hashes = HashIndex()
        self._counters = dict.fromkeys(
            ("committed", "dropped_queue_full", "dropped_paused", "skipped_duplicates",
             "write_errors", "evicted", "pauses", "invalid_jpeg", "invalid_sample"), 0)
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

    # ---- state, stopping -----------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """Spooling is paused for lack of disk space; it resumes by itself."""
        return self._paused

    @property
    def last_seq(self) -> int:
        """The highest committed sequence number (0 for an empty spool)."""
        with self._lock:
            return high_water(self._db)

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
                    with transaction(self._db):
                        set_meta(self._db, "clean", "1")
                except sqlite3.Error as exc:  # the next start verifies every file: harmless
                    logger.warning("spool: cannot record a clean stop: %s", exc)
            self._db.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    def maintain(self) -> dict[str, int]:
        """Daily: fold the WAL back into the index and refresh the planner's statistics.

        The WAL only shrinks at a TRUNCATE checkpoint; without one it keeps its largest size
        on the SD card. ``PRAGMA optimize`` is cheap and keeps ``ls``/quota queries fast.
        """
        if not self.writer:
            raise SpoolError("this spool was opened read-only; only the daemon maintains it")
        with self._lock:
            busy, wal_pages, moved = self._db.execute(
                "PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            self._db.execute("PRAGMA optimize")
        if busy:
            logger.info("spool: a reader kept the WAL busy; it is folded in next time")
        return {"wal_pages": int(wal_pages), "checkpointed": int(moved), "busy": int(busy)}

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- labels --------------------------------------------------------------------------

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
        with self._lock, transaction(self._db):
            rows = self._db.execute(f"SELECT {COLUMNS} FROM samples WHERE visit_id = ? "
                                    "ORDER BY seq", (visit_id,)).fetchall()
            changed = [s for s in map(to_sample, rows)
                       if predicted is None or s.predicted in predicted]
            for sample in changed:
                self._relabel(sample, label, source, reason)
        with self._state:
            for sample in changed:
                self._hashes.set_rank(sample.id, label_rank(source))
        return len(changed)

    def _relabel(self, sample: Sample, label: str, source: str, reason: str) -> None:
        """Give one sample its new label, priority and seq (in the caller's transaction)."""
        reasons = sample.reasons + (() if reason in sample.reasons else (reason,))
        prio = priority(reasons, source, sample.probs.get(sample.predicted, 0.0), sample.margin)
        self._db.execute(
            "UPDATE samples SET seq = ?, label = ?, label_source = ?, reasons = ?, "
            "priority = ?, synced = 0 WHERE seq = ?",
            (self._next_seq, label, source, ",".join(reasons), prio, sample.seq))
        self._next_seq += 1

    # ---- readers -------------------------------------------------------------------------

    def ls(self, since: int = 0, limit: int = 100) -> list[Sample]:
        """Samples with ``seq > since`` in seq order, at most ``limit``."""
        with self._lock:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM samples WHERE seq > ? ORDER BY seq "
                                    "LIMIT ?", (since, limit)).fetchall()
        return [to_sample(row) for row in rows]

    def get(self, sample_id: int) -> Sample:
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS} FROM samples WHERE id = ?",
                                   (sample_id,)).fetchone()
        if row is None:
            raise SpoolError(f"no sample with id {sample_id} in {self.directory}; "
                             "'feederd spool ls' lists them")
        return to_sample(row)

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
            rebuilt = get_meta(self._db, "rebuilt")
            quarantined = int(get_meta(self._db, "quarantined") or 0)
            recent_damage = json.loads(get_meta(self._db, "quarantine") or "[]")
            with self._state:
                counters, queued, paused = dict(self._counters), self._queued[0], self._paused
            out: dict[str, Any] = {
                "spool_id": get_meta(self._db, "spool_id"), "samples": count,
                "bytes": int(size), "unsynced": int(unsynced), "labelled_user": int(user),
                "labelled_pseudo": int(pseudo), "last_seq": high_water(self._db),
                "max_bytes": self.cfg.max_bytes, "max_count": self.cfg.max_count,
                "queued": queued, "paused": paused, **counters,
                "rebuilt": json.loads(rebuilt) if rebuilt else None,
                "quarantined": quarantined, "quarantine": recent_damage[-5:],
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
        return export_tar(self.directory, since, out)

    def ack(self, seq: int) -> int:
        """Mark samples with ``seq <=`` the given one as synced; -> samples newly marked."""
        with self._lock:
            high = high_water(self._db)
            if seq < 0 or seq > high:
                raise SpoolError(
                    f"cannot ack seq {seq}: the spool's last sequence number is {high} "
                    f"(spool id {get_meta(self._db, 'spool_id')}); ack only what an export "
                    "returned, and pull again from 0 if the spool id changed")
            with transaction(self._db):
                cur = self._db.execute("UPDATE samples SET synced = 1 WHERE seq <= ? AND "
                                       "synced = 0", (seq,))
            return cur.rowcount

    # ---- opening -------------------------------------------------------------------------

    def _open_reader(self) -> sqlite3.Connection:
        path = self.directory / DB_NAME
        if not path.exists():
            raise SpoolError(f"no spool in {self.directory} yet (no {DB_NAME}); it is created "
                             "when feederd stores its first sample")
        try:
            conn = connect(path)
            self._read_counters(conn)
        except sqlite3.DatabaseError as exc:
            raise SpoolError(f"{path} is damaged ({exc}); start feederd, which moves it aside "
                             "and rebuilds it from the sample files") from exc
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        """Lock, open (or rebuild) the index, and reconcile unless it was just rebuilt.

        Files are checked against their sha256 only after an unclean stop.
        """
        self._samples.mkdir(parents=True, exist_ok=True)
        self._lock_fd = take_lock(self.directory)
        remove_stale(self._samples)  # partial files of a write a crash cut short
        path = self.directory / DB_NAME
        existed = path.exists() and path.stat().st_size > 0
        conn, damage = open_index(path, self._samples, existed)
        self._db = conn
        clean = get_meta(conn, "clean") == "1"
        with transaction(conn):
            set_meta(conn, "clean", "0")
            if get_meta(conn, "spool_id") is None:
                set_meta(conn, "spool_id", uuid.uuid4().hex)
        if damage is None:
            reconcile(conn, self._samples, verify_sha=not clean)
        self._read_counters(conn)
        return conn

    def _read_counters(self, conn: sqlite3.Connection) -> None:
        """Counts, next seq and next id (never reusing an evicted one), the writer's hashes."""
        count, size, max_id = conn.execute(
            "SELECT count(*), total(size), max(id) FROM samples").fetchone()
        self._count, self._bytes = int(count), int(size)
        self._next_seq = high_water(conn) + 1
        on_disk = [int(p.stem) for p in sample_files(self._samples) if p.stem.isdigit()] \
            if self._samples.is_dir() else []
        floor = int(get_meta(conn, "id_floor") or 0)
        self._next_id = max([max_id or 0, floor, *on_disk]) + 1
        if self.writer:
            for sample_id, phash, source in conn.execute(
                    "SELECT id, phash, label_source FROM samples"):
                self._hashes.add(sample_id, from_signed(phash), label_rank(source))

