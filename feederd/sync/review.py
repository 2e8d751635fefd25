"""``feeder-sync review``: the owner confirms, corrects or excludes pulled samples.

Samples the owner already labelled on the device (a "not a bird" reply, a correction) train as
they are. The others - unsure frames (``low_margin``) and the device's pseudo-labels from
temporal flicker - wait here for a decision: accept the pseudo-label, give a label, exclude the
sample for good, or skip it for now. ``--accept-pseudo`` and ``--label ID=LABEL`` do the same
from scripts.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from feederd.errors import SyncError
from feederd.sync.workspace import Workspace, training_label

logger = logging.getLogger(__name__)

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
OWNER = "owner"
ACCEPTED = "accepted_pseudo"
EXCLUDED = "excluded"


@dataclass
class ReviewResult:
    labelled: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    new_labels: list[str] = field(default_factory=list)
    remaining: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"labelled": self.labelled, "accepted": self.accepted,
                "excluded": self.excluded, "new_labels": sorted(set(self.new_labels)),
                "remaining": self.remaining}


def known_labels(workspace: Workspace) -> list[str]:
    """Labels of the base dataset and of every model built here."""
    state = workspace.load_state()
    labels = set((state.get("init") or {}).get("labels", []))
    for entry in state.get("models", {}).values():
        labels.update(entry.get("trained_on", {}))
    return sorted(labels)


def pending(workspace: Workspace, use_pseudo: bool = False) -> list[dict[str, Any]]:
    """Samples without a training label that the owner has not decided on yet."""
    with contextlib.closing(workspace.index()) as index:
        return [s for s in index.all()
                if not s.get("review_source") and training_label(s, use_pseudo) is None]


def describe(sample: Mapping[str, Any], workspace: Workspace) -> str:
    """Two lines about a sample, for the list and the prompt."""
    probs = sample.get("probs") or {}
    said = sample.get("predicted") or "?"
    confidence = probs.get(said) if isinstance(probs, dict) else None
    conf = f" {confidence:.2f}" if isinstance(confidence, int | float) else ""
    margin = sample.get("margin")
    margin_text = f", margin {margin:.2f}" if isinstance(margin, int | float) else ""
    pseudo = f"; pseudo-label: {sample['label']}" if sample.get("label") else ""
    reasons = ", ".join(sample.get("reasons") or []) or "-"
    return (f"sample {sample['id']} (visit {sample.get('visit_id') or '-'}): {reasons}\n"
            f"  device said {said}{conf}{margin_text}{pseudo}\n"
            f"  {workspace.dir / sample['file']}")


def apply(workspace: Workspace, *, labels: Mapping[str, str] | None = None,
          exclude: Iterable[str] = (), accept_pseudo: bool = False) -> ReviewResult:
    """The non-interactive review: ``labels`` maps sample id -> label."""
    result = ReviewResult()
    known = set(known_labels(workspace))
    with workspace.lock(), contextlib.closing(workspace.index()) as index:
        for sample_id, label in (labels or {}).items():
            sample = _find(index, sample_id)
            _check_label(label)
            index.set_review(sample["id"], sample["sha256"], label, OWNER)
            result.labelled.append(sample["id"])
            if label not in known:
                result.new_labels.append(label)
        for sample_id in exclude:
            sample = _find(index, sample_id)
            index.set_review(sample["id"], sample["sha256"], None, EXCLUDED)
            result.excluded.append(sample["id"])
        if accept_pseudo:
            for sample in index.all():
                if not sample.get("review_source") and sample.get("label_source") == "pseudo" \
                        and sample.get("label"):
                    index.set_review(sample["id"], sample["sha256"], sample["label"], ACCEPTED)
                    result.accepted.append(sample["id"])
    result.remaining = len(pending(workspace))
    _log_new(result)
    workspace.record("review", labelled=len(result.labelled), accepted=len(result.accepted),
                     excluded=len(result.excluded))
    return result


def _find(index: Any, sample_id: str) -> dict[str, Any]:
    sample: dict[str, Any] | None = index.get(str(sample_id))
    if sample is None:
        raise SyncError(f"no pulled sample with id {sample_id}; 'feeder-sync review --list' "
                        "shows the ids")
    return sample


def _check_label(label: str) -> None:
    if not LABEL.match(label):
        raise SyncError(f"label {label!r} is not a valid class name (letters, digits, "
                        "'_', '-', '.')")


def _log_new(result: ReviewResult) -> None:
    if result.new_labels:
        logger.warning("new label(s) %s: 'feeder-sync train --allow-new-class' will add them "
                       "as classes", ", ".join(sorted(set(result.new_labels))))


PROMPT = ("  [a]ccept pseudo-label  [n]othing of interest ({negative})  [l]abel NAME  "
          "e[x]clude  [s]kip  [q]uit > ")


def interactive(workspace: Workspace, read: Callable[[str], str], out: IO[str]) -> ReviewResult:
    """Ask about each pending sample in turn; ``read`` is ``input`` on a terminal."""
    result = ReviewResult()
    state = workspace.load_state()
    negatives = (state.get("init") or {}).get("negative_labels") or ["other"]
    known = set(known_labels(workspace))
    todo = pending(workspace)
    with workspace.lock(), contextlib.closing(workspace.index()) as index:
        for number, sample in enumerate(todo, 1):
            out.write(f"[{number}/{len(todo)}] {describe(sample, workspace)}\n")
            decision = _ask(sample, read, out, negatives[0])
            if decision == QUIT:
                break
            if decision is None:
                continue
            source, label = decision
            index.set_review(sample["id"], sample["sha256"], label, source)
            bucket = {OWNER: result.labelled, ACCEPTED: result.accepted,
                      EXCLUDED: result.excluded}[source]
            bucket.append(sample["id"])
            if label and label not in known:
                result.new_labels.append(label)
    result.remaining = len(pending(workspace))
    _log_new(result)
    workspace.record("review", labelled=len(result.labelled), accepted=len(result.accepted),
                     excluded=len(result.excluded))
    return result


QUIT = ("quit", None)


def _ask(sample: Mapping[str, Any], read: Callable[[str], str], out: IO[str],
         negative: str) -> tuple[str, str | None] | None:
    """One decision: (source, label), QUIT, or None (skip)."""
    while True:
        try:
            answer = read(PROMPT.format(negative=negative)).strip()
        except EOFError:
            return QUIT
        key, _, rest = answer.partition(" ")
        key = key.lower()
        if key in ("q", "quit"):
            return QUIT
        if key in ("s", "skip", ""):
            return None
        if key in ("x", "exclude"):
            return EXCLUDED, None
        if key in ("n", "nothing"):
            return OWNER, negative
        if key in ("a", "accept") and sample.get("label"):
            return ACCEPTED, str(sample["label"])
        if key in ("l", "label") and LABEL.match(rest.strip()):
            return OWNER, rest.strip()
        out.write("  ? answer a, n, l NAME, x, s or q (a needs a pseudo-label)\n")
