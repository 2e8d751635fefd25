"""The JSON documents feederd sends: pure functions of plain values, used by MQTT and the demo.

One place builds them so the demo's JSON lines and the MQTT payloads can never disagree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from feederd.types import Alert, VisitSummary


def iso_time(t: float) -> str:
    """Unix time as ISO 8601 UTC with milliseconds (``2024-05-01T07:30:12.345Z``)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def alert_payload(alert: Alert, reply_to: str | None = None) -> dict[str, Any]:
    """The alert JSON; ``reply_to`` is the feedback topic, for MQTT 3.1.1 clients (left out
    when ``None``, e.g. for the demo's JSON lines). ``label`` is the stable key (replies,
    species lists); ``display_name`` and ``scientific_name`` (null if unknown) are for people."""
    payload = {
        "event_id": alert.event_id,
        "time": iso_time(alert.time),
        "label": alert.label,
        "display_name": alert.display_name or alert.label,
        "scientific_name": alert.scientific_name,
        "confidence": _number(alert.confidence),
        "margin": _number(alert.margin),
        "frames": alert.frames,
        "model_version": alert.model_version,
    }
    if reply_to is not None:
        payload["reply_to"] = reply_to
    return payload


def visit_payload(summary: VisitSummary) -> dict[str, Any]:
    """The JSON sent when a visit closes, alert or not."""
    return {
        "event_id": summary.event_id,
        "start": iso_time(summary.start),
        "end": iso_time(summary.end),
        "duration_s": _number(summary.end - summary.start, 3),
        "frames_seen": summary.frames_seen,
        "frames_classified": summary.frames_classified,
        "votes": dict(sorted(summary.votes.items())),
        "label": summary.label,
        "alerted": summary.alerted,
        "model_version": summary.model_version,
    }


def model_payload(info: Mapping[str, Any]) -> dict[str, Any]:
    """The retained model JSON (version, metrics, ... as the daemon describes the bundle)."""
    return dict(info)


def stats_payload(stats: Mapping[str, Any], counters: Mapping[str, int],
                  last_error: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The daemon's stats with the link's counters under ``mqtt`` and the newest logged error
    (``time`` as ISO 8601, ``logger``, ``message``; ``null`` when there was none)."""
    error = None if last_error is None else {**last_error, "time": iso_time(last_error["time"])}
    return {**stats, "mqtt": dict(counters), "last_error": error}


def to_json(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"),
                      default=_plain).encode("utf-8")


def _number(value: float, digits: int = 4) -> float | None:
    return round(float(value), digits) if math.isfinite(value) else None


def _plain(value: Any) -> Any:
    """JSON fallback: numpy scalars and arrays become numbers and lists, the rest text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)
