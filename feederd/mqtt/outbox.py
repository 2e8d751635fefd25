"""A bounded on-disk queue of MQTT messages waiting for the broker (SQLite).

Alerts and visit summaries are written here first and leave only when the broker has
acknowledged them (PUBACK), so an outage, or a daemon killed during an outage, loses nothing
and delivers in the order things happened. The queue is bounded by a message count: beyond it
the oldest messages go first (an alert from hours ago matters less than the one just raised)
and are counted.

Durability: WAL with ``synchronous=NORMAL``. A commit then costs one write to the WAL and no
fsync, so ``put`` stays cheap enough to call from the frame loop, and a committed row survives
the process being killed (``kill -9``, the OOM killer, a crash): the data is in the OS's hands.
Only a power cut can lose the last few commits, never corrupt the file; an alert raised in the
second before the power went is the price, and the camera went with it anyway. ``FULL`` would
add an fsync to every alert and to every acknowledgement on an SD card.

A retained message replaces any older retained message for the same topic still waiting
(only the newest snapshot matters to a retained topic), which also keeps JPEGs from filling
the queue during a long outage.

A full disk must not stop delivery: a delivered message whose row cannot be deleted (SQLite
needs room in its WAL even to delete) is remembered in memory as gone, skipped by
:meth:`Outbox.head`, and deleted by the next write that succeeds.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from feederd.errors import MqttError

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    props TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_retained ON outbox (topic) WHERE retain = 1;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class OutMessage:
    """One message to publish; the two MQTT 5 properties let a client reply to an alert."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Queued:
    """A stored message and its row id (ids grow in insertion order, also across restarts)."""

    id: int
    message: OutMessage


