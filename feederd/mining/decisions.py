"""Which frames are worth keeping, and why: pure decisions, no I/O.

Two moments decide. When a visit closes, :func:`mine_visit` looks at its frames alone:
``low_margin`` (the model hesitated between two classes) and the two temporal flickers of the
video hard-example mining idea (Jin et al., 2018), applied inside one visit:

- ``flicker_negative``: a species said confidently in a frame whose ``flicker_window``
  neighbours on *each* side all say nothing of interest. Such isolated detections are mostly
  false positives, so the frame gets a *pseudo* label: the negative class its neighbours say
  most often (``background``, ``squirrel``, ...). Being pseudo, it ranks below anything the
  owner labelled, feeder-sync can weight or review it, and a later reply overrides it.
- ``flicker_positive``: the converse; one frame says nothing while its neighbours on each side
  all agree on one species with mean confidence of at least ``flicker_confidence``: a hard
  positive, pseudo-labelled with that species.

Frames nearer the visit's ends than ``flicker_window`` are never flickers: a bird arriving or
leaving changes the answer there for real.

When the owner replies, :func:`mine_feedback` turns the visit's frames into user-labelled
samples (``rejected``, ``corrected``, ``confirmed``).

Both rank candidates with :func:`priority`, drop near-duplicates within the visit (perceptual
hash closer than ``dedup_distance`` bits) and keep at most ``max_per_visit``. Duplicates of
what the spool already holds are the spool's business (it knows what it holds). Hashing is the
costly part, so only frames that are looked at get hashed, and the optional ``hashes`` dict
(frame seq -> dHash) lets calls on the same visit share the work.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from feederd.config import MiningConfig
from feederd.mining.imagehash import dhash, hamming
from feederd.mqtt.feedback import Verdict
from feederd.types import ClassifiedFrame

Reason = Literal["low_margin", "rejected", "corrected", "confirmed", "flicker_negative",
                 "flicker_positive"]
LabelSource = Literal["user", "pseudo"]

FALSE_POSITIVE_REASONS: frozenset[str] = frozenset({"rejected", "flicker_negative"})
_TIER: dict[str | None, int] = {None: 0, "pseudo": 1, "user": 2}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A frame worth spooling, with every reason it was picked and the label it should teach."""

    frame: ClassifiedFrame
    reasons: tuple[Reason, ...]
    label: str | None
    label_source: LabelSource | None
    priority: float
    phash: int


_Found = tuple[ClassifiedFrame, tuple[Reason, ...], str | None, LabelSource | None]
"""A frame picked for some reasons, before ranking: (frame, reasons, label, label source)."""


def label_rank(label_source: str | None) -> int:
    """0 unlabelled, 1 pseudo-labelled, 2 labelled by the owner (unknown sources count as 0)."""
    return _TIER.get(label_source, 0)


def priority(reasons: Iterable[str], label_source: str | None, confidence: float,
             margin: float) -> float:
    """How much a sample should teach: higher is kept longer and exported first.

    The integer part is the label tier (owner 2 > pseudo 1 > none 0). Within a tier false
    positives (``rejected``, ``flicker_negative``) come first, the most confident first, since
    a confident mistake teaches the most; then the rest, the least sure (smallest margin) first.
    ``confidence`` is the predicted class's probability, ``margin`` top-1 minus top-2.
    """
    tier = label_rank(label_source)
    clamp = min(max(confidence, 0.0), 1.0)
    if FALSE_POSITIVE_REASONS.intersection(reasons):
        within = 0.5 + 0.499 * clamp
    else:
        within = 0.499 * (1.0 - min(max(margin, 0.0), 1.0))
    return tier + within


def mine_visit(frames: Sequence[ClassifiedFrame], cfg: MiningConfig,
               negative_labels: frozenset[str], *,
               hashes: dict[int, int] | None = None) -> list[Candidate]:
    """The hard examples of one closed visit, most useful first, diverse, at most
    ``cfg.max_per_visit``.

    ``negative_labels`` are the model's classes that mean "nothing of interest"; every other
    class counts as a species here (whether or not the owner alerts on it: a mistake between
    two species is still a mistake).
    """
    if not cfg.enabled:
        return []
    ordered = sorted(frames, key=lambda f: f.seq)
    found: list[_Found] = []
    for i, frame in enumerate(ordered):
        reasons, label = _visit_reasons(ordered, i, cfg, negative_labels)
        if reasons:
            source: LabelSource | None = "pseudo" if label is not None else None
            found.append((frame, tuple(reasons), label, source))
    return _select(found, cfg, hashes)


