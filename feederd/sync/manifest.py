"""The manifest of a spool export stream, checked row by row before anything is trusted.

Each row names one sample (``seq``, ``id``, ``sha256``, ``size``, ``file``) plus what the
device said about it. Structural defects -- a path that escapes, an absurd sequence number
or size -- refuse the whole stream (:class:`TransportError`). Text that would reach a
terminal or a class name -- a label outside the label grammar, terminal escapes -- is refused
value by value: the sample is kept without it, and the refusal is logged and counted.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from feederd.errors import TransportError
from feederd.sync.samples import LABEL

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
MANIFEST_MAX_BYTES = 64 * 2**20
SAMPLE_MAX_BYTES = 16 * 2**20
"""A spool sample is one JPEG crop (tens of kilobytes); a 4K frame at quality 100 fits."""
MAX_SEQ = 2**48
"""More changes than a spool makes in millennia: a larger sequence number is a broken or
hostile stream (and, once stored, would make every later pull ask for nothing)."""
TEXT_MAX_CHARS = 200
LAST_SEQ_HEADER = "feederd.last_seq"
DAMAGED_HEADER = "feederd.damaged"
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def safe_name(name: str) -> str:
    """A member name as a relative POSIX path, or TransportError for anything that escapes."""
    if not name or "\\" in name or "\x00" in name:
        raise TransportError(f"refusing tar member {name!r}: not a plain relative path")
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("/"):
        raise TransportError(f"refusing tar member {name!r}: absolute paths are not accepted")
    if ".." in path.parts:
        raise TransportError(f"refusing tar member {name!r}: '..' is not accepted")
    return str(PurePosixPath(*[p for p in path.parts if p != "."]))


REQUIRED: dict[str, type | tuple[type, ...]] = {
    "seq": int, "id": (int, str), "sha256": str, "size": int, "path": str}
"""Required manifest fields; the file name may also be given as ``file`` (feederd's spool)."""


def parse_manifest(data: bytes, since: int) -> list[dict[str, Any]]:
    """Rows of ``manifest.jsonl`` after ``since``, each checked; TransportError otherwise."""
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TransportError(f"{MANIFEST} line {number} is not JSON ({exc})") from exc
        row = _check_row(row, number)
        if row["seq"] > since:
            rows.append(row)
    names = [r["path"] for r in rows]
    if len(set(names)) != len(names):
        raise TransportError(f"{MANIFEST} lists the same file for two samples")
    seqs = [r["seq"] for r in rows]
    if len(set(seqs)) != len(seqs):
        raise TransportError(f"{MANIFEST} lists the same sequence number twice")
    return rows


def _check_row(row: Any, number: int) -> dict[str, Any]:
    where = f"{MANIFEST} line {number}"
    if not isinstance(row, dict):
        raise TransportError(f"{where} is not a JSON object")
    if "path" not in row and "file" in row:
        row["path"] = row["file"]
    for key, kind in REQUIRED.items():
        value = row.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TransportError(f"{where}: '{key}' is missing or not a {_kind(kind)}")
    if not SHA256.match(row["sha256"]):
        raise TransportError(f"{where}: 'sha256' is not 64 lowercase hex digits")
    if row["seq"] < 0 or row["size"] < 0:
        raise TransportError(f"{where}: 'seq' and 'size' must not be negative")
    if row["seq"] > MAX_SEQ:
        raise TransportError(f"{where}: sequence number {row['seq']} is absurd (a spool's "
                             f"stay below {MAX_SEQ}); the stream is broken or hostile")
    if row["size"] > SAMPLE_MAX_BYTES:
        raise TransportError(f"{where}: size {row['size']} is more than a sample may be "
                             f"({SAMPLE_MAX_BYTES})")
    if isinstance(row["id"], str) and not _printable(row["id"]):
        raise TransportError(f"{where}: 'id' {row['id'][:40]!r} is not a printable name")
    row["path"] = safe_name(row["path"])
    if row["path"] == MANIFEST:
        raise TransportError(f"{where}: a sample cannot be called {MANIFEST}")
    row["id"] = str(row["id"])
    reasons = row.get("reasons") or []
    row["reasons"] = [str(r) for r in reasons] if isinstance(reasons, list) else [str(reasons)]
    return row


TEXT_FIELDS = ("predicted", "visit_id", "model_version", "label_source")


def refuse_unsafe_text(row: dict[str, Any]) -> int:
    """Drop values a terminal or a file name must never see; -> how many were dropped.

    ``label`` must follow the label grammar (it becomes a class name); the other text fields,
    reasons and probability keys must be short and printable. The sample itself is kept.
    """
    refused: list[str] = []
    label = row.get("label")
    if label is not None and not (isinstance(label, str) and LABEL.match(label)):
        refused.append(f"label {str(label)[:40]!r}")
        row["label"] = row["label_source"] = None
    for key in TEXT_FIELDS:
        value = row.get(key)
        if value is not None and not (isinstance(value, str) and _printable(value)):
            refused.append(f"{key} {str(value)[:40]!r}")
            row[key] = None
    reasons = [r for r in row["reasons"] if _printable(r)]
    refused += [f"reason {r[:40]!r}" for r in row["reasons"] if r not in reasons]
    row["reasons"] = reasons
    probs = row.get("probs")
    if isinstance(probs, dict):
        row["probs"] = {k: v for k, v in probs.items() if _printable(k)
                        and isinstance(v, int | float) and not isinstance(v, bool)}
        refused += [f"probability of {k[:40]!r}" for k in probs if k not in row["probs"]]
    elif probs is not None:
        refused.append("probs (not an object)")
        row["probs"] = {}
    if refused:
        logger.warning("sample %s: refused %s from the device (not a valid label or not "
                       "printable text); the sample is kept without them", row["id"],
                       ", ".join(refused))
    return len(refused)


def _printable(text: str) -> bool:
    return 0 < len(text) <= TEXT_MAX_CHARS and text.isprintable()


def last_seq_header(headers: Mapping[str, str]) -> int | None:
    """The stream's high-water mark (PAX header), checked like a row's sequence number."""
    raw = headers.get(LAST_SEQ_HEADER)
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) > MAX_SEQ:
        raise TransportError(f"{MANIFEST}: header {LAST_SEQ_HEADER}={raw[:40]!r} is not a "
                             "plausible sequence number; the stream is broken or hostile")
    return int(raw)


def _kind(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def damaged_header(headers: Mapping[str, str]) -> list[int]:
    """Ids of the samples the device found damaged and left out (logged: the pull goes on).

    A malformed header is logged and ignored: it only ever explains what is missing.
    """
    raw = headers.get(DAMAGED_HEADER)
    if not raw:
        return []
    try:
        entries = json.loads(raw)
        ids = [int(e["id"]) for e in entries][:1000]
    except (ValueError, TypeError, KeyError):
        logger.warning("ignoring a malformed %s header from the device", DAMAGED_HEADER)
        return []
    logger.warning("the device found %d damaged sample(s) (ids %s) and quarantined them; "
                   "the pull goes on without them (see 'feederd doctor' on the device)",
                   len(ids), ", ".join(map(str, ids[:10])))
    return ids
