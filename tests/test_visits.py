"""Visits: a vote over a visit's frames decides one alert at most."""

from __future__ import annotations

import numpy as np
import pytest

from feederd.config import VisitsConfig
from feederd.types import Box, Frame, Prediction
from feederd.visits import RECENT_FRAMES, VisitTracker

LABELS = ("blue_jay", "cardinal", "other")


def prediction(label: str, confidence: float) -> Prediction:
    rest = [x for x in LABELS if x != label]
    second = (1.0 - confidence) * 0.8
    scores = (confidence, second, 1.0 - confidence - second)
    probs = np.array([dict(zip((label, *rest), scores, strict=True))[x] for x in LABELS],
                     dtype=np.float32)
    return Prediction((label, *rest), scores, probs)


def frame(seq: int, mono: float) -> Frame:
    return Frame(seq=seq, mono=mono, wall=1_700_000_000.0 + mono,
                 image=np.zeros((4, 4, 3), np.uint8))


def feed(tracker: VisitTracker, labels: list[tuple[str, float]], step: float = 0.5) -> list:
    alerts = []
    for i, (label, conf) in enumerate(labels):
        f = frame(i, i * step)
        _, alert = tracker.add(f, prediction(label, conf), None, f.image, "v1")
        if alert:
            alerts.append(alert)
    return alerts


@pytest.fixture
def tracker() -> VisitTracker:
    t = VisitTracker(VisitsConfig(min_frames=2, min_confidence=0.5, min_share=0.3),
                     LABELS, {"other"})
    t.open(frame(0, 0.0), 0.0)
    return t


class TestVote:
    def test_a_species_that_wins_enough_confident_frames_alerts_once(self, tracker):
        alerts = feed(tracker, [("blue_jay", 0.9)] * 6)
        assert len(alerts) == 1
        assert alerts[0].label == "blue_jay"
        assert alerts[0].frames == 2

    def test_the_alert_carries_the_visit_id_as_event_id(self, tracker):
        visit_id = tracker.visit_id
        alerts = feed(tracker, [("cardinal", 0.8)] * 3)
        assert alerts[0].event_id == visit_id

    def test_a_single_confident_frame_does_not_alert(self, tracker):
        assert feed(tracker, [("other", 0.9), ("blue_jay", 0.95), ("other", 0.9)]) == []

    def test_unsure_frames_do_not_alert(self, tracker):
        assert feed(tracker, [("blue_jay", 0.4)] * 5) == []

    def test_a_species_isolated_among_many_negative_frames_does_not_alert(self, tracker):
        frames = [("other", 0.9)] * 8 + [("blue_jay", 0.9)] * 2
        assert feed(tracker, frames) == []

    def test_negative_labels_never_alert(self, tracker):
        assert feed(tracker, [("other", 0.99)] * 10) == []

    def test_an_explicit_species_list_limits_what_alerts(self):
        t = VisitTracker(VisitsConfig(species=["cardinal"]), LABELS, {"other"})
        t.open(frame(0, 0.0), 0.0)
        assert feed(t, [("blue_jay", 0.9)] * 5) == []


class TestWhereToLook:
    def test_motion_that_persists_becomes_the_classification_box(self, tracker):
        tracker.see(Box(100, 100, 40, 40))
        tracker.see(Box(104, 100, 40, 40))
        assert tracker.last_box == Box(104, 100, 40, 40)

    def test_a_one_frame_change_elsewhere_never_becomes_the_classification_box(self, tracker):
        """A burned-in caption's glitch ("FPS: 24" -> "FPS: 1") lasts one frame."""
        bird = Box(100, 100, 40, 40)
        tracker.see(bird)
        tracker.see(bird)
        tracker.see(Box(0, 0, 60, 12))
        tracker.see(None)
        tracker.see(Box(0, 0, 60, 12))
        tracker.see(bird)
        assert tracker.last_box == bird

    def test_the_frame_records_the_motion_of_the_last_few_frames(self, tracker):
        """What moved just now: a bird that flew off a while ago is no longer in the crop."""
        tracker.see(Box(100, 100, 40, 40), area=0.02, live=0.01)
        tracker.see(Box(110, 100, 40, 40), area=0.03, live=0.005)
        f = frame(1, 0.1)
        classified, _ = tracker.add(f, prediction("other", 0.9), None, f.image, "v1")
        assert classified.motion_box == Box(100, 100, 50, 40)
        assert (classified.motion_area, classified.motion_live) == (0.03, 0.01)
        for _ in range(RECENT_FRAMES):
            tracker.see(None)
        f = frame(2, 0.5)
        classified, _ = tracker.add(f, prediction("other", 0.9), None, f.image, "v1")
        assert classified.motion_box is None and classified.motion_area == 0.0


class TestRateAndSummary:
    def test_classification_is_limited_to_classify_fps(self):
        t = VisitTracker(VisitsConfig(classify_fps=2.0), LABELS, {"other"})
        t.open(frame(0, 0.0), 0.0)
        due = []
        for i in range(24):  # 1 s at 24 fps
            f = frame(i, i / 24)
            if t.due(f.mono):
                due.append(i)
                t.add(f, prediction("other", 0.9), None, f.image, "v1")
        assert len(due) == 2

    def test_closing_summarises_votes_and_returns_frames_for_mining(self, tracker):
        feed(tracker, [("blue_jay", 0.9)] * 3 + [("other", 0.7)])
        summary, frames = tracker.close(1_700_000_010.0)
        assert summary.votes == {"blue_jay": 3, "other": 1}
        assert summary.alerted and summary.label == "blue_jay"
        assert summary.frames_classified == len(frames) == 4
        assert summary.model_version == "v1"
        assert not tracker.active

    def test_event_ids_sort_by_time_and_are_unique(self):
        t = VisitTracker(VisitsConfig(), LABELS, {"other"})
        ids = [t.open(frame(i, float(i)), float(i)) for i in range(50)]
        assert len(set(ids)) == 50
        assert ids == sorted(ids)


class TestMemory:
    def test_a_long_visit_keeps_hash_thumbnails_not_its_megabyte_crops(self, tracker):
        crop = np.random.default_rng(1).integers(0, 256, (720, 720, 3), dtype=np.uint8)
        for i in range(300):  # 100 s at classify_fps 3: 460 MB of raw crops before the fix
            tracker.add(frame(i, i / 3), prediction("blue_jay", 0.9), None, crop, "v1")
        closed = tracker.close(1_700_000_100.0)
        assert closed is not None
        frames = closed[1]
        assert len(frames) == 300
        assert sum(f.crop.nbytes for f in frames) <= 300 * 72 * 64
