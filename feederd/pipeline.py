"""The frame loop's body: one call per stage, nothing slow.

camera frame -> motion gate -> visit state -> (rate-limited) classifier -> visit vote -> events.
Everything that touches disk or network happens behind :class:`feederd.events.EventQueue`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from feederd.classifier import Classifier, crop_square
from feederd.config import ClassifierConfig
from feederd.events import PipelineEvents
from feederd.mining.evidence import EmptyReference
from feederd.motion import MotionDetector, VisitStateMachine
from feederd.types import Alert, Box, Frame
from feederd.visits import VisitTracker

logger = logging.getLogger(__name__)


@dataclass
class PipelineCounters:
    """Published in ``stats``; plain ints so reading them from another thread is safe."""

    frames: int = 0
    motion_frames: int = 0
    classified: int = 0
    visits: int = 0
    alerts: int = 0
    model_swaps: int = 0
    model_faults: int = 0  # frames whose probabilities were not finite (skipped)


class Pipeline:
    """Runs one frame through the stages and reports what happened to ``events``."""

    def __init__(self, detector: MotionDetector, gate: VisitStateMachine, tracker: VisitTracker,
                 classifier: Classifier, events: PipelineEvents, cfg: ClassifierConfig) -> None:
        self._detector = detector
        self._gate = gate
        self._tracker = tracker
        self._classifier = classifier
        tracker.set_task(classifier.task)  # one task per model: the classifier's
        self._pending: Classifier | None = None
        self._events = events
        self._cfg = cfg
        self._reference: EmptyReference | None = None
        self.counters = PipelineCounters()
        self.faults = 0  # model faults of the classifier now serving

    @property
    def classifier(self) -> Classifier:
        return self._classifier

    def swap_classifier(self, classifier: Classifier) -> None:
        """Adopt a new model at the next frame outside a visit (a visit keeps one model)."""
        self._pending = classifier

    def process(self, frame: Frame) -> None:
        self.counters.frames += 1
        if self._pending is not None and not self._tracker.active:
            self._adopt_pending()
        motion = self._detector.detect(frame)
        self.counters.motion_frames += motion.moving
        transition = self._gate.update(frame.mono, motion.moving)
        if transition == "open":
            self._open(frame)
        if self._tracker.active:
            self._tracker.see(motion.box, motion.area, motion.live)
            if self._tracker.due(frame.mono):
                self._classify(frame)
        if transition == "close":
            self._close(frame.wall)

    def _open(self, frame: Frame) -> None:
        if self._tracker.active:
            self._close(frame.wall)
        first = self._gate.first_motion_mono
        self._tracker.open(frame, frame.mono if first is None else first)
        detector = self._detector
        self._reference = EmptyReference.at_visit_open(
            detector.background(), detector.quiet_before, detector.threshold)
        self.counters.visits += 1

    def _classify(self, frame: Frame) -> None:
        box = self._tracker.last_box if self._cfg.crop == "motion" else None
        height, width = frame.image.shape[:2]
        min_side = round(self._cfg.min_crop_side * min(height, width))
        prediction, crop = self._classifier.classify(
            frame.image, box, self._cfg.crop_expand, self._cfg.top_k, min_side)
        if not np.isfinite(prediction.probs).all():
            self._model_fault()
            return
        self.counters.classified += 1
        square = Box(0, 0, width, height) if box is None else \
            crop_square(box, self._cfg.crop_expand, width, height, min_side)
        foreground = None if self._reference is None else \
            self._reference.foreground(self._detector.grey, square, width, height)
        version = self._classifier.bundle.version
        classified, alert = self._tracker.add(frame, prediction, box, crop, version,
                                              crop_box=square, foreground=foreground)
        self._events.on_classified(classified)
        if alert is not None:
            alert = self._named(alert)
            self.counters.alerts += 1
            logger.info("alert %s: %s (%.2f, %d frames)", alert.event_id, alert.label,
                        alert.confidence, alert.frames)
            self._events.on_alert(alert)

    def _named(self, alert: Alert) -> Alert:
        """The alert with the names people read, from the bundle (once per visit)."""
        bundle = self._classifier.bundle
        return replace(alert, display_name=bundle.display_name(alert.label),
                       scientific_name=bundle.scientific_name(alert.label))

    def close_visit(self, wall: float) -> None:
        """Close the open visit at the end of a replay or on shutdown."""
        self._gate.end()
        self._close(wall)

    def _close(self, wall: float) -> None:
        closed = self._tracker.close(wall)
        if closed is not None:
            summary, frames = closed
            logger.debug("visit %s closed: %s", summary.event_id, summary.votes)
            self._events.on_visit_closed(summary, frames)

    def _model_fault(self) -> None:
        """NaN or infinity from the model: not a prediction; the daemon rolls back after a few."""
        self.counters.model_faults += 1
        self.faults += 1
        if self.faults == 1:
            logger.error("model %s gave non-finite probabilities; frame skipped (a model "
                         "fault)", self._classifier.bundle.version)

    def _adopt_pending(self) -> None:
        new, self._pending = self._pending, None
        assert new is not None
        self._classifier = new
        self.faults = 0
        self._tracker.set_task(new.task)
        self.counters.model_swaps += 1
        logger.info("now classifying with model %s", new.bundle.version)
