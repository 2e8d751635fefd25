"""Visits: the classified frames of one motion episode, a vote over them, one alert at most.

A single frame is a poor witness (a squirrel's ear looks like a wing for a moment), so the
alert waits until a species of interest has won enough frames with enough confidence, and is
then raised at once, mid-visit, so the owner hears of the bird while it is still there.
Frames vote with the task's decision (:mod:`feederd.task`: a local species, or the summed
negative), never with a raw class.

The tracker also chooses where to look: the last motion box, adopted only when the same place
moved in the previous frame too, so a one-frame change (a burned-in caption's glitch, a
compression artefact) never becomes the classification box.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Collection
from dataclasses import dataclass, field, replace

import numpy as np

from feederd.config import VisitsConfig
from feederd.mining.imagehash import hash_thumbnail
from feederd.task import Task, resolve_species
from feederd.types import (
    Alert,
    Box,
    ClassifiedFrame,
    Decision,
    Frame,
    Prediction,
    VisitSummary,
    new_event_id,
)

logger = logging.getLogger(__name__)

RECENT_FRAMES = 3
"""Frames whose motion a classified frame records: what moved just now, not a while ago (a
bird that has just flown off leaves motion behind that is no longer in the crop)."""


@dataclass
class _Visit:
    """Mutable state of the open visit; only the tracker touches it."""

    visit_id: str
    start_wall: float
    first_motion_mono: float
    frames: list[ClassifiedFrame] = field(default_factory=list)
    votes: Counter[str] = field(default_factory=Counter)
    confidence_sum: defaultdict[str, float] = field(
        default_factory=lambda: defaultdict(float))
    frames_seen: int = 0
    last_classified_mono: float = float("-inf")
    last_box: Box | None = None
    prev_motion: Box | None = None  # the previous frame's motion box
    # confirmed motion of the last RECENT_FRAMES frames: (box, changed share, live share)
    recent: deque[tuple[Box, float, float] | None] = field(
        default_factory=lambda: deque(maxlen=RECENT_FRAMES))
    alert: Alert | None = None
    best_score: float = -1.0
    best_image: np.ndarray | None = None
    model_version: str = ""


def labels_of_interest(cfg: VisitsConfig, labels: Collection[str],
                       negative_labels: Collection[str]) -> frozenset[str]:
    """The labels that can alert, matched by label only (a classifier's ``task.species``
    also matches common and scientific names: prefer it where there is a classifier)."""
    species = resolve_species(labels, {}, cfg.species, cfg.exclude_species)
    return frozenset(Task(labels, negative_labels, species=species).species)


class VisitTracker:
    """Collects one visit at a time and decides whether (and when) it alerts."""

    def __init__(self, cfg: VisitsConfig, labels: Collection[str],
                 negative_labels: Collection[str], *, task: Task | None = None) -> None:
        self._cfg = cfg
        self._visit: _Visit | None = None
        if task is not None:
            self.set_task(task)
        else:
            self.set_labels(labels, negative_labels)

    def set_task(self, task: Task) -> None:
        """Adopt a new model's task (its classifier's; called between visits)."""
        self._task = task

    def set_labels(self, labels: Collection[str], negative_labels: Collection[str]) -> None:
        """Adopt a label set without a classifier's task (labels only: no common names)."""
        species = resolve_species(labels, {}, self._cfg.species, self._cfg.exclude_species)
        self.set_task(Task(labels, negative_labels, species=species))

    def is_of_interest(self, label: str) -> bool:
        return self._task.is_species(label)

    @property
    def visit_id(self) -> str | None:
        return self._visit.visit_id if self._visit else None

    @property
    def active(self) -> bool:
        return self._visit is not None

    def open(self, frame: Frame, first_motion_mono: float) -> str:
        """Start a visit; a visit still open is closed first by the caller."""
        self._visit = _Visit(new_event_id(frame.wall), frame.wall, first_motion_mono)
        return self._visit.visit_id

    def see(self, box: Box | None, area: float = 0.0, live: float = 0.0) -> None:
        """Count a frame of the visit and remember where motion last was (if it persisted)."""
        visit = self._visit
        if visit is None:
            return
        visit.frames_seen += 1
        previous, visit.prev_motion = visit.prev_motion, box
        confirmed = box is not None and (
            visit.last_box is None or (previous is not None and box.intersection(previous) > 0))
        visit.recent.append((box, area, live) if confirmed and box is not None else None)
        if confirmed:
            visit.last_box = box

    @property
    def last_box(self) -> Box | None:
        return self._visit.last_box if self._visit else None

    def due(self, mono: float) -> bool:
        """Whether this frame may be classified under ``classify_fps``."""
        visit = self._visit
        interval = 0.999 / self._cfg.classify_fps  # read each time: SIGHUP may change it
        return visit is not None and mono - visit.last_classified_mono >= interval

    def add(self, frame: Frame, prediction: Prediction, box: Box | None, crop: np.ndarray,
            model_version: str, *, crop_box: Box | None = None,
            foreground: float | None = None) -> tuple[ClassifiedFrame, Alert | None]:
        """Record a classified frame; return the alert if this frame decided the vote."""
        visit = self._visit
        if visit is None:
            raise RuntimeError("add() called outside a visit")
        visit.last_classified_mono = frame.mono
        visit.model_version = model_version
        decision = self.decide(prediction)
        moved = [m for m in visit.recent if m is not None]
        motion_box = None
        for moved_box, _, _ in moved:
            motion_box = moved_box.union(motion_box)
        classified = ClassifiedFrame(
            visit.visit_id, frame.seq, frame.mono, frame.wall, prediction, box, crop,
            decision.of_interest, crop_box=crop_box, motion_box=motion_box,
            motion_area=max((m[1] for m in moved), default=0.0),
            motion_live=max((m[2] for m in moved), default=0.0), foreground=foreground)
        # The visit keeps only what mining at close hashes: the crops themselves (a megabyte
        # each at 1280x720) go to the byte-bounded recent-visit store, and a long visit
        # holding every raw crop would grow without bound (3 a second for up to max_visit_s).
        visit.frames.append(replace(classified, crop=hash_thumbnail(crop)))
        visit.votes[decision.label] += 1
        visit.confidence_sum[decision.label] += decision.confidence
        if decision.of_interest and decision.confidence > visit.best_score:
            visit.best_score, visit.best_image = decision.confidence, frame.image
        if visit.alert is None:
            visit.alert = self._decide(visit, frame, model_version)
            return classified, visit.alert
        return classified, None

    def decide(self, prediction: Prediction) -> Decision:
        """The classifier's decision, or this tracker's task's for a bare prediction."""
        return prediction.decision or self._task.decide(prediction.probs)

    def _winner(self, visit: _Visit) -> str | None:
        species = [(n, label) for label, n in visit.votes.items()
                   if self._task.is_species(label)]
        return max(species)[1] if species else None

    def _decide(self, visit: _Visit, frame: Frame, model_version: str) -> Alert | None:
        label = self._winner(visit)
        if label is None:
            return None
        votes = visit.votes[label]
        confidence = visit.confidence_sum[label] / votes
        share = votes / len(visit.frames)
        cfg = self._cfg
        if votes < cfg.min_frames or confidence < cfg.min_confidence or share < cfg.min_share:
            return None
        decisions = [self.decide(f.prediction) for f in visit.frames]
        margins = [d.margin for d in decisions if d.label == label]
        return Alert(
            event_id=visit.visit_id, time=frame.wall, label=label,
            confidence=round(confidence, 4), margin=round(float(np.mean(margins)), 4),
            frames=votes, model_version=model_version, snapshot=visit.best_image,
            decided_mono=time.monotonic(),
            since_motion_s=round(frame.mono - visit.first_motion_mono, 3),
        )

    def close(self, end_wall: float) -> tuple[VisitSummary, list[ClassifiedFrame]] | None:
        """End the visit: its summary, and its frames for mining (each ``crop`` reduced to its
        :func:`~feederd.mining.imagehash.hash_thumbnail`; the full crops went out with
        ``on_classified``)."""
        visit, self._visit = self._visit, None
        if visit is None:
            return None
        label = visit.alert.label if visit.alert else self._winner(visit)
        summary = VisitSummary(
            event_id=visit.visit_id, start=visit.start_wall, end=end_wall,
            frames_seen=visit.frames_seen, frames_classified=len(visit.frames),
            votes=dict(visit.votes), label=label, alerted=visit.alert is not None,
            model_version=visit.model_version,
        )
        return summary, visit.frames
