"""Mining purity on the shared feeder clips, measured against a table labelled by looking.

``clip_truth.csv`` holds, for every 4th frame of the 15 shared clips, the animal's box in the
frame (or ``empty``). A mined crop *contains the animal* when at least half of the animal's
box (at the nearest labelled frame) lies inside the crop square. Each reason claims
something checkable:

- ``flicker_negative``, ``empty_scene``: nothing of interest in the crop (the animal is not in
  it);
- every other visit reason (``disagreement``, ``missed_visit``, ``flicker_positive``,
  ``low_margin``): an animal is in the crop.

The purity of a reason is the share of its samples whose claim is true. Two samples of one
visit are near-duplicates when their crop squares overlap (IoU >= 0.5) and their 32x32 grey
thumbnails differ by less than ``DUPLICATE_GREY`` grey levels on average.

Used by ``tests/mining/test_purity.py`` and ``tools/bench/mining_purity_bench.py``.
"""

from __future__ import annotations

import csv
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from feederd.capture import open_source
from feederd.classifier import Classifier
from feederd.config import Settings, load_settings
from feederd.mining.decisions import Candidate, mine_visit
from feederd.motion import MotionDetector, VisitStateMachine
from feederd.pipeline import Pipeline
from feederd.task import generic_negative
from feederd.types import Alert, Box, ClassifiedFrame, VisitSummary
from feederd.visits import VisitTracker

TRUTH = Path(__file__).with_name("clip_truth.csv")
BLUE_JAY_CLIP = "bird_09_20_2023--11_38_20.mp4"
CONTAINS = 0.5  # share of the animal's box inside the crop
DUPLICATE_IOU = 0.5
DUPLICATE_GREY = 10.0
EMPTY_CLAIMS = frozenset({"flicker_negative", "empty_scene"})
ANIMAL_CLAIMS = frozenset({"disagreement", "missed_visit", "flicker_positive", "low_margin"})


def load_truth(path: Path = TRUTH) -> dict[str, dict[int, Box | None]]:
    """clip -> frame -> the animal's box (``None``: the feeder is empty)."""
    table: dict[str, dict[int, Box | None]] = {}
    with path.open(encoding="utf-8") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        for row in rows:
            box = None if row["truth"] == "empty" else \
                Box(int(row["x"]), int(row["y"]), int(row["w"]), int(row["h"]))
            table.setdefault(row["clip"], {})[int(row["frame"])] = box
    return table


def animal_at(truth: dict[int, Box | None], seq: int) -> Box | None:
    """The animal's box at the labelled frame nearest ``seq``."""
    nearest = min(truth, key=lambda frame: (abs(frame - seq), frame))
    return truth[nearest]


def contains_animal(crop: Box | None, animal: Box | None) -> bool:
    if animal is None:
        return False
    if crop is None:
        return True
    return crop.intersection(animal) >= CONTAINS * animal.area


@dataclass
class Visit:
    clip: str
    summary: VisitSummary
    frames: list[ClassifiedFrame]
    alerts: list[Alert] = field(default_factory=list)


