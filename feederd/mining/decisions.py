"""Which frames are worth keeping, and why: pure decisions, no I/O.

Every decision uses the task's answer per frame (:mod:`feederd.task`: the best species of
interest against the summed negatives), never the raw softmax, and weighs it against evidence
the model did not produce (:class:`~feederd.types.ClassifiedFrame`: the motion in the crop,
and how much of the crop differs from the visit's empty feeder). Per frame that evidence says
*empty* (no animal-sized motion there, the crop looks like the empty feeder), *object*
(animal-sized motion in the crop, or a crop clearly unlike the empty feeder) or nothing.

When a visit closes, :func:`mine_visit` looks at its frames alone:

- ``low_margin``: the decision's lead over its runner-up is small (the model hesitated
  between a species and "nothing", or between two species);
- ``flicker_negative``: the video hard-example mining idea (Jin et al., 2018) inside one
  visit, with evidence: a species said confidently in a frame whose ``flicker_window``
  neighbours on *each* side all say nothing *and* are empty by the evidence. It gets the
  bundle's generic negative label as a *pseudo* label (never a raw class such as "indri");
- ``disagreement``: the same isolated species, but an animal-sized object is there (in that
  frame or a neighbour): the neighbours may be the model's misses, so it is left unlabelled
  for the owner to review;
- ``flicker_positive``: one frame says nothing while its neighbours on each side all agree
  on one species with mean confidence of at least ``flicker_confidence``, and the frame is not
  empty by the evidence: a hard positive, pseudo-labelled with that species;
- ``missed_visit``: a visit that raised no alert although an animal-sized object was in at
  least ``missed_share`` of its classified frames: the model does not know this visitor, and
  these frames are the ones most worth the owner's look (unlabelled).
- ``empty_scene`` (when the caller allows one, see ``mining.empty_scene_interval_s``): a
  visit that raised no alert and in which the evidence never saw an object (motion with
  nothing of interest: a shadow, a lighting change, the empty feeder after a bird left): its
  empty frame nearest to a species, pseudo-labelled with the generic negative label. A cheap
  negative set nobody has to reply to: the camera, not the model, says the crop is empty.

Frames nearer the visit's ends than ``flicker_window`` are never flickers: a bird arriving or
leaving changes the answer there for real.

When the owner replies, :func:`mine_feedback` turns the visit's frames into user-labelled
samples (``rejected``, ``corrected``, ``confirmed``).

Both rank candidates with :func:`priority`, drop near-duplicates within the visit (embedding
cosine similarity of at least ``dedup_cosine`` where the bundle has an embedding, else dHash
closer than ``visit_dedup_distance`` bits), spread a visit's picks at least ``min_gap_s``
apart, and keep at most ``max_per_visit``. Duplicates of what the spool already holds are the
spool's business (it knows what it holds). Hashing is the costly part, so only frames that are
looked at get hashed, and the optional ``hashes`` dict (frame seq -> dHash) lets calls on the
same visit share the work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from feederd.config import MiningConfig
from feederd.mining.imagehash import dhash, hamming
from feederd.mqtt.feedback import Verdict
from feederd.task import DEFAULT_NEGATIVE
from feederd.types import ClassifiedFrame, Decision

Reason = Literal["low_margin", "rejected", "corrected", "confirmed", "flicker_negative",
                 "flicker_positive", "disagreement", "missed_visit", "empty_scene"]
LabelSource = Literal["user", "pseudo"]
Evidence = Literal["empty", "object", "unknown"]

FALSE_POSITIVE_REASONS: frozenset[str] = frozenset({"rejected", "flicker_negative"})
_TIER: dict[str | None, int] = {None: 0, "pseudo": 1, "user": 2}
_OBJECT_FOREGROUND = 3.0  # times empty_foreground: a crop that much unlike the empty feeder
_MISSED_MIN_FRAMES = 3
_IN_CROP = 0.3  # share of the motion box inside the crop for the motion to be in the crop


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


def decision(frame: ClassifiedFrame, negative_labels: frozenset[str]) -> Decision:
    """The frame's task decision; a bare prediction (no task) falls back to its raw top-1."""
    pred = frame.prediction
    if pred.decision is not None:
        return pred.decision
    return Decision(pred.label, pred.confidence, pred.margin, pred.label not in negative_labels)


