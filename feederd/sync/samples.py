"""The pulled spool samples of one device (``samples.db``) and the label each trains with.

Kept apart from the workspace folder because it is the one part with a schema: what the device
said about a sample, the owner's review of it, and the pull cursor, committed together.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
"""The label grammar: a class name the owner types, and a label a pull may store."""


def now_utc() -> str:
    """The time stored in rows and history entries: UTC to the second, ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


SAMPLE_COLUMNS = ("id", "sha256", "spool", "seq", "visit_id", "time", "reasons", "predicted",
                  "probs", "margin", "label", "label_source", "model_version", "phash", "size",
                  "file")
_JSON_COLUMNS = ("reasons", "probs")
_DEVICE_COLUMNS = [c for c in SAMPLE_COLUMNS if c not in ("id", "sha256")]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    spool TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL,
    visit_id TEXT,
    time REAL,
    reasons TEXT NOT NULL DEFAULT '[]',
    predicted TEXT,
    probs TEXT NOT NULL DEFAULT '{}',
    margin REAL,
    label TEXT,
    label_source TEXT,
    model_version TEXT,
    phash TEXT,
    size INTEGER NOT NULL,
    file TEXT NOT NULL,
    review_label TEXT,
    review_source TEXT,
    reviewed_at TEXT,
    pulled_at TEXT NOT NULL,
    PRIMARY KEY (id, sha256)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SampleIndex:
    """The pulled samples of one device (SQLite): what the device said plus the owner's review.

    A sample is identified by its device id and content hash: when the device sends it again
    (a late reply relabelled it, or a rebuilt spool renumbered it) its row is updated in place
    and the owner's review is kept. The pull cursor (the device's spool id and the last
    sequence stored) is committed in the same transaction as the rows it covers.

    A sample's *training label* is the owner's review if any, else the device label when the
    owner gave it (``label_source == "user"``); pseudo-labels count only once accepted.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SampleIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cursor(self) -> tuple[str, int]:
        """(spool id, last sequence) of the last committed pull."""
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        return meta.get("spool_id", ""), int(meta.get("last_seq", 0))

    def last_seq(self) -> int:
        return self.cursor()[1]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def commit(self, rows: Iterable[Mapping[str, Any]], spool_id: str, last_seq: int) -> int:
        """Upsert rows and move the cursor in one transaction; returns how many were new."""
        values = [self._values(row, spool_id) for row in rows]
        columns = ", ".join(SAMPLE_COLUMNS)
        marks = ", ".join("?" * (len(SAMPLE_COLUMNS) + 1))
        updates = ", ".join(f"{c} = excluded.{c}" for c in _DEVICE_COLUMNS)
        with self._transaction():
            before = self.count()
            self._db.executemany(
                f"INSERT INTO samples ({columns}, pulled_at) VALUES ({marks}) "
                f"ON CONFLICT (id, sha256) DO UPDATE SET {updates}", values)
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 [("spool_id", spool_id), ("last_seq", str(last_seq))])
            return self.count() - before

    def _values(self, row: Mapping[str, Any], spool_id: str) -> tuple[Any, ...]:
        data = {**row, "spool": spool_id, "id": str(row["id"])}
        out = [json.dumps(data.get(c)) if c in _JSON_COLUMNS else data.get(c)
               for c in SAMPLE_COLUMNS]
        return (*out, now_utc())

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def all(self) -> list[dict[str, Any]]:
        return [self._row(r) for r in
                self._db.execute("SELECT * FROM samples ORDER BY time, id")]

    def get(self, sample_id: str, sha256: str | None = None) -> dict[str, Any] | None:
        """The sample with this device id (the newest if a rebuilt spool reused it), or
        exactly the row with this id and content hash."""
        if sha256 is not None:
            row = self._db.execute("SELECT * FROM samples WHERE id = ? AND sha256 = ?",
                                   (sample_id, sha256)).fetchone()
        else:
            row = self._db.execute("SELECT * FROM samples WHERE id = ? ORDER BY pulled_at "
                                   "DESC LIMIT 1", (sample_id,)).fetchone()
        return self._row(row) if row else None

    def _row(self, row: sqlite3.Row) -> dict[str, Any]:
        data = dict(row)
        for column in _JSON_COLUMNS:
            data[column] = json.loads(data[column]) if data[column] else None
        return data

    def set_review(self, sample_id: str, sha256: str, label: str | None,
                   source: str | None) -> None:
        """Record the owner's decision; ``source`` None takes it back (the sample is pending
        again, or trains with the device's own user label)."""
        with self._transaction():
            self._db.execute("UPDATE samples SET review_label = ?, review_source = ?, "
                             "reviewed_at = ? WHERE id = ? AND sha256 = ?",
                             (label if source else None, source,
                              now_utc() if source else None, sample_id, sha256))


EVIDENCE_REASONS = frozenset({"empty_scene"})
"""Pseudo-labels the camera's evidence gives, not the model: they train without review."""


def training_label(sample: Mapping[str, Any], use_pseudo: bool = False) -> str | None:
    """The label a sample trains with, or None (not yet reviewed, or excluded by the owner)."""
    if sample.get("review_source"):
        return sample.get("review_label") or None
    source = sample.get("label_source")
    label = sample.get("label")
    evidence = bool(EVIDENCE_REASONS.intersection(sample.get("reasons") or ()))
    if label and (source == "user" or (source == "pseudo" and (use_pseudo or evidence))):
        return str(label)
    return None
