"""The collector remembers recent alerts for replies, and nothing of them a reply does not need."""

from __future__ import annotations

import dataclasses
import gc
import time
import weakref
from pathlib import Path

import cv2
import numpy as np

from feederd.assets import demo_model_path
from feederd.bundle import read_bundle
from feederd.config import MiningConfig, SpoolConfig
from feederd.mining.collector import Collector
from feederd.mining.recent import RecentVisits
from feederd.mqtt.feedback import LATEST, Feedback
from feederd.spool import Spool
from feederd.types import Alert, ClassifiedFrame, Prediction, VisitSummary, new_event_id


def collector() -> Collector:
    recent = RecentVisits(2**20, 3600.0, 90)
    return Collector(MiningConfig(), recent, None, read_bundle(demo_model_path()))


def alert(snapshot: np.ndarray | None = None, label: str = "cardinal") -> Alert:
    now = time.time()
    return Alert(new_event_id(now), now, label, 0.9, 0.5, 6, "demo-1", snapshot=snapshot)


def test_an_alerts_full_resolution_snapshot_is_not_kept_once_handled(tmp_path: Path) -> None:
    kept = collector()
    snapshot = np.zeros((720, 1280, 3), np.uint8)
    watch = weakref.ref(snapshot)
    raised = alert(snapshot)
    kept.on_alert(raised)
    del snapshot, raised
    gc.collect()
    assert watch() is None, "the collector still holds the 2.7 MB frame"


def test_recent_alerts_are_bounded_and_the_newest_stay() -> None:
    kept = collector()
    raised = [alert() for _ in range(2500)]
    for one in raised:
        kept.on_alert(one)
    assert kept._resolve(raised[-1].event_id) == raised[-1].event_id
    assert kept._resolve(LATEST) == raised[-1].event_id
    assert len(kept._alerts) <= 2000


# --- a reply while the visit is still open ----------------------------------------------------

def visit_frame(visit: str, seq: int) -> ClassifiedFrame:
    """A frame saying "cardinal", its picture distinct per seq (dHash and embedding tell)."""
    rng = np.random.default_rng(seq)
    picture = cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (64, 64),
                         interpolation=cv2.INTER_CUBIC)
    embedding = np.eye(16, dtype=np.float32)[seq % 16]
    pred = Prediction(("cardinal", "other"), (0.8, 0.2),
                      np.array([0.0, 0.8, 0.0, 0.2], np.float32), embedding)
    return ClassifiedFrame(visit, seq, seq * 1.5, 1000.0 + seq * 1.5, pred, None, picture, True)


def test_a_reply_during_the_visit_labels_the_frames_that_come_after_it_too(
        tmp_path: Path) -> None:
    bundle = read_bundle(demo_model_path())
    with Spool(tmp_path / "spool", SpoolConfig(commit_interval_s=0)) as spool:
        kept = Collector(MiningConfig(), RecentVisits(2**22, 3600.0, 90), spool, bundle)
        frames = [visit_frame("v1", seq) for seq in range(6)]
        for one in frames[:2]:
            kept.on_classified(one)
        now = time.time()
        kept.on_alert(Alert("v1", now, "cardinal", 0.8, 0.6, 2, bundle.version))
        kept.handle(Feedback("v1", "not_a_bird", None, now))  # the squirrel is still there
        for one in frames[2:]:
            kept.on_classified(one)
        summary = VisitSummary("v1", now, now + 9, 6, 6, {"cardinal": 6}, "cardinal", True,
                               bundle.version)
        kept.on_visit_closed(summary, frames)
        spool.flush()
        samples = spool.ls()
    assert sorted(s.frame_seq for s in samples) == list(range(6))
    assert {(s.label, s.label_source) for s in samples} == {("other", "user")}
    assert all("rejected" in s.reasons for s in samples)


# --- empty scenes -----------------------------------------------------------------------------

def empty_frame(visit: str, seq: int) -> ClassifiedFrame:
    """A frame of the empty feeder: the model says "other", the crop is the empty feeder."""
    frame = visit_frame(visit, seq)
    pred = Prediction(("other", "cardinal"), (0.7, 0.3),
                      np.array([0.0, 0.3, 0.0, 0.7], np.float32), frame.prediction.embedding)
    return dataclasses.replace(frame, prediction=pred, of_interest=False, foreground=0.0)


def test_empty_scenes_are_spooled_as_negatives_at_most_once_per_interval(
        tmp_path: Path) -> None:
    bundle = read_bundle(demo_model_path())
    cfg = MiningConfig(empty_scene_interval_s=3600.0)
    with Spool(tmp_path / "spool", SpoolConfig(commit_interval_s=0)) as spool:
        kept = Collector(cfg, RecentVisits(2**22, 3600.0, 90), spool, bundle)
        now = time.time()
        for visit in ("v1", "v2", "v3"):
            frames = [empty_frame(visit, seq) for seq in range(4)]
            for one in frames:
                kept.on_classified(one)
            kept.on_visit_closed(VisitSummary(visit, now, now + 6, 4, 4, {}, None, False,
                                              bundle.version), frames)
        spool.flush()
        samples = spool.ls()
    assert [(s.visit_id, s.reasons, s.label, s.label_source) for s in samples] == \
        [("v1", ("empty_scene",), "other", "pseudo")]
    assert kept.counters["empty_scenes"] == 1