def evidence(frame: ClassifiedFrame, cfg: MiningConfig) -> Evidence:
    """What the camera, not the model, says is in the frame's crop."""
    fg = frame.foreground
    if fg is not None and fg < cfg.empty_foreground:
        return "empty"
    if fg is not None and fg >= _OBJECT_FOREGROUND * cfg.empty_foreground:
        return "object"
    box, crop = frame.motion_box, frame.crop_box
    moved = box is not None and frame.motion_area >= cfg.animal_min_area and (
        crop is None or crop.intersection(box) >= _IN_CROP * box.area)
    return "object" if moved and frame.motion_live >= cfg.animal_min_area / 4 else "unknown"


def mine_visit(frames: Sequence[ClassifiedFrame], cfg: MiningConfig,
               negative_labels: frozenset[str], *, negative_label: str = DEFAULT_NEGATIVE,
               alerted: bool = False, hashes: dict[int, int] | None = None,
               empty_scene: bool = False) -> list[Candidate]:
    """The hard examples of one closed visit, most useful first, diverse, at most
    ``cfg.max_per_visit``.

    ``negative_labels`` and every frame's task decision say what means "nothing of interest";
    ``negative_label`` is the bundle's generic negative class that pseudo-labels use;
    ``alerted``: whether the visit raised an alert (a visit that did not may be missed);
    ``empty_scene``: whether an ``empty_scene`` sample may be taken (the caller rate-limits).
    """
    if not cfg.enabled:
        return []
    ordered = sorted(frames, key=lambda f: f.seq)
    decisions = [decision(f, negative_labels) for f in ordered]
    seen = [evidence(f, cfg) for f in ordered]
    missed = not alerted and _is_missed(seen, cfg)
    found: list[_Found] = []
    for i, frame in enumerate(ordered):
        reasons, label = _visit_reasons(decisions, seen, i, cfg, negative_label)
        if missed and seen[i] == "object":
            reasons.append("missed_visit")
        if reasons:
            source: LabelSource | None = "pseudo" if label is not None else None
            found.append((frame, tuple(reasons), label, source))
    if empty_scene and not alerted and not any(f[2] for f in found):
        found += _empty_scene(ordered, decisions, seen, negative_label)
    return _select(found, cfg, hashes, spread=True)


def _empty_scene(frames: Sequence[ClassifiedFrame], decisions: Sequence[Decision],
                 seen: Sequence[Evidence], negative_label: str) -> list[_Found]:
    """The ``empty_scene`` pick of an unalerted visit: none if the evidence saw an object
    anywhere in it, else its empty frame whose best species came nearest to alerting."""
    if "object" in seen:
        return []
    empty = [n for n, e in enumerate(seen) if e == "empty"]
    if not empty:
        return []
    best = max(empty, key=lambda n: _species_score(decisions[n]))
    return [(frames[best], ("empty_scene",), negative_label, "pseudo")]


def _species_score(d: Decision) -> float:
    """How near a decision came to a species: its confidence when it is one, else the
    runner-up's (the best species against the summed negatives)."""
    return d.confidence if d.of_interest else d.confidence - d.margin


def _is_missed(seen: Sequence[Evidence], cfg: MiningConfig) -> bool:
    """Sustained animal-sized evidence through a visit (that raised no alert): enough object
    frames, and a share of the frames with any evidence (a visit kept open by an empty
    feeder's noise has frames without any)."""
    objects = sum(e == "object" for e in seen)
    known = objects + sum(e == "empty" for e in seen)
    return objects >= _MISSED_MIN_FRAMES and objects >= cfg.missed_share * known


