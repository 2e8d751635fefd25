"""Making index and files agree: reconcile after a crash, rebuild a damaged or lost index.

Both rest on the order in which :class:`~feederd.spool.store.Spool` writes: a batch's files
are durable before its rows are committed, and an eviction removes files before rows. So a row
without an intact file is stale, and an intact file without a row is a batch whose commit was
cut short (or whose WAL tail a power cut lost): it is indexed again from the metadata it
carries. A rebuilt spool gets a new ``spool_id`` so that feeder-sync knows to pull from 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

from feederd.atomic import fsync_dir
from feederd.spool.fileformat import extract_metadata, sample_file, sample_files
from feederd.spool.index import (
    DB_NAME,
    connect,
    create_schema,
    find_damage,
    high_water,
    insert_rows,
    set_meta,
    to_row,
    transaction,
)

# The package's name, as before feederd.spool became a package: log lines and
# ``[logging] levels`` keep naming it.
logger = logging.getLogger("feederd.spool")


def open_index(path: Path, samples: Path, existed: bool) -> tuple[sqlite3.Connection, str | None]:
    """The index connection, rebuilt from the files when the index is damaged or lost.

    -> (connection, why the index was rebuilt; ``None`` when it was sound).
    """
    if not existed and any(sample_files(samples)):
        return rebuild(path, samples, "the index is missing"), "the index is missing"
    try:
        conn = connect(path)
    except sqlite3.DatabaseError as exc:
        return rebuild(path, samples, str(exc)), str(exc)
    try:
        found = find_damage(conn) if existed else None
        if found is None:
            create_schema(conn)
            return conn, None
    except sqlite3.DatabaseError as exc:
        found = str(exc)
    conn.close()
    return rebuild(path, samples, found), found


def reconcile(conn: sqlite3.Connection, samples: Path, verify_sha: bool) -> None:
    """Make index and files agree after whatever stopped the last writer.

    Rows whose file is missing or damaged go (an eviction removes files before rows).
    Intact files without a row are indexed (a batch whose commit was cut short: its files
    were durable first); damaged and temporary files are removed.
    """
    files = {p.name: p for p in sample_files(samples)}
    rows = conn.execute("SELECT seq, id, size, sha256 FROM samples").fetchall()
    bad = [r for r in rows if not _file_matches(files.get(sample_file(r[1])), r[2],
                                                r[3] if verify_sha else None)]
    if bad:
        with transaction(conn, durable=True):
            conn.executemany("DELETE FROM samples WHERE seq = ?", [(r[0],) for r in bad])
        logger.warning("spool: %d indexed sample(s) without an intact file were dropped "
                       "from the index", len(bad))
    for row in bad:
        (samples / sample_file(row[1])).unlink(missing_ok=True)
    indexed = {sample_file(r[1]) for r in rows}
    orphans = [p for name, p in files.items() if name not in indexed]
    if orphans:
        adopted, removed = adopt(conn, samples, orphans, high_water(conn) + 1)
        logger.info("spool reconciled: %d uncommitted sample file(s) indexed, %d partial "
                    "file(s) removed", adopted, removed)


def adopt(conn: sqlite3.Connection, samples: Path, paths: list[Path],
          first_seq: int) -> tuple[int, int]:
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
        fsync_dir(samples)
    with transaction(conn, durable=True):
        insert_rows(conn, rows)
    return len(rows), removed


def rebuild(path: Path, samples: Path, damage: str) -> sqlite3.Connection:
    """Move the damaged index aside and index again every intact sample file."""
    damage = " ".join(damage.split())
    moved = path.with_name(f"{DB_NAME}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        src = path.with_name(DB_NAME + suffix)
        if src.exists() and suffix == "-shm":
            src.unlink()
        elif src.exists():
            src.rename(moved.with_name(moved.name + suffix))
    conn = connect(path)
    create_schema(conn)
    recovered, discarded = adopt(conn, samples, sorted(sample_files(samples)), 1)
    report = {"at": time.time(), "damage": damage,
              "moved_to": moved.name if moved.exists() else None,
              "recovered": recovered, "discarded": discarded}
    with transaction(conn, durable=True):
        set_meta(conn, "rebuilt", json.dumps(report))
        set_meta(conn, "spool_id", uuid.uuid4().hex)
        set_meta(conn, "clean", "1")
    logger.error("spool index %s was unusable (%s): moved aside as %s and rebuilt from the "
                 "files: %d sample(s) recovered, %d damaged file(s) removed; labels given "
                 "after a sample was stored are lost", path, damage, report["moved_to"],
                 recovered, discarded)
    return conn


def _file_matches(path: Path | None, size: int, sha: bytes | None) -> bool:
    if path is None:
        return False
    try:
        if path.stat().st_size != size:
            return False
        return sha is None or hashlib.sha256(path.read_bytes()).digest() == bytes(sha)
    except OSError:
        return False


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
        row = to_row(0, meta, int(meta["phash"], 16), hashlib.sha256(data).digest(), len(data))
    except (KeyError, TypeError, ValueError):
        return None
    return row if isinstance(meta["id"], int) and path.name == sample_file(meta["id"]) else None
