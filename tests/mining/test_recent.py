"""The recent-visit frame store: what a late reply can still label, within bytes and age."""

from __future__ import annotations

import threading

import cv2
import numpy as np

from feederd.mining.recent import RecentVisits
from feederd.types import ClassifiedFrame, Prediction

SIDE = 64
SCORES = 2 * 4  # the two float32 scores each test frame carries, counted with its picture
RAW = SIDE * SIDE * 3 + SCORES  # one raw frame as the store counts it


def crop(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), (SIDE, SIDE),
                      interpolation=cv2.INTER_CUBIC)


def frame(visit: str, seq: int, mono: float = 0.0, label: str = "crow") -> ClassifiedFrame:
    pred = Prediction((label, "other"), (0.7, 0.3), np.array([0.7, 0.3], np.float32))
    return ClassifiedFrame(visit, seq, mono, 1000.0 + mono, pred, None, crop(seq), True)


def store(max_bytes: int = 10 * 2**20, max_age_s: float = 3600.0) -> RecentVisits:
    return RecentVisits(max_bytes, max_age_s, 90)


def test_added_frames_come_back_in_seq_order_with_their_metadata() -> None:
    recent = store()
    for seq in (3, 1, 2):
        recent.add(frame("v1", seq, mono=seq))
    frames = recent.frames("v1")
    assert frames is not None
    assert [f.seq for f in frames] == [1, 2, 3]
    assert frames[0].prediction.label == "crow" and frames[0].wall == 1001.0
    assert np.array_equal(frames[0].crop, crop(1))


def test_an_unknown_visit_or_frame_gives_none() -> None:
    recent = store()
    recent.add(frame("v1", 1))
    assert recent.frames("v2") is None
    assert recent.jpeg("v1", 9) is None
    assert recent.jpeg("v2", 1) is None


def test_a_frame_is_encoded_once_and_decodes_close_to_its_crop() -> None:
    recent = store()
    recent.add(frame("v1", 1))
    first = recent.jpeg("v1", 1)
    assert first is not None and first.startswith(b"\xff\xd8")
    assert recent.jpeg("v1", 1) is first
    assert recent.stats()["encoded"] == 1
    decoded = cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None
    assert np.abs(decoded.astype(int) - crop(1).astype(int)).mean() < 8


def test_closing_a_visit_keeps_only_the_chosen_frames_as_jpeg() -> None:
    recent = store()
    for seq in range(6):
        recent.add(frame("v1", seq))
    assert recent.close("v1", keep={1, 4}) == 2
    frames = recent.frames("v1")
    assert frames is not None and [f.seq for f in frames] == [1, 4]
    assert frames[0].crop.shape == (SIDE, SIDE, 3)
    stats = recent.stats()
    assert stats["raw_bytes"] == 0 and stats["encoded"] == 2
    assert stats["bytes"] == sum(len(recent.jpeg("v1", s) or b"") + SCORES for s in (1, 4))


def test_closing_without_a_choice_keeps_every_frame() -> None:
    recent = store()
    for seq in range(3):
        recent.add(frame("v1", seq))
    assert recent.close("v1") == 3


def test_visits_older_than_max_age_expire() -> None:
    recent = store(max_age_s=60.0)
    recent.add(frame("old", 1, mono=0.0))
    recent.add(frame("new", 2, mono=100.0))
    assert recent.expire(now_mono=130.0) == 1
    assert recent.frames("old") is None
    assert recent.frames("new") is not None


def test_bytes_stay_within_max_bytes_by_dropping_the_oldest_visits() -> None:
    recent = RecentVisits(5 * RAW, 3600.0, 90, raw_share=1.0)
    for seq in range(8):
        recent.add(frame(f"v{seq}", seq, mono=seq))
    assert recent.stats()["bytes"] <= 5 * RAW
    assert [v for v in (f"v{s}" for s in range(8)) if recent.frames(v) is not None] == \
        ["v3", "v4", "v5", "v6", "v7"]


def test_raw_crops_beyond_their_share_are_encoded_even_if_no_visit_closes() -> None:
    recent = store(max_bytes=20 * RAW)
    for seq in range(40):
        recent.add(frame("long", seq))
    stats = recent.stats()
    assert stats["raw_bytes"] <= 10 * RAW
    assert stats["bytes"] <= 20 * RAW
    assert stats["encoded"] > 0 and stats["frames"] == 40


def test_one_visit_alone_over_the_bound_loses_its_oldest_frames() -> None:
    recent = RecentVisits(3 * RAW, 3600.0, 90, raw_share=1.0)
    for seq in range(6):
        recent.add(frame("v1", seq))
    frames = recent.frames("v1")
    assert frames is not None and [f.seq for f in frames] == [3, 4, 5]


def test_concurrent_adds_reads_and_expiry_keep_the_bound() -> None:
    recent = store(max_bytes=30 * RAW, max_age_s=5.0)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        for seq in range(200):
            recent.add(frame(f"{name}{seq // 20}", seq, mono=seq / 10))
            if seq % 20 == 19:
                recent.close(f"{name}{seq // 20}", keep={seq, seq - 1})

    def reader() -> None:
        try:
            for i in range(300):
                recent.frames(f"a{i % 10}")
                recent.jpeg(f"b{i % 10}", i % 200)
                recent.expire(now_mono=i / 15)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in "ab"]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = recent.stats()
    assert 0 <= stats["raw_bytes"] <= stats["bytes"] <= 30 * RAW
    assert stats["raw_bytes"] % RAW == 0  # whole raw crops: no update was lost to a race
    recent.expire(now_mono=10**6)  # everything expires: the accounting must return to zero
    assert (recent.stats()["visits"], recent.stats()["bytes"], recent.stats()["raw_bytes"]) \
        == (0, 0, 0)


def test_the_bound_counts_a_frames_scores_and_embedding_not_only_its_picture() -> None:
    recent = store()
    probs = np.full(965, 1 / 965, np.float32)  # AIY Birds V1: 965 classes, 1280-d embedding
    pred = Prediction(("crow", "other"), (0.7, 0.3), probs, np.zeros(1280, np.float32))
    recent.add(ClassifiedFrame("v1", 1, 0.0, 1000.0, pred, None, crop(1), True))
    assert recent.stats()["bytes"] == SIDE * SIDE * 3 + 965 * 4 + 1280 * 4