def _visit_reasons(decisions: Sequence[Decision], seen: Sequence[Evidence], i: int,
                   cfg: MiningConfig, negative_label: str) -> tuple[list[Reason], str | None]:
    """Reasons frame ``i`` is hard, and its pseudo label (``None``: unlabelled)."""
    here = decisions[i]
    reasons: list[Reason] = []
    if here.margin < cfg.low_margin:
        reasons.append("low_margin")
    w = cfg.flicker_window
    if i < w or i + w >= len(decisions):
        return reasons, None
    around = [*range(i - w, i), *range(i + 1, i + 1 + w)]
    neighbours = [decisions[j] for j in around]
    if here.of_interest and here.confidence >= cfg.flicker_confidence and not any(
            n.of_interest for n in neighbours):
        if seen[i] != "object" and all(seen[j] == "empty" for j in around):
            reasons.append("flicker_negative")
            return reasons, negative_label
        if "object" in (seen[i], *(seen[j] for j in around)):
            reasons.append("disagreement")
        return reasons, None
    species = {n.label for n in neighbours}
    if not here.of_interest and len(species) == 1 and neighbours[0].of_interest \
            and seen[i] != "empty" \
            and sum(n.confidence for n in neighbours) / len(neighbours) >= cfg.flicker_confidence:
        reasons.append("flicker_positive")
        return reasons, neighbours[0].label
    return reasons, None


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
        if frame.prediction.task_margin < cfg.low_margin:
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


def _feedback_scope(frames: Sequence[ClassifiedFrame], verdict: Verdict, label: str | None,
                    negative_label: str) -> tuple[list[ClassifiedFrame], Reason, str | None]:
    """The frames a reply labels, the reason, and the label it gives them."""
    scope = [f for f in frames if f.of_interest] or list(frames)
    if verdict == "not_a_bird":
        return scope, "rejected", negative_label
    if verdict == "species":
        return scope, "corrected", label
    target = label or _winner(scope)
    return [f for f in frames if f.prediction.task_label == target], "confirmed", target


def _winner(frames: Sequence[ClassifiedFrame]) -> str:
    """The label most frames said; ties go to the larger summed confidence."""
    votes: dict[str, tuple[int, float]] = {}
    for frame in frames:
        n, mass = votes.get(frame.prediction.task_label, (0, 0.0))
        votes[frame.prediction.task_label] = (n + 1, mass + frame.prediction.task_confidence)
    return max(votes, key=lambda name: votes[name])


def _select(found: Sequence[_Found], cfg: MiningConfig, hashes: dict[int, int] | None = None,
            *, spread: bool = False) -> list[Candidate]:
    """Rank, drop near-duplicates of better candidates (and, with ``spread``, picks within
    ``min_gap_s`` of a better one), cap; hashes only what is looked at."""
    ranked = sorted(
        ((priority(reasons, source, f.prediction.task_confidence, f.prediction.task_margin),
          f, reasons, label, source) for f, reasons, label, source in found),
        key=lambda item: (-item[0], item[1].seq),
    )
    kept: list[Candidate] = []
    for prio, frame, reasons, label, source in ranked:
        if len(kept) >= cfg.max_per_visit:
            break
        if frame.crop.size == 0:
            continue  # its picture is gone: nothing to store
        if spread and any(abs(frame.mono - c.frame.mono) < cfg.min_gap_s for c in kept):
            continue
        phash = _hash(frame, hashes)
        if any(_near_duplicates(frame, phash, c, cfg) for c in kept):
            continue
        kept.append(Candidate(frame, reasons, label, source, prio, phash))
    return kept


def _hash(frame: ClassifiedFrame, hashes: dict[int, int] | None) -> int:
    phash = hashes.get(frame.seq) if hashes is not None else None
    if phash is None:
        phash = dhash(frame.crop)
        if hashes is not None:
            hashes[frame.seq] = phash
    return phash


def _near_duplicates(frame: ClassifiedFrame, phash: int, kept: Candidate,
                     cfg: MiningConfig) -> bool:
    """Embeddings where both frames have one (what the model sees), else dHash."""
    a, b = frame.prediction.embedding, kept.frame.prediction.embedding
    if a is not None and b is not None and a.shape == b.shape:
        return cosine(a, b) >= cfg.dedup_cosine
    return hamming(phash, kept.phash) < cfg.visit_dedup_distance


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (0 when either is all zeros)."""
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / norm if norm > 0 else 0.0
