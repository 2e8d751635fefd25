"""The files of a spool: sample names, the metadata each JPEG carries, the writer's lock.

Durable writes are :mod:`feederd.atomic`'s.

Self-describing files. Each JPEG carries its sample's metadata as JSON in a COM segment (one
file, one write: no sidecar), so that the files alone can rebuild a lost index
(:mod:`feederd.spool.repair`). Decoders ignore COM segments: a sample stays a plain JPEG.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from feederd.errors import SpoolError
from feederd.mining.decisions import Candidate

LOCK_NAME = "spool.lock"
SAMPLES_DIR = "samples"
FORMAT = 1
MAX_FULL_PROBS = 64
SOI = b"\xff\xd8"
_COM_MAGIC = b"feederd-sample:"
_APP0, _COM = b"\xff\xe0", b"\xff\xfe"


def sample_file(sample_id: int) -> str:
    return f"{sample_id:08d}.jpg"


def sample_files(samples: Path) -> Iterator[Path]:
    """The sample files (and an older feederd's temporary ``.tmp-*.jpg``) in ``samples/``."""
    with os.scandir(samples) as entries:
        for entry in entries:
            if entry.name.endswith(".jpg") and entry.is_file():
                yield Path(entry.path)


def sample_meta(sample_id: int, candidate: Candidate, model_version: str,
                labels: Sequence[str]) -> dict[str, Any]:
    """What a sample's file carries and its index row holds (``phash`` as hex)."""
    c, pred = candidate, candidate.frame.prediction
    return {"id": sample_id, "visit_id": c.frame.visit_id, "frame_seq": c.frame.seq,
            "time": c.frame.wall, "reasons": list(c.reasons), "predicted": pred.label,
            "probs": _probs(candidate, labels), "margin": round(float(pred.margin), 6),
            "label": c.label, "label_source": c.label_source, "priority": c.priority,
            "model_version": model_version, "phash": f"{c.phash:016x}"}


def _probs(candidate: Candidate, labels: Sequence[str]) -> dict[str, float]:
    """The full probability vector when ``labels`` names it (up to 64 classes), else top-k."""
    pred = candidate.frame.prediction
    probs = pred.probs.reshape(-1) if pred.probs is not None else None
    if probs is not None and len(labels) == probs.size <= MAX_FULL_PROBS:
        return {name: round(float(v), 5) for name, v in zip(labels, probs, strict=True)}
    return {name: round(float(v), 5) for name, v in zip(pred.labels, pred.scores, strict=False)}


# ---- metadata inside the JPEG (a COM segment after SOI/APP0) -----------------------------

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
    while data[:2] == SOI and at + 4 <= len(data) and data[at] == 0xFF and \
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


# ---- the writer's lock ------------------------------------------------------------------

def take_lock(directory: Path) -> int:
    """Hold ``spool.lock`` (flock) as the one writer; -> its descriptor, to close on release.

    The file names the holder's pid, so that a second daemon can say which one is running.
    """
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SpoolError(f"{directory} is in use by another feederd (pid {holder}); "
                         "stop it first, or open the spool read-only") from exc
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
