"""What the review page shows, as plain JSON-ready data: the samples to review, grouped by
visit with the most doubtful visit first, and the last evaluation report.

Kept apart from the HTTP layer (:mod:`feederd.sync.web`) so that the order, the counts and the
report lookup can be tested without a server, and so that the page stays a thin view: every
decision still goes through :func:`feederd.sync.review.decide`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from feederd.errors import SyncError
from feederd.sync import review
from feederd.sync.plots import PAIR_PNG
from feederd.sync.workspace import Workspace

logger = logging.getLogger(__name__)

TOP_K = 3


def doubt(sample: Mapping[str, Any]) -> float:
    """How unsure the device was: 1 - margin (top-1 minus top-2); 0 without a margin."""
    margin = sample.get("margin")
    return 1.0 - float(margin) if isinstance(margin, int | float) else 0.0


def top(sample: Mapping[str, Any], k: int = TOP_K) -> list[tuple[str, float]]:
    """The device's k most probable labels."""
    probs = sample.get("probs")
    if not isinstance(probs, dict):
        return []
    ranked = sorted(((str(n), float(p)) for n, p in probs.items()
                     if isinstance(p, int | float)), key=lambda kv: -kv[1])
    return [(name, round(p, 4)) for name, p in ranked[:k]]


def sample_view(sample: Mapping[str, Any]) -> dict[str, Any]:
    """One sample as the page needs it (no file paths: images go by id and hash)."""
    source = sample.get("review_source")
    return {"id": str(sample["id"]), "sha256": sample["sha256"], "time": sample.get("time"),
            "visit_id": sample.get("visit_id") or "", "reasons": sample.get("reasons") or [],
            "predicted": sample.get("predicted"), "top": top(sample),
            "margin": sample.get("margin"), "pseudo": review.pseudo_label(sample),
            "review": {"source": source, "label": sample.get("review_label")} if source
            else None}


def samples_view(workspace: Workspace) -> dict[str, Any]:
    """Samples waiting for a decision and those the owner decided, grouped by visit; the
    visit with the most doubtful sample first, its samples in time order."""
    with contextlib.closing(workspace.index()) as index:
        rows = [s for s in index.all() if s.get("review_source") or review.is_pending(s)]
    visits: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        visits.setdefault(row.get("visit_id") or f"sample-{row['id']}", []).append(row)
    ordered = sorted(visits.items(), key=lambda kv: (-max(doubt(s) for s in kv[1]),
                                                     _first_time(kv[1]), kv[0]))
    pending = sum(review.is_pending(s) for s in rows)
    return {"device": workspace.device, "labels": review.known_labels(workspace),
            "negative": review.negative_label(workspace),
            "counts": {"pending": pending, "decided": len(rows) - pending},
            "visits": [{"visit_id": key, "time": _first_time(group),
                        "doubt": round(max(doubt(s) for s in group), 4),
                        "samples": [sample_view(s) for s in sorted(
                            group, key=lambda s: (s.get("time") or 0.0, str(s["id"])))]}
                       for key, group in ordered]}


def _first_time(group: list[Mapping[str, Any]]) -> float:
    times = [float(s["time"]) for s in group if isinstance(s.get("time"), int | float)]
    return min(times) if times else 0.0


def counts(workspace: Workspace) -> dict[str, int]:
    with contextlib.closing(workspace.index()) as index:
        rows = index.all()
    pending = sum(review.is_pending(s) for s in rows)
    return {"pending": pending, "decided": sum(bool(s.get("review_source")) for s in rows)}


def image_path(workspace: Workspace, sample_id: str, sha256: str) -> Path:
    """The JPEG of one pulled sample, found through the index only (never a request path)."""
    with contextlib.closing(workspace.index()) as index:
        sample = index.get(sample_id, sha256)
    if sample is None:
        raise SyncError(f"no pulled sample {sample_id} with that content hash")
    path = (workspace.dir / sample["file"]).resolve()
    if not path.is_relative_to(workspace.samples_dir.resolve()):
        raise SyncError(f"sample {sample_id}: its file is outside the workspace's samples")
    return path


# --- the last evaluation ----------------------------------------------------------------------

def report_dir(workspace: Workspace) -> Path | None:
    """The folder of the last evaluation: the model of the newest ``evaluate`` event (or the
    candidate) as ``state.json`` records it; None before any evaluation."""
    state = workspace.load_state()
    events = [e for e in state.get("history", []) if e.get("event") == "evaluate"]
    version = events[-1].get("version") if events else state.get("candidate")
    entry = (state.get("models") or {}).get(version or "", {})
    if not entry.get("report"):
        return None
    folder = (workspace.dir / entry["report"]).resolve()
    if not folder.is_relative_to(workspace.reports_dir.resolve()):
        logger.warning("%s: report folder outside %s ignored", folder, workspace.reports_dir)
        return None
    return folder


def report_view(workspace: Workspace) -> dict[str, Any]:
    """The last report.json plus the pulled samples behind its false alerts."""
    folder = report_dir(workspace)
    report = _load(folder / "report.json") if folder else None
    if report is None:
        return {"found": False, "message": "no evaluation yet: run 'feeder-sync evaluate'"}
    keys = {(str(s["id"]), str(s["sha256"])) for role in ("candidate", "reference")
            for s in ((report.get(role) or {}).get("false_alert_samples") or [])}
    with contextlib.closing(workspace.index()) as index:
        found = [index.get(i, sha) for i, sha in sorted(keys)]
    samples = {f"{s['id']}:{s['sha256']}": sample_view(s) for s in found if s}
    return {"found": True, "report": report, "samples": samples,
            "png": bool(folder and (folder / PAIR_PNG).is_file())}


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise SyncError(f"{path}: unreadable evaluation report ({exc})") from exc
    return data if isinstance(data, dict) else None
