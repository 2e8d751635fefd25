"""Visits: the classified frames of one motion episode, a vote over them, one alert at most.

A single frame is a poor witness (a squirrel's ear looks like a wing for a moment), so the
alert waits until a species of interest has won enough frames with enough confidence, and is
then raised at once, mid-visit, so the owner hears of the bird while it is still there.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from feederd.config import VisitsConfig
from feederd.types import Alert, Box, ClassifiedFrame, Frame, Prediction, VisitSummary, new_event_id

logger = logging.getLogger(__name__)


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
    alert: Alert | None = None
    best_score: float = -1.0
    best_image: np.ndarray | None = None
    model_version: str = ""


def labels_of_interest(cfg: VisitsConfig, labels: Collection[str],
                       negative_labels: Collection[str]) -> frozenset[str]:
    """The labels that can alert: ``visits.species`` if set, else every non-negative label."""
    wanted = set(cfg.species)
    return frozenset(wanted & set(labels) if wanted else set(labels) - set(negative_labels))


class VisitTracker:
    """Collects one visit at a time and decides whether (and when) it alerts."""

    def __init__(self, cfg: VisitsConfig, labels: Collection[str],
                 negative_labels: Collection[str]) -> None:
        self._cfg = cfg
        self._visit: _Visit | None = None
        self.set_labels(labels, negative_labels)

    def set_labels(self, labels: Collection[str], negative_labels: Collection[str]) -> None:
        """Adopt a new model's label set (called between frames when the model changes)."""
        unknown = set(self._cfg.species) - set(labels)
        if unknown:
            logger.warning("visits.species names labels the model does not have: %s",
                           ", ".join(sorted(unknown)))
        self._interest = labels_of_interest(self._cfg, labels, negative_labels)

    def is_of_interest(self, label: str) -> bool:
        return label in self._interest

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

    def see(self, box: Box | None) -> None:
        """Count a frame of the visit and remember where motion last was."""
        if self._visit is None:
            return
        self._visit.frames_seen += 1
        if box is not None:
            self._visit.last_box = box

    @property
    def last_box(self) -> Box | None:
        return self._visit.last_box if self._visit else None

    def due(self, mono: float) -> bool:
        """Whether this frame may be classified under ``classify_fps``."""
        visit = self._visit
        interval = 0.999 / self._cfg.classify_fps  # read each time: SIGHUP may change it
        return visit is not None and mono - visit.last_classified_mono >= interval

    def add(self, frame: Frame, prediction: Prediction, box: Box | None, crop: np.ndarray,
            model_version: str) -> tuple[ClassifiedFrame, Alert | None]:
        """Record a classified frame; return the alert if this frame decided the vote."""
        visit = self._visit
        if visit is None:
            raise RuntimeError("add() called outside a visit")
        visit.last_classified_mono = frame.mono
        visit.model_version = model_version
        of_interest = prediction.label in self._interest
        classified = ClassifiedFrame(visit.visit_id, frame.seq, frame.mono, frame.wall,
                                     prediction, box, crop, of_interest)
        visit.frames.append(classified)
        visit.votes[prediction.label] += 1
        visit.confidence_sum[prediction.label] += prediction.confidence
        if of_interest and prediction.confidence > visit.best_score:
            visit.best_score, visit.best_image = prediction.confidence, frame.image
        if visit.alert is None:
            visit.alert = self._decide(visit, frame, model_version)
            return classified, visit.alert
        return classified, None

    def _winner(self, visit: _Visit) -> str | None:
        species = [(n, label) for label, n in visit.votes.items() if label in self._interest]
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
        margins = [f.prediction.margin for f in visit.frames if f.prediction.label == label]
        return Alert(
            event_id=visit.visit_id, time=frame.wall, label=label,
            confidence=round(confidence, 4), margin=round(float(np.mean(margins)), 4),
            frames=votes, model_version=model_version, snapshot=visit.best_image,
            decided_mono=time.monotonic(),
            since_motion_s=round(frame.mono - visit.first_motion_mono, 3),
        )

    def close(self, end_wall: float) -> tuple[VisitSummary, list[ClassifiedFrame]] | None:
        """End the visit: its summary, and its frames for mining."""
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
