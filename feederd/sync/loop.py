"""The device-facing steps (``push``, ``rollback``, ``status``) and ``feeder-sync loop``.

``loop`` is pull -> train -> evaluate -> push if the gate passes, and says what it did. It
does not build a new version when nothing new was labelled since the model on the device, so
it can run from cron every night without piling up identical models.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feederd.errors import SyncError
from feederd.sync.config import DeviceConfig, TrainingConfig
from feederd.sync.dataset import mined_items
from feederd.sync.evaluate import Report, evaluate
from feederd.sync.pull import PullResult, pull
from feederd.sync.review import pending
from feederd.sync.samples import EVIDENCE_REASONS
from feederd.sync.train import TrainResult, train
from feederd.sync.transport import Transport
from feederd.sync.workspace import Workspace

logger = logging.getLogger(__name__)

PUSHABLE = ("pass", "n/a")


def push(workspace: Workspace, transport: Transport, version: str | None = None,
         force: bool = False) -> dict[str, Any]:
    """Install a model built here on the device (default: the latest candidate).

    Refuses a model whose gate failed or that was never evaluated against the deployed one,
    unless ``force`` (which also overrides the device's own regression check).
    """
    state = workspace.require().load_state()
    version = version or state.get("candidate")
    if not version:
        raise SyncError("no model to push; run 'feeder-sync train' first")
    entry = state.get("models", {}).get(version)
    path = workspace.model_path(version)
    if entry is None or not path.exists():
        raise SyncError(f"no model '{version}' in {workspace.models_dir}")
    gate = entry.get("gate")
    if gate not in PUSHABLE and not force:
        why = "failed the gate" if gate == "fail" else "has not been evaluated"
        raise SyncError(f"model {version} {why} (see 'feeder-sync evaluate'); "
                        "use --force to push it anyway")
    with workspace.lock():
        info = transport.install(path, force=force)
        previous = state.get("deployed")
        workspace.update_state(deployed=version, previous_deployed=previous)
        workspace.record("push", version=version, device=info.get("installed"))
    logger.info("pushed %s to %s", version, transport.name)
    return {"pushed": version, "previous": previous, "device": info}


def rollback(workspace: Workspace, transport: Transport) -> dict[str, Any]:
    """``feederd model rollback`` on the device; the workspace follows."""
    workspace.require()
    with workspace.lock():
        info = transport.rollback()
        state = workspace.load_state()
        current = info.get("current")
        workspace.update_state(deployed=current, previous_deployed=state.get("deployed"))
        workspace.record("rollback", current=current)
    return info


def status(workspace: Workspace, device: DeviceConfig | None) -> dict[str, Any]:
    """What was pulled, labelled, trained, evaluated and deployed for one device."""
    state = workspace.require().load_state()
    with contextlib.closing(workspace.index()) as index:
        samples = index.count()
    labelled = mined_items(workspace)
    models = state.get("models", {})
    candidate = state.get("candidate")
    return {
        "device": workspace.device,
        "transport": f"{device.transport} {device.host}".strip() if device else "not configured",
        "workspace": str(workspace.dir),
        "pulled": {"samples": samples, "last_seq": state.get("last_seq", 0),
                   "acked_seq": state.get("acked_seq", 0)},
        "labelled": {"samples": len(labelled), "pending_review": len(pending(workspace))},
        "models": len(models),
        "baseline": state.get("baseline"),
        "candidate": candidate,
        "candidate_gate": models.get(candidate, {}).get("gate") if candidate else None,
        "deployed": state.get("deployed"),
        "last_report": models.get(candidate, {}).get("report") if candidate else None,
        "history": state.get("history", [])[-5:],
    }


@dataclass
class LoopSummary:
    pulled: PullResult | None = None
    trained: TrainResult | None = None
    report: Report | None = None
    pushed: dict[str, Any] | None = None
    skipped: str | None = None
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"pulled": self.pulled.as_dict() if self.pulled else None,
                "trained": self.trained.as_dict() if self.trained else None,
                "evaluation": self.report.as_dict() if self.report else None,
                "gate": self.report.gate if self.report else None,
                "pushed": self.pushed, "skipped": self.skipped, "error": self.error,
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}

    def text(self) -> str:
        lines = []
        if self.pulled:
            lines.append(f"pull: {self.pulled.received} new samples (up to sequence "
                         f"{self.pulled.last_seq})")
        if self.skipped:
            lines.append(f"train: skipped: {self.skipped}")
        if self.trained:
            lines.append(f"train: {self.trained.version} on "
                         f"{sum(self.trained.trained_on.values())} samples "
                         f"({self.trained.mined_used} mined)")
        if self.report:
            lines.append(f"evaluate: gate {self.report.gate.upper()}: "
                         + "; ".join(self.report.reasons))
            lines.append(f"report: {self.report.path / 'report.md'}")
        if self.pushed:
            lines.append(f"push: {self.pushed['pushed']} installed on the device")
        elif self.report and not self.error:
            lines.append("push: not pushed (the gate did not pass)")
        if self.error:
            lines.append(f"push: {self.error}")
        lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def run_loop(workspace: Workspace, transport: Transport, training: TrainingConfig,
             device: DeviceConfig, *, negatives_dirs: Sequence[Path] = (),
             progress: bool = False,
             pull_progress: Callable[[int], None] | None = None) -> LoopSummary:
    """pull -> train -> evaluate -> push if the gate passes."""
    summary = LoopSummary()
    with _timed(summary, "pull"):
        summary.pulled = pull(workspace.require(), transport, pull_progress)
    if not _news(workspace, training):
        summary.skipped = "nothing new was labelled since the last model built"
        return summary
    with _timed(summary, "train"):
        summary.trained = train(workspace, training, progress=progress)
    with _timed(summary, "evaluate"):
        summary.report = evaluate(workspace, alert_confidence=device.alert_confidence,
                                  tolerance=training.tolerance,
                                  noise_images=training.noise_images,
                                  negatives_dirs=negatives_dirs, threads=training.threads,
                                  batch_size=training.batch_size, progress=progress,
                                  view=training.view,
                                  weak_after_s=training.weak_positive_after_s)
    if summary.report.gate in PUSHABLE:
        with _timed(summary, "push"):
            try:
                summary.pushed = push(workspace, transport)
            except SyncError as exc:
                # The device refused it (its own check on recent samples): say so, keep going.
                summary.error = str(exc)
    return summary


def _news(workspace: Workspace, training: TrainingConfig) -> bool:
    """Whether labelled samples exist that the latest model built here did not use.

    The device's empty scenes do not count: they arrive every few minutes, most are frames
    the model already calls nothing (the gate would refuse a model built for them alone);
    they join the training with the next reply."""
    state = workspace.load_state()
    reference = state.get("candidate") or state.get("deployed") or state.get("baseline")
    used = set(workspace.load_sidecar(reference).get("mined", [])) if reference else set()
    current = {str(item.sample["id"]) for item in mined_items(workspace, training.use_pseudo)
               if item.sample and not EVIDENCE_REASONS.intersection(
                   item.sample.get("reasons") or ())}
    return bool(current - used)


@contextlib.contextmanager
def _timed(summary: LoopSummary, step: str) -> Any:
    started = time.perf_counter()
    try:
        yield
    finally:
        summary.seconds[step] = time.perf_counter() - started