def mine_feedback(frames: Sequence[ClassifiedFrame], verdict: Verdict, label: str | None,
                  negative_label: str, cfg: MiningConfig, *,
                  hashes: dict[int, int] | None = None) -> list[Candidate]:
    """Owner-labelled samples from a visit the owner replied to (``cfg.enabled`` aside: the
    owner asked for it).

    - ``not_a_bird`` -> ``rejected``, labelled ``negative_label`` (e.g. ``other``): the frames
      that said a species of interest (the false alert), the most confident first.
    - ``species`` -> ``corrected``, labelled ``label``: the frames that said a species of
      interest (frames of the empty feeder are not that species).
    - ``correct`` -> ``confirmed``: the frames that said the alerted species, labelled with it.
      ``label`` names it when known, else it is the species most frames of interest said.

    When no frame was of interest, every frame is in scope.
    """
    if verdict == "species" and not label:
        raise ValueError("verdict 'species' needs the label the owner gave")
    if verdict not in ("not_a_bird", "species", "correct"):
        raise ValueError(f"unknown verdict {verdict!r}; expected not_a_bird, correct or species")
    if not frames:
        return []
    chosen, reason, target = _feedback_scope(frames, verdict, label, negative_label)
    found: list[_Found] = []
    for frame in chosen:
        reasons: tuple[Reason, ...] = (reason,)
        if frame.prediction.margin < cfg.low_margin:
            reasons += ("low_margin",)
        found.append((frame, reasons, target, "user"))
    return _select(found, cfg, hashes)


def feedback_frames(frames: Sequence[ClassifiedFrame], cfg: MiningConfig, *,
                    hashes: dict[int, int] | None = None) -> list[int]:
    """Seqs of the frames a later reply could turn into samples, whatever its verdict.

    :func:`mine_feedback` over just these frames gives the same samples as over all of them,
    so the recent-visit store can keep (and JPEG-encode) these few instead of every frame.
    """
    seqs: set[int] = set()
    hashes = {} if hashes is None else hashes  # shared by the three selections
    for verdict, label in (("not_a_bird", None), ("species", "?"), ("correct", None)):
        found = mine_feedback(frames, verdict, label, "?", cfg,  # type: ignore[arg-type]
                              hashes=hashes)
        seqs.update(c.frame.seq for c in found)
    return sorted(seqs)


def _visit_reasons(frames: Sequence[ClassifiedFrame], i: int, cfg: MiningConfig,
                   negative_labels: frozenset[str]) -> tuple[list[Reason], str | None]:
    """Reasons frame ``i`` is hard, and its pseudo label (``None``: unlabelled)."""
    pred = frames[i].prediction
    reasons: list[Reason] = []
    label = None
    if pred.margin < cfg.low_margin:
        reasons.append("low_margin")
    w = cfg.flicker_window
    if i < w or i + w >= len(frames):
        return reasons, label
    neighbours = [f.prediction for f in (*frames[i - w:i], *frames[i + 1:i + 1 + w])]
    is_species = pred.label not in negative_labels
    if is_species and pred.confidence >= cfg.flicker_confidence and all(
            n.label in negative_labels for n in neighbours):
        reasons.append("flicker_negative")
        label = Counter(n.label for n in neighbours).most_common(1)[0][0]
    elif not is_species and len({n.label for n in neighbours}) == 1 \
            and neighbours[0].label not in negative_labels \
            and sum(n.confidence for n in neighbours) / len(neighbours) >= cfg.flicker_confidence:
        reasons.append("flicker_positive")
        label = neighbours[0].label
    return reasons, label


def _feedback_scope(frames: Sequence[ClassifiedFrame], verdict: Verdict, label: str | None,
                    negative_label: str) -> tuple[list[ClassifiedFrame], Reason, str | None]:
    """The frames a reply labels, the reason, and the label it gives them."""
    scope = [f for f in frames if f.of_interest] or list(frames)
    if verdict == "not_a_bird":
        return scope, "rejected", negative_label
    if verdict == "species":
        return scope, "corrected", label
    target = label or _winner(scope)
    return [f for f in frames if f.prediction.label == target], "confirmed", target


def _winner(frames: Sequence[ClassifiedFrame]) -> str:
    """The label most frames said; ties go to the larger summed confidence."""
    votes: Counter[str] = Counter()
    mass: dict[str, float] = {}
    for frame in frames:
        votes[frame.prediction.label] += 1
        mass[frame.prediction.label] = mass.get(frame.prediction.label, 0.0) + \
            frame.prediction.confidence
    return max(votes, key=lambda name: (votes[name], mass[name]))


def _select(found: Sequence[_Found], cfg: MiningConfig,
            hashes: dict[int, int] | None = None) -> list[Candidate]:
    """Rank, drop near-duplicates of better candidates, cap; hashes only what is looked at."""
    ranked = sorted(
        ((priority(reasons, source, f.prediction.confidence, f.prediction.margin),
          f, reasons, label, source) for f, reasons, label, source in found),
        key=lambda item: (-item[0], item[1].seq),
    )
    kept: list[Candidate] = []
    for prio, frame, reasons, label, source in ranked:
        if len(kept) >= cfg.max_per_visit:
            break
        if frame.crop.size == 0:
            continue  # its picture is gone: nothing to store
        phash = hashes.get(frame.seq) if hashes is not None else None
        if phash is None:
            phash = dhash(frame.crop)
            if hashes is not None:
                hashes[frame.seq] = phash
        if any(hamming(phash, c.phash) < cfg.dedup_distance for c in kept):
            continue
        kept.append(Candidate(frame, reasons, label, source, prio, phash))
    return kept
