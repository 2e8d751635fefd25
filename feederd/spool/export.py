"""The export stream that ``feeder-sync pull`` reads: a tar of JPEGs, then ``manifest.jsonl``.

It reads the index through a connection of its own, so the CLI can export while the daemon
writes (see :meth:`feederd.spool.Spool.export` for what the stream promises). Every file is
checked against the size and sha256 its row recorded: a damaged one is quarantined
(:mod:`feederd.spool.quarantine`), left out, and named in the manifest's
``feederd.damaged`` header (JSON ``[{"id", "seq", "why"}]``), so that the puller carries on.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import sqlite3
import tarfile
import time
from pathlib import Path
from typing import Any, BinaryIO

from feederd.errors import SpoolError
from feederd.spool.fileformat import SAMPLES_DIR
from feederd.spool.index import COLUMNS, DB_NAME, Sample, connect, get_meta, high_water, to_sample
from feederd.spool.quarantine import quarantine

MANIFEST_NAME = "manifest.jsonl"
DAMAGED_HEADER = "feederd.damaged"

# The package's name, as before feederd.spool became a package: log lines and
# ``[logging] levels`` keep naming it.
logger = logging.getLogger("feederd.spool")


def export_tar(directory: Path, since: int, out: BinaryIO) -> int:
    """Stream the samples with ``seq > since`` as a tar; -> last seq exported (or ``since``).

    The JPEGs follow in seq order, then ``manifest.jsonl`` LAST, so that it lists exactly the
    files streamed: a sample evicted between the snapshot and the read of its file is left
    out rather than promised.
    """
    rows, high, spool_id = _snapshot(directory / DB_NAME, since)
    samples = directory / SAMPLES_DIR
    last, lines, damaged = since, [], []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for sample in map(to_sample, rows):
            data = _read_for_export(samples, sample)
            if isinstance(data, str):
                damaged.append((sample, data))
                continue
            if data is None:
                continue
            _add_member(tar, sample.path, data, sample.time)
            lines.append(json.dumps(sample.manifest(), separators=(",", ":")))
            last = sample.seq
        quarantine(directory, damaged)
        manifest = "".join(line + "\n" for line in lines).encode()
        headers = {"feederd.spool_id": spool_id, "feederd.last_seq": str(high),
                   "feederd.since": str(since), "feederd.count": str(len(lines))}
        if damaged:
            headers[DAMAGED_HEADER] = json.dumps(
                [{"id": s.id, "seq": s.seq, "why": why} for s, why in damaged])
        _add_member(tar, MANIFEST_NAME, manifest, time.time(), headers)
    return last


def _snapshot(path: Path, since: int) -> tuple[list[Any], int, str]:
    """(rows with ``seq > since``, high-water mark, spool id) in one consistent snapshot.

    One read transaction, so that the daemon's commits meanwhile change nothing in it.
    """
    conn = connect(path)
    try:
        conn.execute("BEGIN")
        rows = conn.execute(f"SELECT {COLUMNS} FROM samples WHERE seq > ? ORDER BY seq",
                            (since,)).fetchall()
        high = high_water(conn)
        spool_id = get_meta(conn, "spool_id") or ""
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise SpoolError(f"cannot read {path}: {exc}") from exc
    finally:
        conn.close()
    return rows, high, spool_id


def _read_for_export(samples: Path, sample: Sample) -> bytes | str | None:
    """The file's bytes; ``None`` if it was evicted; why it is damaged (a str) otherwise."""
    try:
        data = (samples / sample.path).read_bytes()
    except FileNotFoundError:
        return None  # evicted since the snapshot
    except OSError as exc:  # EIO from a failing card
        return f"unreadable: {exc.strerror}"
    if len(data) != sample.size:
        return f"{len(data)} bytes where the index recorded {sample.size}"
    if hashlib.sha256(data).hexdigest() != sample.sha256:
        return "its sha256 no longer matches the one recorded when it was stored"
    return data


def _add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: float,
                pax: dict[str, str] | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
    if pax:
        info.pax_headers = pax
    tar.addfile(info, io.BytesIO(data))
