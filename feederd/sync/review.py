"""``feeder-sync review``: the owner confirms, corrects or excludes pulled samples.

Samples the owner already labelled on the device (a "not a bird" reply, a correction) train as
they are. The others - unsure frames (``low_margin``) and the device's pseudo-labels from
temporal flicker - wait here for a decision: accept the pseudo-label, give a label, exclude the
sample for good, or skip it for now. ``--accept-pseudo`` and ``--label ID=LABEL`` do the same
from scripts, and the review page (:mod:`feederd.sync.web`) from a browser: all three write
their decisions through :func:`decide`, one decision at a time, so each is saved at once.

Labels come from the known ones (the base dataset's, the models', those the owner already
gave): a typo must not silently become a new class, so a new label is taken only when it is
named explicitly (``--new-label``, a confirmation at the prompt or on the page).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from feederd.errors import SyncError
from feederd.sync.samples import LABEL, SampleIndex, training_label
from feederd.sync.train import FIELD_SUFFIX
from feederd.sync.workspace import Workspace

logger = logging.getLogger(__name__)

OWNER = "owner"
ACCEPTED = "accepted_pseudo"
EXCLUDED = "excluded"
SOURCES = (OWNER, ACCEPTED, EXCLUDED)
ACTIONS = ("label", "accept", "exclude", "restore")


@dataclass(frozen=True)
class Decision:
    """One decision about one sample.

    ``action``: ``label`` (give ``label``), ``accept`` (take the device's pseudo-label),
    ``exclude`` (never train on it) or ``restore`` (undo: put back ``source``/``label`` as
    they were, ``source`` None meaning undecided). ``sha256`` pins the exact pulled row.
    """

    sample_id: str
    action: str
    label: str | None = None
    sha256: str | None = None
    source: str | None = None


@dataclass
class ReviewResult:
    labelled: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    new_labels: list[str] = field(default_factory=list)
    remaining: int = 0
    # (id, sha256, source, label) as written, in order
    written: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"labelled": self.labelled, "accepted": self.accepted,
                "excluded": self.excluded, "new_labels": sorted(set(self.new_labels)),
                "remaining": self.remaining}


def known_labels(workspace: Workspace) -> list[str]:
    """Labels of the base dataset, of every model built here, and those the owner gave;
    not the ``<negative>_field`` classes training derives from the owner's negatives."""
    state = workspace.load_state()
    setup = state.get("init") or {}
    labels = set(setup.get("labels", []))
    for entry in state.get("models", {}).values():
        labels.update(entry.get("trained_on", {}))
    with contextlib.closing(workspace.index()) as index:
        labels.update(s["review_label"] for s in index.all()
                      if s.get("review_source") == OWNER and s.get("review_label"))
    derived = {f"{name}{FIELD_SUFFIX}" for name in setup.get("negative_labels") or []}
    return sorted(labels - derived)


def negative_label(workspace: Workspace) -> str:
    """The label "not a bird" stands for: the base dataset's first negative label."""
    negatives = (workspace.load_state().get("init") or {}).get("negative_labels") or ["other"]
    return str(negatives[0])


def is_pending(sample: Mapping[str, Any]) -> bool:
    """No training label yet and no decision of the owner."""
    return not sample.get("review_source") and training_label(sample) is None


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
    pseudo = f"; pseudo-label: {sample['label']}" if pseudo_label(sample) else ""
    reasons = ", ".join(sample.get("reasons") or []) or "-"
    return (f"sample {sample['id']} (visit {sample.get('visit_id') or '-'}): {reasons}\n"
            f"  device said {said}{conf}{margin_text}{pseudo}\n"
            f"  {workspace.dir / sample['file']}")


def pseudo_label(sample: Mapping[str, Any]) -> str | None:
    """The device's pseudo-label of a sample, if it has one."""
    label = sample.get("label")
    return str(label) if label and sample.get("label_source") == "pseudo" else None


# --- writing decisions ------------------------------------------------------------------------

def decide(workspace: Workspace, decisions: Iterable[Decision], *,
           new_labels: Collection[str] = (), record: bool = True) -> ReviewResult:
    """Check every decision, then save them in order; one bad decision (an unknown id or
    label, a pseudo-label that is not there) raises SyncError before anything is written.
    Labels outside :func:`known_labels` need ``new_labels``."""
    result = ReviewResult()
    known = set(known_labels(workspace))
    with workspace.lock(), contextlib.closing(workspace.index()) as index:
        checked = []
        for decision in decisions:
            sample = find(index, decision.sample_id, decision.sha256)
            source, label = _resolve(sample, decision)
            if source == OWNER and label not in known and label not in new_labels:
                raise SyncError(unknown_label_message(str(label), known))
            checked.append((sample, source, label))
        for sample, source, label in checked:
            _write(index, sample, source, label, known, result)
    result.remaining = len(pending(workspace))
    _log_new(result)
    if record:
        record_review(workspace, result)
    return result


def record_review(workspace: Workspace, result: ReviewResult, **details: Any) -> None:
    """One line in the workspace history for a review session."""
    workspace.record("review", labelled=len(result.labelled), accepted=len(result.accepted),
                     excluded=len(result.excluded), **details)


def _resolve(sample: Mapping[str, Any], decision: Decision) -> tuple[str | None, str | None]:
    """(source, label) to write for a decision about ``sample``."""
    if decision.action == "label":
        _check_label(decision.label or "")
        return OWNER, decision.label
    if decision.action == "exclude":
        return EXCLUDED, None
    if decision.action == "accept":
        label = pseudo_label(sample)
        if label is None:
            raise SyncError(f"sample {sample['id']} has no pseudo-label to accept; give it a "
                            "label instead")
        return ACCEPTED, label
    if decision.action == "restore":
        if decision.source is not None and decision.source not in SOURCES:
            raise SyncError(f"review source {decision.source!r} is not one of "
                            f"{', '.join(SOURCES)}")
        if decision.label is not None:
            _check_label(decision.label)
        return decision.source, decision.label
    raise SyncError(f"review action {decision.action!r} is not one of {', '.join(ACTIONS)}")


def _write(index: SampleIndex, sample: Mapping[str, Any], source: str | None,
           label: str | None, known: set[str], result: ReviewResult) -> None:
    index.set_review(sample["id"], sample["sha256"], label, source)
    result.written.append((sample["id"], sample["sha256"], source, label))
    bucket = {OWNER: result.labelled, ACCEPTED: result.accepted, EXCLUDED: result.excluded,
              None: result.restored}[source]
    bucket.append(sample["id"])
    if source == OWNER and label and label not in known:
        result.new_labels.append(label)
        known.add(label)


def find(index: SampleIndex, sample_id: str, sha256: str | None = None) -> dict[str, Any]:
    """A pulled sample by id (and content hash); SyncError naming the id if there is none."""
    sample = index.get(str(sample_id), sha256)
    if sample is None:
        raise SyncError(f"no pulled sample with id {sample_id}; 'feeder-sync review --list' "
                        "shows the ids")
    return sample


def unknown_label_message(label: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(label, sorted(known), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"label {label!r} is not a known label ({', '.join(sorted(known)) or 'none yet'});"
            f" {hint}to add it as a new class, name it with --new-label {label}")


def _check_label(label: str) -> None:
    if not LABEL.match(label):
        raise SyncError(f"label {label!r} is not a valid class name (letters, digits, "
                        "'_', '-', '.')")


def _log_new(result: ReviewResult) -> None:
    if result.new_labels:
        logger.warning("new label(s) %s: 'feeder-sync train --allow-new-class' will add them "
                       "as classes", ", ".join(sorted(set(result.new_labels))))


def apply(workspace: Workspace, *, labels: Mapping[str, str] | None = None,
          exclude: Iterable[str] = (), accept_pseudo: bool = False,
          new_labels: Collection[str] = ()) -> ReviewResult:
    """The non-interactive review: ``labels`` maps sample id -> label."""
    decisions = [Decision(str(i), "label", label) for i, label in (labels or {}).items()]
    decisions += [Decision(str(i), "exclude") for i in exclude]
    if accept_pseudo:
        decisions += [Decision(s["id"], "accept", sha256=s["sha256"])
                      for s in pending(workspace) if pseudo_label(s)]
    return decide(workspace, decisions, new_labels=new_labels)


# --- the terminal prompt ----------------------------------------------------------------------

QUIT = ("quit", None)
Answer = tuple[str, str | None] | None  # (source, label), QUIT, or None (skip)


def prompt(sample: Mapping[str, Any], negative: str) -> str:
    """The choices for one sample: ``[a]ccept`` only where there is a pseudo-label."""
    pseudo = pseudo_label(sample)
    accept = f"[a]ccept {pseudo}  " if pseudo else ""
    return (f"  {accept}[n]othing of interest ({negative})  [l]abel NAME  e[x]clude  [s]kip  "
            "[q]uit > ")


def interactive(workspace: Workspace, read: Callable[[str], str], out: IO[str]) -> ReviewResult:
    """Ask about each pending sample in turn; ``read`` is ``input`` on a terminal."""
    result = ReviewResult()
    negative = negative_label(workspace)
    known = set(known_labels(workspace))
    todo = pending(workspace)
    if todo:
        out.write("(tip: 'feeder-sync review --web' shows these samples as pictures)\n")
    with workspace.lock(), contextlib.closing(workspace.index()) as index:
        for number, sample in enumerate(todo, 1):
            out.write(f"[{number}/{len(todo)}] {describe(sample, workspace)}\n")
            decision = _ask(sample, read, out, negative, known)
            if decision == QUIT:
                break
            if decision is not None:
                _write(index, sample, decision[0], decision[1], known, result)
    result.remaining = len(pending(workspace))
    _log_new(result)
    record_review(workspace, result)
    return result


def _ask(sample: Mapping[str, Any], read: Callable[[str], str], out: IO[str],
         negative: str, known: set[str]) -> Answer:
    """One decision: (source, label), QUIT, or None (skip)."""
    while True:
        try:
            answer = read(prompt(sample, negative)).strip()
        except EOFError:
            return QUIT
        key, _, rest = answer.partition(" ")
        key, rest = key.lower(), rest.strip()
        if key in ("q", "quit"):
            return QUIT
        if key in ("s", "skip", ""):
            return None
        if key in ("x", "exclude"):
            return EXCLUDED, None
        if key in ("n", "nothing"):
            return OWNER, negative
        if key in ("a", "accept") and pseudo_label(sample):
            return ACCEPTED, pseudo_label(sample)
        if key in ("l", "label") and LABEL.match(rest):
            if rest in known or _confirm_new(rest, known, read, out):
                return OWNER, rest
            continue
        choices = "a, n, l NAME, x, s or q" if pseudo_label(sample) else "n, l NAME, x, s or q"
        out.write(f"  ? answer {choices}\n")


def _confirm_new(label: str, known: set[str], read: Callable[[str], str], out: IO[str]
                 ) -> bool:
    """A label nobody used yet: say so, suggest the closest known one, ask before taking it."""
    close = difflib.get_close_matches(label, sorted(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    out.write(f"  '{label}' is not a known label{hint}; known: {', '.join(sorted(known))}\n")
    try:
        answer = read(f"  add '{label}' as a new label? [y/N] ").strip().lower()
    except EOFError:
        return False
    return answer in ("y", "yes")
