"""The spool's index: SQLite schema and pragmas, transactions, and rows <-> :class:`Sample`.

Page size, WAL checkpoints and ``synchronous`` are chosen for the SD card: see "Few, whole
writes" in :mod:`feederd.spool`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feederd.mining.imagehash import from_signed, to_signed
from feederd.spool.fileformat import FORMAT, sample_file

DB_NAME = "spool.db"
PAGE_SIZE = 1024  # see "Few, whole writes" in feederd.spool
WAL_AUTOCHECKPOINT_PAGES = 2000
_PRAGMAS = ("PRAGMA synchronous=NORMAL",
            f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}",
            "PRAGMA journal_size_limit=4194304", "PRAGMA busy_timeout=10000")
COLUMNS = ("seq, id, visit_id, frame_seq, time, reasons, predicted, probs, margin, label, "
           "label_source, priority, model_version, phash, sha256, size, synced")
_INSERT = f"INSERT INTO samples ({COLUMNS}) VALUES ({','.join('?' * 17)})"
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


# ---- connections and transactions --------------------------------------------------------

def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0)
    for pragma in _PRAGMAS:
        conn.execute(pragma)
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    """Page size and WAL first: a WAL database cannot change its page size afterwards."""
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_SCHEMA)


def find_damage(conn: sqlite3.Connection) -> str | None:
    """Why the index cannot be trusted, or ``None`` when it is sound."""
    result = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
    if result != ["ok"]:
        return "; ".join(result[:3])
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return None if {"samples", "meta"} <= tables else "tables are missing"


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, durable: bool = False) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (the caller holds the lock).

    ``durable``: fsync the WAL at this commit (``synchronous=FULL``), for changes that the
    files cannot restore after a power cut: labels, evictions, repairs.
    """
    if durable:
        conn.execute("PRAGMA synchronous=FULL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # also when COMMIT itself failed (disk full)
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
    finally:
        if durable:
            conn.execute("PRAGMA synchronous=NORMAL")


# ---- rows and meta -----------------------------------------------------------------------

def insert_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    conn.executemany(_INSERT, rows)


def high_water(conn: sqlite3.Connection) -> int:
    """The highest seq ever given out: evicting the newest rows never lets one be reused."""
    (max_seq,) = conn.execute("SELECT max(seq) FROM samples").fetchone()
    return max(max_seq or 0, int(get_meta(conn, "seq_floor") or 0))


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def to_row(seq: int, meta: dict[str, Any], phash: int, sha: bytes,
           size: int) -> tuple[Any, ...]:
    """The index row of a sample whose file carries ``meta`` (see ``sample_meta``)."""
    return (seq, meta["id"], meta["visit_id"], meta["frame_seq"], meta["time"],
            ",".join(meta["reasons"]), meta["predicted"],
            json.dumps(meta["probs"], separators=(",", ":")), meta["margin"], meta["label"],
            meta["label_source"], meta["priority"], meta["model_version"], to_signed(phash),
            sha, size, 0)


def to_sample(row: Sequence[Any]) -> Sample:
    """The :class:`Sample` of a row selected as :data:`COLUMNS`."""
    (seq, sample_id, visit_id, frame_seq, when, reasons, predicted, probs, margin, label,
     source, prio, version, phash, sha, size, synced) = row
    return Sample(id=sample_id, seq=seq, visit_id=visit_id, frame_seq=frame_seq, time=when,
                  reasons=tuple(r for r in reasons.split(",") if r), predicted=predicted,
                  probs=json.loads(probs), margin=margin, label=label, label_source=source,
                  priority=prio, model_version=version, phash=from_signed(phash),
                  sha256=bytes(sha).hex(), size=size, synced=bool(synced))
