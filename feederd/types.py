"""Small frozen values passed between stages.

Stages know nothing of each other; they exchange these plain values so that each stage can be
tested and benchmarked alone and ``daemon.py`` stays the only place that wires them.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box in full-resolution pixel coordinates."""

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        return self.w * self.h

    def union(self, other: Box | None) -> Box:
        """The smallest box holding both (``other=None``: this box)."""
        if other is None:
            return self
        x0, y0 = min(self.x, other.x), min(self.y, other.y)
        x1 = max(self.x + self.w, other.x + other.w)
        y1 = max(self.y + self.h, other.y + other.h)
        return Box(x0, y0, x1 - x0, y1 - y0)

    def intersection(self, other: Box) -> int:
        """Pixels the two boxes share."""
        w = min(self.x + self.w, other.x + other.w) - max(self.x, other.x)
        h = min(self.y + self.h, other.y + other.h) - max(self.y, other.y)
        return max(w, 0) * max(h, 0)


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame.

    ``mono`` is a monotonic clock in seconds used for every duration (for replayed files it is
    the media time, so a replay as fast as possible still forms the same visits); ``wall`` is
    Unix time for messages. ``grey`` is the small grey image motion works on: picamera2 gives
    its lores Y plane for free, other sources leave it ``None`` and the motion stage downscales
    once.
    """

    seq: int
    mono: float
    wall: float
    image: np.ndarray
    grey: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class MotionResult:
    """What the motion gate saw in one frame.

    ``area`` is the share of the frame that differs from the background; ``live`` the share
    that changed since the previous frame (a bird's ghost, the spot it just left, differs from
    the background for a while but does not change frame to frame).
    """

    moving: bool
    area: float
    box: Box | None
    live: float = 0.0


@dataclass(frozen=True, slots=True)
class Decision:
    """The task's answer for one frame (see :mod:`feederd.task`): a species of interest, or
    the bundle's generic negative label standing for every other class summed."""

    label: str
    confidence: float
    margin: float
    of_interest: bool


@dataclass(frozen=True, slots=True)
class Prediction:
    """One classification: the full probability vector plus what is derived from it.

    ``labels``/``scores`` are the raw top-k; ``decision`` is the task's (set by the classifier;
    ``None`` for predictions made without one, whose ``task_*`` fall back to the raw top-1).
    """

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    probs: np.ndarray
    embedding: np.ndarray | None = None
    decision: Decision | None = None

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def confidence(self) -> float:
        return self.scores[0]

    @property
    def margin(self) -> float:
        """Top-1 minus top-2 probability: small when the model is unsure."""
        return self.scores[0] - self.scores[1] if len(self.scores) > 1 else self.scores[0]

    @property
    def task_label(self) -> str:
        return self.decision.label if self.decision else self.label

    @property
    def task_confidence(self) -> float:
        return self.decision.confidence if self.decision else self.confidence

    @property
    def task_margin(self) -> float:
        """The decision's lead over the runner-up (a species, or all negatives summed)."""
        return self.decision.margin if self.decision else self.margin


@dataclass(frozen=True, slots=True)
class ClassifiedFrame:
    """A frame of a visit with its prediction; ``crop`` is the BGR image that was classified.

    The evidence mining weighs against the model, independent of it: ``crop_box``, the square
    that was classified (in frame pixels, may reach past the edges); ``motion_box``, the union
    of the motion boxes of the last few frames (``None``: nothing moved just now);
    ``motion_area``/``motion_live``, the largest share of the frame that differed from the
    background / changed frame to frame in those frames (:class:`MotionResult`); ``foreground``, the
    share of the crop that differs from the visit's empty-feeder reference (``None`` when the
    visit has no trustworthy reference).
    """

    visit_id: str
    seq: int
    mono: float
    wall: float
    prediction: Prediction
    box: Box | None
    crop: np.ndarray
    of_interest: bool
    crop_box: Box | None = None
    motion_box: Box | None = None
    motion_area: float = 0.0
    motion_live: float = 0.0
    foreground: float | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """A species of interest won the vote of a visit; raised once per visit."""

    event_id: str
    time: float
    label: str
    confidence: float
    margin: float
    frames: int
    model_version: str
    snapshot: np.ndarray | None = field(default=None, compare=False, repr=False)
    decided_mono: float = 0.0  # time.monotonic() when the frame loop decided (for latency)
    since_motion_s: float = 0.0  # frame-clock seconds from the visit's first motion frame
    display_name: str = ""  # the name people read ("Tufted Titmouse"); "" = use the label
    scientific_name: str | None = None  # "Baeolophus bicolor", where the model knows it


@dataclass(frozen=True, slots=True)
class VisitSummary:
    """Sent when a visit closes, alert or not."""

    event_id: str
    start: float
    end: float
    frames_seen: int
    frames_classified: int
    votes: dict[str, int]
    label: str | None
    alerted: bool
    model_version: str


_counter = itertools.count()
_counter_lock = threading.Lock()
_host_tag = f"{os.getpid() & 0xFFFF:04x}"


def new_event_id(now: float | None = None) -> str:
    """A time-sortable id unique on this device: UTC time to the millisecond, then a counter.

    The counter and process tag keep two visits in the same millisecond, or across a restart
    in the same millisecond, apart; lexical order is time order.
    """
    now = time.time() if now is None else now
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S.%f")[:-3]
    with _counter_lock:
        count = next(_counter) % 0x10000
    return f"{stamp}Z-{_host_tag}{count:04x}"