class _Recorder:
    def __init__(self, clip: str) -> None:
        self.clip = clip
        self.visits: list[Visit] = []
        self.alerts: list[Alert] = []

    def on_classified(self, frame: ClassifiedFrame) -> None:
        return None

    def on_alert(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def on_visit_closed(self, summary: VisitSummary, frames: Sequence[ClassifiedFrame]) -> None:
        alerts = [a for a in self.alerts if a.event_id == summary.event_id]
        self.visits.append(Visit(self.clip, summary, list(frames), alerts))


def clip_settings(clip: Path, **sections: dict[str, Any]) -> Settings:
    """Default settings replaying ``clip`` as fast as possible (``sections`` override)."""
    base: dict[str, dict[str, Any]] = {"camera": {"source": str(clip), "realtime": False},
                                       "mqtt": {"enabled": False}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_settings(None, **base)


def replay(clip: Path, classifier: Classifier, settings: Settings) -> list[Visit]:
    """The device pipeline over one clip, in process; its closed visits."""
    recorder = _Recorder(clip.name)
    bundle = classifier.bundle
    tracker = VisitTracker(settings.visits, bundle.labels, bundle.negative_labels,
                           task=classifier.task)
    pipeline = Pipeline(MotionDetector(settings.motion), VisitStateMachine(settings.motion),
                        tracker, classifier, recorder, settings.classifier)
    source = open_source(settings.camera, settings.motion.height, None)
    try:
        while not source.finished:
            if (frame := source.read()) is not None:
                pipeline.process(frame)
        pipeline.close_visit(time.time())
    finally:
        source.close()
    return recorder.visits


def mine(visits: Iterable[Visit], classifier: Classifier,
         settings: Settings) -> list[tuple[Visit, Candidate]]:
    """What the collector would spool from these visits at close (no owner replies; an
    empty_scene allowed from every visit, as if none had been taken for a while)."""
    negatives = frozenset(classifier.bundle.negative_labels)
    label = generic_negative(negatives)
    return [(visit, cand) for visit in visits
            for cand in mine_visit(visit.frames, settings.mining, negatives,
                                   negative_label=label, alerted=visit.summary.alerted,
                                   empty_scene=True)]


def _thumbnail(crop: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    return cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def _iou(a: Box | None, b: Box | None) -> float:
    if a is None or b is None:
        return 1.0 if a == b else 0.0
    shared = a.intersection(b)
    return shared / float(a.area + b.area - shared)


def near_duplicates(mined: Sequence[tuple[Visit, Candidate]]) -> int:
    """Samples that are near-duplicates of an earlier sample of the same visit."""
    count = 0
    by_visit: dict[str, list[ClassifiedFrame]] = {}
    for visit, cand in sorted(mined, key=lambda vc: (vc[0].summary.event_id, vc[1].frame.seq)):
        earlier = by_visit.setdefault(visit.summary.event_id, [])
        frame = cand.frame
        if any(_iou(frame.crop_box, e.crop_box) >= DUPLICATE_IOU and float(np.mean(np.abs(
                _thumbnail(frame.crop) - _thumbnail(e.crop)))) < DUPLICATE_GREY
               for e in earlier):
            count += 1
        earlier.append(frame)
    return count


@dataclass
class Report:
    """The figures of one run: per reason (samples, true claims), crops, duplicates, visits."""

    reasons: dict[str, tuple[int, int]]
    samples: int
    with_animal: int
    animal_claims: int
    duplicates: int
    missed_visits: dict[str, int]
    alerts: dict[str, list[str]]
    classified: int

    def purity(self, reason: str) -> float | None:
        n, true = self.reasons.get(reason, (0, 0))
        return true / n if n else None

    @property
    def animal_share(self) -> float:
        return self.with_animal / self.animal_claims if self.animal_claims else 1.0

    @property
    def duplicate_share(self) -> float:
        return self.duplicates / self.samples if self.samples else 0.0

    def table(self) -> str:
        lines = [f"{'reason':<18}{'samples':>8}{'true':>6}{'purity':>8}"]
        for reason, (n, true) in sorted(self.reasons.items()):
            lines.append(f"{reason:<18}{n:>8}{true:>6}{true / n:>8.0%}")
        lines.append(f"classified frames {self.classified}, mined {self.samples}; crops with "
                     f"the animal {self.with_animal}/{self.animal_claims} "
                     f"({self.animal_share:.0%}); near-duplicates {self.duplicates} "
                     f"({self.duplicate_share:.0%})")
        lines.append(f"missed_visit samples per clip: {self.missed_visits}")
        lines.append(f"alerts per clip: {self.alerts}")
        return "\n".join(lines)


def score(visits: Sequence[Visit], mined: Sequence[tuple[Visit, Candidate]],
          truth: dict[str, dict[int, Box | None]]) -> Report:
    reasons: dict[str, list[int]] = {}
    with_animal = claims = 0
    missed: Counter[str] = Counter()
    for visit, cand in mined:
        inside = contains_animal(cand.frame.crop_box, animal_at(truth[visit.clip],
                                                                cand.frame.seq))
        for reason in cand.reasons:
            tally = reasons.setdefault(reason, [0, 0])
            tally[0] += 1
            tally[1] += (not inside) if reason in EMPTY_CLAIMS else inside
        if ANIMAL_CLAIMS.intersection(cand.reasons) and not EMPTY_CLAIMS.intersection(
                cand.reasons):
            claims += 1
            with_animal += inside
        if "missed_visit" in cand.reasons:
            missed[visit.clip] += 1
    alerts: dict[str, list[str]] = {}
    for visit in visits:
        alerts.setdefault(visit.clip, []).extend(a.label for a in visit.alerts)
    return Report({r: (n, t) for r, (n, t) in reasons.items()}, len(mined), with_animal,
                  claims, near_duplicates(mined), dict(missed), alerts,
                  sum(len(v.frames) for v in visits))