class Outbox:
    """The queue. Thread-safe: publishers put, the MQTT sender takes the head and removes it."""

    def __init__(self, path: Path, max_messages: int) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.path = path
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._dropped = 0
        self._gone: set[int] = set()  # delivered, row not yet deleted (see the docstring)
        self._db = _open(path)
        self._count: int = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def put(self, messages: Sequence[OutMessage], meta: Mapping[str, str] | None = None, *,
            first_id: int | None = None) -> int:
        """Store ``messages`` (and ``meta`` values) in one transaction; return how many of the
        oldest were dropped to stay within the bound. Raises :class:`MqttError` if the disk
        refuses (full, read-only)."""
        try:
            return self._put(messages, meta or {}, first_id)
        except sqlite3.Error as exc:
            raise MqttError(f"MQTT outbox {self.path}: cannot store ({exc})") from exc

    def _put(self, messages: Sequence[OutMessage], meta: Mapping[str, str],
             first_id: int | None) -> int:
        with self._lock:
            with self._db:  # one transaction; on error nothing changed, nor does _count
                count = self._count - self._delete_gone()
                count += sum(self._insert(message, None if first_id is None else first_id + i)
                             for i, message in enumerate(messages))
                self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                     meta.items())
                excess = max(0, count - self.max_messages)
                if excess:
                    self._db.execute("DELETE FROM outbox WHERE id IN "
                                     "(SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,))
            self._count = count - excess
            self._dropped += excess
            self._gone.clear()
        if excess:
            logger.warning("MQTT outbox full (%d messages): dropped the %d oldest",
                           self.max_messages, excess)
        return excess

    def put_with_gap(self, messages: Sequence[OutMessage], meta: Mapping[str, str] | None,
                     gap: int) -> int:
        """Store ``messages`` after ``gap`` free ids and return the first of those ids.

        An alert is stored the moment it is decided, its snapshots (slow to encode) a little
        later with :meth:`put_at` into the ids left free, so they still leave first. Raises
        :class:`MqttError` like :meth:`put`.
        """
        try:
            with self._lock:  # ids are never reused (AUTOINCREMENT): the next is seq + 1
                found = self._db.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        except sqlite3.Error as exc:
            raise MqttError(f"MQTT outbox {self.path}: cannot read ({exc})") from exc
        first_free = (int(found[0]) if found else 0) + 1
        self.put(messages, meta, first_id=first_free + gap)
        return first_free

    def put_at(self, messages: Sequence[OutMessage], first_id: int) -> int:
        """Store ``messages`` under the ids :meth:`put_with_gap` left free."""
        return self.put(messages, first_id=first_id)

    def _insert(self, message: OutMessage, row_id: int | None = None) -> int:
        """Add one row (replacing a waiting retained one); return the change in row count."""
        replaced = 0
        if message.retain:
            replaced = self._db.execute("DELETE FROM outbox WHERE topic = ? AND retain = 1",
                                        (message.topic,)).rowcount
        self._db.execute(
            "INSERT INTO outbox (id, topic, payload, qos, retain, props, created) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row_id, message.topic, message.payload, message.qos, int(message.retain),
             _props_json(message), time.time()),
        )
        return 1 - replaced

    def _delete_gone(self) -> int:
        """Delete the rows of delivered messages (inside the caller's transaction)."""
        return sum(self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,)).rowcount
                   for row_id in self._gone)

    def head(self) -> Queued | None:
        """The oldest waiting message, or ``None``. Raises :class:`MqttError` if unreadable."""
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT id, topic, payload, qos, retain, props FROM outbox WHERE id NOT IN "
                    "(SELECT value FROM json_each(?)) ORDER BY id LIMIT 1",
                    (json.dumps(sorted(self._gone)),)).fetchone()
        except sqlite3.Error as exc:
            raise MqttError(f"MQTT outbox {self.path}: cannot read ({exc})") from exc
        return None if row is None else _queued(row)

    def remove(self, row_id: int) -> None:
        """Forget a delivered message (a no-op if the bound already dropped it).

        If the disk refuses the delete, the message is still forgotten (see the module
        docstring) and :class:`MqttError` says so; the next successful write deletes it.
        """
        with self._lock:
            self._gone.add(row_id)
            try:
                with self._db:
                    removed = self._delete_gone()
            except sqlite3.Error as exc:
                raise MqttError(f"MQTT outbox {self.path}: cannot delete a delivered message "
                                f"({exc}); it is skipped and deleted later") from exc
            self._count -= removed
            self._gone.clear()

    def meta(self, key: str) -> str | None:
        """A small value stored with the queue (e.g. the latest alert's event id)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @property
    def dropped(self) -> int:
        """Messages dropped by the bound since this instance was opened."""
        return self._dropped

    def __len__(self) -> int:
        """Messages waiting (delivered ones whose rows are not yet deleted do not count)."""
        return self._count - len(self._gone)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _open(path: Path) -> sqlite3.Connection:
    """Open (or create) the queue; a file that is not a usable database is moved aside."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _connect(path)
    except (OSError, sqlite3.OperationalError) as exc:
        raise MqttError(f"MQTT outbox {path}: cannot open ({exc}); check that the state "
                        "directory exists and is writable") from exc
    except sqlite3.DatabaseError as exc:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        logger.error("MQTT outbox %s is unreadable (%s); moved it to %s and started empty",
                     path, exc, aside)
        path.rename(aside)
        for suffix in ("-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        return _connect(path)


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        db.execute("SELECT COUNT(*) FROM outbox").fetchone()
    except sqlite3.DatabaseError:
        db.close()
        raise
    # Set up in autocommit mode (journal_mode cannot change inside a transaction); from now
    # on statements open a transaction that "with db:" commits as one.
    db.isolation_level = "DEFERRED"
    return db


def _props_json(message: OutMessage) -> str:
    props: dict[str, str] = {}
    if message.response_topic is not None:
        props["response_topic"] = message.response_topic
    if message.correlation_data is not None:
        props["correlation_data"] = message.correlation_data.hex()
    return json.dumps(props)


def _queued(row: tuple[int, str, bytes, int, int, str]) -> Queued:
    row_id, topic, payload, qos, retain, props_text = row
    props = json.loads(props_text)
    correlation = props.get("correlation_data")
    return Queued(row_id, OutMessage(
        topic=topic,
        payload=bytes(payload),
        qos=int(qos),
        retain=bool(retain),
        response_topic=props.get("response_topic"),
        correlation_data=None if correlation is None else bytes.fromhex(correlation),
    ))
