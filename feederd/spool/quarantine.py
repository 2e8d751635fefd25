"""Damaged samples: moved out of the way so that one rotten file never blocks a pull.

An SD card can flip a bit in a file long after it was written. The export checks every file
against the sha256 its row recorded; a file that no longer matches is moved to
``quarantine/`` (kept for inspection, the newest :data:`KEEP`), its row is dropped, and the
export names it in its manifest's ``feederd.damaged`` header so that ``feeder-sync pull``
carries on without it. ``meta`` keeps the running count (``quarantined``) and the last few
events (``quarantine``) for ``feederd spool stats``; ``feederd doctor`` fails while files
are in ``quarantine/`` (a failing card is worth knowing about).

The export runs in the CLI beside the daemon: the rename and the row's removal are each
atomic, and a crash between them leaves a row without its file, which the next start-up
drops. If quarantining fails (a read-only spool), the sample is still left out of the stream.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from feederd.atomic import fsync_dir
from feederd.spool.fileformat import SAMPLES_DIR
from feederd.spool.index import DB_NAME, Sample, connect, get_meta, set_meta, transaction

QUARANTINE_DIR = "quarantine"
KEEP = 100
LOG_KEEP = 20

# The package's name, as before feederd.spool became a package.
logger = logging.getLogger("feederd.spool")


def quarantine(directory: Path, damaged: list[tuple[Sample, str]]) -> int:
    """Move the damaged samples' files aside and drop their rows; -> samples quarantined."""
    if not damaged:
        return 0
    for sample, why in damaged:
        logger.error("spool: sample %d (sequence %d, %s) is damaged (%s); it is moved to %s "
                     "and left out of exports", sample.id, sample.seq, sample.path, why,
                     directory / QUARANTINE_DIR)
    try:
        moved = _move(directory, [sample for sample, _ in damaged])
        _forget(directory / DB_NAME, [(s, why) for s, why in damaged if s.id in moved])
    except (OSError, sqlite3.Error) as exc:
        logger.error("spool: cannot quarantine %d damaged sample(s) in %s: %s; they are "
                     "left out of exports all the same", len(damaged), directory, exc)
        return 0
    _trim(directory / QUARANTINE_DIR)
    return len(moved)


def quarantined_files(directory: Path) -> list[Path]:
    """The files in ``quarantine/``, oldest first (none when there is no such folder)."""
    folder = directory / QUARANTINE_DIR
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime)


def _move(directory: Path, samples: list[Sample]) -> set[int]:
    folder = directory / QUARANTINE_DIR
    folder.mkdir(exist_ok=True)
    moved: set[int] = set()
    for sample in samples:
        with contextlib.suppress(FileNotFoundError):  # evicted meanwhile: nothing to move
            os.replace(directory / SAMPLES_DIR / sample.path, folder / sample.path)
        moved.add(sample.id)
    fsync_dir(folder)
    fsync_dir(directory / SAMPLES_DIR)
    return moved


def _forget(db: Path, damaged: list[tuple[Sample, str]]) -> None:
    """Drop the rows (by id: a relabel may have given one a new seq) and log the event."""
    conn = connect(db)
    try:
        with transaction(conn, durable=True):
            conn.executemany("DELETE FROM samples WHERE id = ?", [(s.id,) for s, _ in damaged])
            count = int(get_meta(conn, "quarantined") or 0) + len(damaged)
            events: list[dict[str, Any]] = json.loads(get_meta(conn, "quarantine") or "[]")
            events += [{"id": s.id, "seq": s.seq, "file": s.path, "why": why,
                        "at": time.time()} for s, why in damaged]
            set_meta(conn, "quarantined", str(count))
            set_meta(conn, "quarantine", json.dumps(events[-LOG_KEEP:]))
    finally:
        conn.close()


def _trim(folder: Path) -> None:
    """Keep the newest :data:`KEEP` quarantined files: a dying card must not fill itself."""
    for old in quarantined_files(folder.parent)[:-KEEP]:
        with contextlib.suppress(OSError):
            old.unlink()
