"""``feeder-sync evaluate``: the candidate against the deployed model, and the promotion gate.

Three test sets, all unseen by the models compared:

- the held-out split of the base dataset (the same split ``init`` and ``train`` use), each
  photo rendered as the device sees it (see :mod:`feederd.sync.domain`): a confusion matrix
  (table and PNG) and per-class recall;
- the owner's own positives from the device (:func:`feederd.sync.dataset.device_positives`:
  replied ``correct``, corrected, and weak positives, unrejected alerts older than
  ``weak_positive_after_s``): per-species recall, graded out-of-fold for the candidate;
- field negatives: pulled samples the owner labelled as nothing of interest (``rejected``
  frames of false alerts), minus any the deployed model trained on, plus image folders given
  with ``--negatives``. The candidate's answers on the samples it trained on come from its
  out-of-fold heads (see :mod:`feederd.sync.head`), so it is not graded on what it memorised.

A *false alert* is a prediction of a label outside the model's ``negative_labels`` whose
probability reaches the device's ``visits.min_confidence`` (``alert_confidence`` in the
device's feeder-sync config). The gate promotes the candidate only if its false alerts on the
field negatives go down and no species' recall falls by more than ``tolerance`` on either
the held-out device frames or the device's own positives.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feederd.atomic import write_bytes, write_json
from feederd.bundle import Bundle, read_bundle
from feederd.errors import SyncError
from feederd.sync.config import TrainingConfig, ViewConfig
from feederd.sync.dataset import (
    BundleRunner,
    Item,
    VectorCache,
    device_positives,
    mined_items,
    progress_bar,
    scan_folder,
    scan_images,
    split,
)
from feederd.sync.domain import embedders, renderer, view_key
from feederd.sync.gate import gate
from feederd.sync.head import Head, head_path
from feederd.sync.plots import PAIR_PNG, confusion_pair_png, confusion_png
from feederd.sync.workspace import Workspace, safe_name

logger = logging.getLogger(__name__)


@dataclass
class Score:
    """One model on the evaluation sets."""

    version: str
    labels: list[str]
    negatives: list[str]
    confusion: dict[str, dict[str, int]]  # true label -> predicted label -> count
    recall: dict[str, float]
    accuracy: float
    field_total: int
    field_alerts: int
    extra_total: int
    extra_alerts: int
    alerts_by_label: dict[str, int] = field(default_factory=dict)
    # the pulled samples behind the false alerts on field negatives (id, sha256, said, prob)
    alert_samples: list[dict[str, Any]] = field(default_factory=list)
    device_confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    device_recall: dict[str, float] = field(default_factory=dict)
    device_weak: int = 0  # how many device positives are weak (alerts nobody rejected)

    @property
    def species(self) -> list[str]:
        return [name for name in self.recall if name not in self.negatives]

    @property
    def mean_species_recall(self) -> float | None:
        values = [self.recall[name] for name in self.species]
        return float(np.mean(values)) if values else None

    @property
    def false_alerts(self) -> int:
        return self.field_alerts + self.extra_alerts

    @property
    def negatives_total(self) -> int:
        return self.field_total + self.extra_total

    def as_dict(self) -> dict[str, Any]:
        msr = self.mean_species_recall
        return {"version": self.version, "labels": self.labels, "negative_labels": self.negatives,
                "accuracy": round(self.accuracy, 4), "recall": _rounded(self.recall),
                "mean_species_recall": None if msr is None else round(msr, 4),
                "false_alerts": self.false_alerts, "field_negatives": self.negatives_total,
                "false_alert_rate": round(self.false_alerts / self.negatives_total, 4)
                if self.negatives_total else None,
                "field": {"samples": self.field_total, "false_alerts": self.field_alerts},
                "extra": {"samples": self.extra_total, "false_alerts": self.extra_alerts},
                "false_alerts_by_label": self.alerts_by_label, "confusion": self.confusion,
                "false_alert_samples": self.alert_samples,
                "device": {"samples": sum(sum(r.values()) for r in
                                          self.device_confusion.values()),
                           "weak": self.device_weak, "recall": _rounded(self.device_recall),
                           "confusion": self.device_confusion}}


@dataclass
class Report:
    candidate: Score
    reference: Score | None
    passed: bool | None  # None: nothing to compare with
    reasons: list[str]
    path: Path
    tolerance: float

    @property
    def gate(self) -> str:
        return "n/a" if self.passed is None else "pass" if self.passed else "fail"

    def as_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate.as_dict(),
                "reference": self.reference.as_dict() if self.reference else None,
                "gate": self.gate, "reasons": self.reasons, "tolerance": self.tolerance,
                "report": str(self.path)}


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


# --- scoring ----------------------------------------------------------------------------------

@dataclass
class _Sets:
    holdout: list[Item]  # base photos: rendered as device frames
    field: list[Item]  # pulled negatives: device frames already
    extra: list[Item]  # photos that must not alert: rendered
    device: list[Item]  # pulled positives: device frames
    view: ViewConfig

    def groups(self) -> list[tuple[list[Item], bool]]:
        """(items, rendered) in scoring order."""
        return [(self.holdout, True), (self.field, False), (self.extra, True),
                (self.device, False)]


def evaluate(workspace: Workspace, *, alert_confidence: float, tolerance: float,
             noise_images: int = 1, candidate: str | None = None, reference: str | None = None,
             negatives_dirs: Sequence[Path] = (), threads: int = 2, batch_size: int = 16,
             progress: bool = False, view: ViewConfig | None = None,
             weak_after_s: float | None = None) -> Report:
    """Score the candidate (and the reference), decide the gate, write the report.

    ``view``: how the device sees a photo (default: the device's defaults); ``weak_after_s``:
    how old an unrejected alert's frame must be to count as a weak positive.
    """
    defaults = TrainingConfig.model_validate({})
    view = view or defaults.view
    weak_after_s = defaults.weak_positive_after_s if weak_after_s is None else weak_after_s
    state = workspace.require().load_state()
    cand_version = candidate or state.get("candidate")
    if not cand_version:
        raise SyncError("no candidate model yet; run 'feeder-sync train' first")
    ref_version = reference or state.get("deployed") or state.get("baseline")
    cand_bundle = _bundle(workspace, cand_version)
    ref_bundle = _bundle(workspace, ref_version) if ref_version and ref_version != \
        cand_version else None
    sets = _sets(workspace, state, cand_bundle, ref_bundle, negatives_dirs)
    sets.view = view
    species = [n for n in cand_bundle.labels if not cand_bundle.is_negative(n)]
    seen_by_ref = _trained_shas(workspace, ref_bundle)
    sets.device = [i for i in device_positives(workspace, species, alert_confidence,
                                               weak_after_s)
                   if (i.sample or {}).get("sha256") not in seen_by_ref]
    runner_args = (threads, batch_size, progress)
    cand = _score(workspace, cand_bundle, sets, alert_confidence, runner_args,
                  workspace.load_sidecar(cand_bundle.version).get("oof", {}))
    ref = _score(workspace, ref_bundle, sets, alert_confidence, runner_args, {}) \
        if ref_bundle else None
    passed, reasons = gate(cand, ref, tolerance, noise_images)
    report = Report(cand, ref, passed, reasons,
                    workspace.reports_dir / safe_name(cand.version), tolerance)
    _write_report(report)
    _remember(workspace, report)
    return report


def _bundle(workspace: Workspace, version: str) -> Bundle:
    path = workspace.model_path(version)
    if not path.exists():
        raise SyncError(f"no model '{version}' in {workspace.models_dir}; "
                        "'feeder-sync status' lists the models built here")
    return read_bundle(path)


def _sets(workspace: Workspace, state: dict[str, Any], cand: Bundle, ref: Bundle | None,
          negatives_dirs: Sequence[Path]) -> _Sets:
    setup = state.get("init") or {}
    if not setup:
        raise SyncError("workspace was never initialised; run 'feeder-sync init' first")
    holdout: list[Item] = []
    if setup.get("data"):  # a workspace started from a shipped bundle has no base photos
        _, holdout = split(scan_folder(Path(setup["data"])), float(setup["holdout"]),
                           int(setup["seed"]))
    negatives = set(cand.negative_labels) | (set(ref.negative_labels) if ref else set())
    seen_by_ref = _trained_shas(workspace, ref)
    field_items = [i for i in mined_items(workspace) if i.label in negatives
                   and (i.sample or {}).get("sha256") not in seen_by_ref]
    label = sorted(cand.negative_labels)[0] if cand.negative_labels else "other"
    extra = [item for folder in negatives_dirs for item in scan_images(folder, label)]
    return _Sets(holdout, field_items, extra, [], ViewConfig.model_validate({}))


def _trained_shas(workspace: Workspace, bundle: Bundle | None) -> set[str]:
    """The images a model built here trained on (none for other models)."""
    if bundle is None:
        return set()
    return set(workspace.load_sidecar(bundle.version).get("trained_shas", []))


SPOT_CHECK = 16
SPOT_TOLERANCE = 1e-3


def _score(workspace: Workspace, bundle: Bundle, sets: _Sets, confidence: float,
           runner_args: tuple[int, int, bool], oof: dict[str, list[float]]) -> Score:
    """Run ``bundle`` over the sets and count what it got right."""
    items = [*sets.holdout, *sets.field, *sets.extra, *sets.device]
    parts = [_probabilities(workspace, bundle, [i.path for i in group],
                            sets.view if rendered else None, runner_args)
             for group, rendered in sets.groups()]
    probs = np.concatenate([p.reshape(-1, len(bundle.labels)) for p, _ in parts])
    shas = [sha for _, part in parts for sha in part]
    for n, item in enumerate(items):
        if item.source == "mined" and shas[n] in oof:
            probs[n] = np.asarray(oof[shas[n]], np.float32)
    top = probs.argmax(axis=1) if len(items) else np.zeros(0, int)
    said = [bundle.labels[k] for k in top]
    alerts = [not bundle.is_negative(s) and float(probs[n, top[n]]) >= confidence
              for n, s in enumerate(said)]
    score = _tally(bundle, sets, said, alerts)
    held = len(sets.holdout)
    score.alert_samples = [
        {"id": item.sample["id"], "sha256": item.sample["sha256"], "said": said[held + n],
         "confidence": round(float(probs[held + n, top[held + n]]), 4)}
        for n, item in enumerate(sets.field) if alerts[held + n] and item.sample]
    return score


def _probabilities(workspace: Workspace, bundle: Bundle, paths: list[Path],
                   view: ViewConfig | None, runner_args: tuple[int, int, bool]
                   ) -> tuple[np.ndarray, list[str]]:
    """The bundle's probabilities for ``paths`` (cached by image hash), each image rendered
    as the device sees it when ``view`` is given.

    A bundle built here has its head saved beside it: its answers are the head applied to the
    cached backbone embeddings, checked against the real bundle on a few images (so a broken
    export cannot hide). Any other bundle runs in full.
    """
    threads, batch_size, progress = runner_args
    if not paths:
        return np.zeros((0, len(bundle.labels)), np.float32), []
    head = Head.load(head_path(workspace, bundle.version))
    setup = workspace.load_state().get("init") or {}
    view = view or ViewConfig(domain="photo")
    cache = VectorCache(workspace.cache_path)
    try:
        full = BundleRunner(bundle.path, cache, f"probs:{bundle.sha256}{view_key(view)}",
                            "probs", threads, batch_size, renderer(view))
        if head is not None and list(head.labels) == list(bundle.labels) and setup:
            embedder, _ = embedders(workspace, setup, view, cache, threads, batch_size)
            with progress_bar(len(paths), f"evaluate {bundle.version}", progress) as bar:
                x, shas = embedder.vectors(paths, bar)
            probs = head.probs(x) if len(paths) else np.zeros((0, len(bundle.labels)))
            spot, _ = full.vectors(paths[:SPOT_CHECK])
            if not len(spot) or np.abs(spot - probs[:len(spot)]).max() <= SPOT_TOLERANCE:
                return probs.astype(np.float32), shas
            logger.warning("%s: the bundle disagrees with its saved head; running it in full",
                           bundle.path)
        with progress_bar(len(paths), f"evaluate {bundle.version}", progress) as bar:
            return full.vectors(paths, bar)
    finally:
        cache.close()


def _tally(bundle: Bundle, sets: _Sets, said: list[str], alerts: list[bool]) -> Score:
    held, n_field, n_extra = len(sets.holdout), len(sets.field), len(sets.extra)
    negatives_end = held + n_field + n_extra
    truth = [i.label for i in sets.holdout]
    confusion = _confusion(truth, said[:held])
    accuracy = float(np.mean([t == p for t, p in zip(truth, said[:held], strict=True)])) \
        if held else 0.0
    field_alerts = alerts[held:held + n_field]
    extra_alerts = alerts[held + n_field:negatives_end]
    by_label: dict[str, int] = {}
    for s, a in zip(said[held:negatives_end], alerts[held:negatives_end], strict=True):
        if a:
            by_label[s] = by_label.get(s, 0) + 1
    device_confusion = _confusion([i.label for i in sets.device], said[negatives_end:])
    return Score(bundle.version, list(bundle.labels), sorted(bundle.negative_labels),
                 confusion, _recall(bundle, confusion), accuracy, n_field, sum(field_alerts),
                 n_extra, sum(extra_alerts), dict(sorted(by_label.items())),
                 device_confusion=device_confusion,
                 device_recall=_recall(bundle, device_confusion),
                 device_weak=sum(1 for i in sets.device if (i.sample or {}).get("weak")))


def _confusion(truth: Sequence[str], said: Sequence[str]) -> dict[str, dict[str, int]]:
    confusion: dict[str, dict[str, int]] = {}
    for t, p in zip(truth, said, strict=True):
        row = confusion.setdefault(t, {})
        row[p] = row.get(p, 0) + 1
    return confusion


def _recall(bundle: Bundle, confusion: dict[str, dict[str, int]]) -> dict[str, float]:
    return {name: row.get(name, 0) / sum(row.values()) for name, row in sorted(
        confusion.items(), key=lambda kv: _order(bundle, kv[0]))}


def _order(bundle: Bundle, label: str) -> tuple[int, str]:
    return (bundle.labels.index(label) if label in bundle.labels else len(bundle.labels), label)


# --- the report -------------------------------------------------------------------------------

def _write_report(report: Report) -> None:
    report.path.mkdir(parents=True, exist_ok=True)
    for score in filter(None, (report.candidate, report.reference)):
        confusion_png(score, report.path / f"confusion-{safe_name(score.version)}.png")
    panels = [("deployed", report.reference)] if report.reference else []
    confusion_pair_png([*panels, ("candidate", report.candidate)], report.path / PAIR_PNG)
    write_json(report.path / "report.json", report.as_dict())
    write_bytes(report.path / "report.md", markdown(report).encode("utf-8"))


def markdown(report: Report) -> str:
    """The report as markdown: summary, gate, recall table, confusion matrices."""
    cand, ref = report.candidate, report.reference
    lines = [f"# Evaluation of {cand.version}", ""]
    if ref:
        lines += [f"Against the deployed model {ref.version}.", ""]
    lines += [f"**Gate: {report.gate.upper()}**", ""] + [f"- {r}" for r in report.reasons]
    lines += ["", "| | " + " | ".join(s.version for s in filter(None, (ref, cand))) + " |",
              "|---|" + "---|" * (2 if ref else 1)]
    for title, value in _summary_rows(cand, ref):
        lines.append(f"| {title} | {value} |")
    lines += ["", f"![deployed and candidate]({PAIR_PNG})"]
    for score in filter(None, (ref, cand)):
        lines += ["", f"## Confusion matrix of {score.version} (rows: truth)", "",
                  confusion_table(score),
                  "", f"![confusion](confusion-{safe_name(score.version)}.png)"]
    return "\n".join(lines) + "\n"


def _summary_rows(cand: Score, ref: Score | None) -> list[tuple[str, str]]:
    scores = [s for s in (ref, cand) if s]

    def row(fn: Any) -> str:
        return " | ".join(fn(s) for s in scores)

    rows = [("held-out accuracy", row(lambda s: f"{s.accuracy:.1%}")),
            ("mean species recall", row(lambda s: _pct(s.mean_species_recall))),
            ("false alerts on field negatives",
             row(lambda s: f"{s.false_alerts} / {s.negatives_total}"))]
    for name in dict.fromkeys(name for s in scores for name in s.species):
        rows.append((f"recall {name}", row(lambda s, n=name: _pct(s.recall.get(n)))))
    for name in dict.fromkeys(n for s in scores for n in s.device_recall):
        total = sum(cand.device_confusion[name].values())
        rows.append((f"recall {name}, device positives ({total})",
                     row(lambda s, n=name: _pct(s.device_recall.get(n)))))
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def confusion_table(score: Score) -> str:
    """The confusion matrix as a fixed-width text table (also valid inside markdown)."""
    truth = list(score.confusion)
    predicted = [n for n in score.labels] + sorted(
        {p for row in score.confusion.values() for p in row} - set(score.labels))
    width = max(len(n) for n in [*truth, *predicted, "truth"]) + 1
    head = "truth".ljust(width) + "".join(p[:width - 1].rjust(width) for p in predicted)
    body = [t.ljust(width) + "".join(str(score.confusion[t].get(p, 0)).rjust(width)
                                      for p in predicted) for t in truth]
    return "```\n" + "\n".join([head, *body]) + "\n```"


def _remember(workspace: Workspace, report: Report) -> None:
    state = workspace.load_state()
    entry = state.setdefault("models", {}).setdefault(report.candidate.version, {})
    entry.update({"gate": report.gate, "against": report.reference.version
                  if report.reference else None,
                  "report": str(report.path.relative_to(workspace.dir)),
                  "evaluation": {k: v for k, v in report.as_dict()["candidate"].items()
                                 if k not in ("confusion", "false_alert_samples")}})
    workspace.save_state(state)
    workspace.record("evaluate", version=report.candidate.version, gate=report.gate)


def load_report(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, json.JSONDecodeError):
        data: dict[str, Any] = json.loads((path / "report.json").read_text(encoding="utf-8"))
        return data
    return {}
