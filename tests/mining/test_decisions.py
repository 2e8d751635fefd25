"""Mining decisions on crafted prediction sequences, and the perceptual hash they rely on."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from feederd.config import MiningConfig
from feederd.mining.decisions import feedback_frames, mine_feedback, mine_visit, priority
from feederd.mining.imagehash import HashIndex, dhash, hamming
from feederd.types import ClassifiedFrame, Prediction

NEGATIVE = frozenset({"background", "squirrel"})
LABELS = ("blue_jay", "crow", "hummingbird", "background", "squirrel")
CFG = MiningConfig(low_margin=0.15, flicker_confidence=0.6, flicker_window=2, max_per_visit=8,
                   dedup_distance=6)


def crop(seed: int) -> np.ndarray:
    """A distinct picture per seed (blurred noise: dHash tells them apart)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
    return cv2.resize(small, (96, 96), interpolation=cv2.INTER_CUBIC)


def frame(seq: int, label: str, conf: float = 0.9, second: float | None = None,
          image: np.ndarray | None = None, visit: str = "v1") -> ClassifiedFrame:
    second = (1 - conf) * 0.8 if second is None else second
    others = [x for x in LABELS if x != label]
    pred = Prediction((label, others[0], others[1]), (conf, second, max(0.0, 1 - conf - second)),
                      np.zeros(len(LABELS), dtype=np.float32))
    return ClassifiedFrame(visit, seq, seq * 0.25, 1000.0 + seq, pred, None,
                           crop(seq) if image is None else image, label not in NEGATIVE)


def visit(*labels: str, conf: float = 0.9) -> list[ClassifiedFrame]:
    return [frame(i, label, conf) for i, label in enumerate(labels)]


def by_seq(cands: list) -> dict:
    return {c.frame.seq: c for c in cands}


class TestMineVisit:
    def test_a_frame_with_a_low_margin_is_mined_unlabelled(self) -> None:
        frames = visit("crow", "crow", "crow")
        frames[1] = frame(1, "crow", 0.45, second=0.40)
        cands = mine_visit(frames, CFG, NEGATIVE)
        assert [(c.frame.seq, c.reasons, c.label, c.label_source) for c in cands] == \
            [(1, ("low_margin",), None, None)]

    def test_sure_frames_that_agree_are_not_mined(self) -> None:
        assert mine_visit(visit(*["crow"] * 6), CFG, NEGATIVE) == []

    def test_an_isolated_confident_species_is_a_flicker_negative_labelled_like_its_neighbours(
            self) -> None:
        frames = visit("background", "squirrel", "hummingbird", "squirrel", "squirrel")
        (cand,) = mine_visit(frames, CFG, NEGATIVE)
        assert (cand.frame.seq, cand.reasons) == (2, ("flicker_negative",))
        assert (cand.label, cand.label_source) == ("squirrel", "pseudo")

    def test_a_species_with_a_species_neighbour_is_not_a_flicker(self) -> None:
        frames = visit("background", "background", "crow", "crow", "background", "background")
        assert mine_visit(frames, CFG, NEGATIVE) == []

    def test_frames_nearer_the_ends_than_the_window_are_never_flickers(self) -> None:
        frames = visit("crow", "background", "background", "background", "background", "crow")
        assert mine_visit(frames, CFG, NEGATIVE) == []

    def test_an_unsure_isolated_species_is_not_a_flicker(self) -> None:
        frames = visit("background", "background", "crow", "background", "background")
        frames[2] = frame(2, "crow", 0.5, second=0.2)
        assert mine_visit(frames, CFG, NEGATIVE) == []

    def test_one_empty_frame_among_neighbours_agreeing_on_a_species_is_a_flicker_positive(
            self) -> None:
        frames = visit("blue_jay", "blue_jay", "background", "blue_jay", "blue_jay")
        (cand,) = mine_visit(frames, CFG, NEGATIVE)
        assert (cand.frame.seq, cand.reasons) == (2, ("flicker_positive",))
        assert (cand.label, cand.label_source) == ("blue_jay", "pseudo")

    def test_neighbours_that_disagree_on_the_species_give_no_flicker_positive(self) -> None:
        frames = visit("blue_jay", "crow", "background", "blue_jay", "blue_jay")
        assert all("flicker_positive" not in c.reasons
                   for c in mine_visit(frames, CFG, NEGATIVE))

    def test_a_frame_can_have_several_reasons(self) -> None:
        frames = visit("background", "background", "crow", "background", "background")
        frames[2] = frame(2, "crow", 0.62, second=0.5)
        (cand,) = mine_visit(frames, CFG, NEGATIVE)
        assert cand.reasons == ("low_margin", "flicker_negative")

    def test_candidates_come_most_useful_first(self) -> None:
        frames = visit(*["background"] * 3, "crow", *["background"] * 4, "blue_jay",
                       *["background"] * 3)
        frames[3] = frame(3, "crow", 0.7)
        frames[8] = frame(8, "blue_jay", 0.95)
        frames[5] = frame(5, "background", 0.4, second=0.35)
        cands = mine_visit(frames, CFG, NEGATIVE)
        assert [c.frame.seq for c in cands] == [8, 3, 5]
        assert [c.priority for c in cands] == sorted((c.priority for c in cands), reverse=True)

    def test_near_duplicate_frames_of_a_visit_are_kept_once(self) -> None:
        same = crop(99)
        frames = [frame(i, "crow", 0.45, second=0.4, image=same) for i in range(5)]
        frames.append(frame(5, "crow", 0.45, second=0.4))
        cands = mine_visit(frames, CFG, NEGATIVE)
        assert len(cands) == 2
        assert hamming(cands[0].phash, cands[1].phash) >= CFG.dedup_distance

    def test_a_visit_contributes_at_most_max_per_visit_samples(self) -> None:
        frames = [frame(i, "crow", 0.45, second=0.4) for i in range(30)]
        assert len(mine_visit(frames, CFG.model_copy(update={"max_per_visit": 5}),
                              NEGATIVE)) == 5

    def test_disabled_mining_keeps_nothing(self) -> None:
        frames = [frame(i, "crow", 0.45, second=0.4) for i in range(3)]
        assert mine_visit(frames, CFG.model_copy(update={"enabled": False}), NEGATIVE) == []


class TestPriority:
    def test_owner_labels_rank_above_pseudo_labels_above_none(self) -> None:
        user = priority(["corrected"], "user", 0.99, 0.9)
        pseudo = priority(["flicker_negative"], "pseudo", 0.99, 0.9)
        none = priority(["low_margin"], None, 0.4, 0.0)
        assert user > pseudo > none

    def test_false_positives_rank_the_most_confident_first(self) -> None:
        sure = priority(["rejected"], "user", 0.95, 0.9)
        unsure = priority(["rejected"], "user", 0.55, 0.1)
        assert sure > unsure

    def test_false_positives_rank_above_other_samples_of_the_same_tier(self) -> None:
        assert priority(["rejected"], "user", 0.3, 0.0) > priority(["confirmed"], "user", 0.3,
                                                                    0.0)

    def test_other_samples_rank_the_least_sure_first(self) -> None:
        assert priority(["low_margin"], None, 0.5, 0.02) > priority(["low_margin"], None, 0.5,
                                                                     0.12)


class TestMineFeedback:
    def frames(self) -> list[ClassifiedFrame]:
        return visit("background", "hummingbird", "hummingbird", "crow", "background")

    def test_a_rejection_makes_the_frames_of_interest_owner_labelled_negatives(self) -> None:
        cands = mine_feedback(self.frames(), "not_a_bird", None, "other", CFG)
        assert sorted(c.frame.seq for c in cands) == [1, 2, 3]
        assert {(c.label, c.label_source, c.reasons) for c in cands} == \
            {("other", "user", ("rejected",))}

    def test_a_correction_labels_the_frames_of_interest_with_the_named_species(self) -> None:
        cands = mine_feedback(self.frames(), "species", "blue_jay", "other", CFG)
        assert sorted(c.frame.seq for c in cands) == [1, 2, 3]
        assert {(c.label, c.label_source, c.reasons) for c in cands} == \
            {("blue_jay", "user", ("corrected",))}

    def test_a_confirmation_labels_the_frames_of_the_alerted_species(self) -> None:
        cands = mine_feedback(self.frames(), "correct", "crow", "other", CFG)
        assert [(c.frame.seq, c.label, c.reasons) for c in cands] == \
            [(3, "crow", ("confirmed",))]

    def test_a_confirmation_without_a_label_takes_the_most_voted_species(self) -> None:
        cands = mine_feedback(self.frames(), "correct", None, "other", CFG)
        assert sorted((c.frame.seq, c.label) for c in cands) == \
            [(1, "hummingbird"), (2, "hummingbird")]

    def test_rejected_frames_keep_their_low_margin_reason(self) -> None:
        frames = self.frames()
        frames[1] = frame(1, "hummingbird", 0.45, second=0.4)
        cands = by_seq(mine_feedback(frames, "not_a_bird", None, "other", CFG))
        assert cands[1].reasons == ("rejected", "low_margin")

    def test_a_visit_with_no_frame_of_interest_offers_every_frame(self) -> None:
        frames = visit("background", "squirrel")
        cands = mine_feedback(frames, "not_a_bird", None, "other", CFG)
        assert sorted(c.frame.seq for c in cands) == [0, 1]

    def test_a_species_verdict_without_a_label_is_refused(self) -> None:
        with pytest.raises(ValueError, match="label"):
            mine_feedback(self.frames(), "species", None, "other", CFG)

    def test_the_frames_kept_for_a_reply_give_the_same_samples_as_all_frames(self) -> None:
        frames = [frame(i, ["crow", "blue_jay", "background"][i % 3], 0.5 + i / 100)
                  for i in range(40)]
        cfg = CFG.model_copy(update={"max_per_visit": 4})
        kept = set(feedback_frames(frames, cfg))
        subset = [f for f in frames if f.seq in kept]
        assert len(kept) < len(frames)
        for verdict, label in (("not_a_bird", None), ("species", "hummingbird"),
                               ("correct", None)):
            full = mine_feedback(frames, verdict, label, "other", cfg)  # type: ignore[arg-type]
            part = mine_feedback(subset, verdict, label, "other", cfg)  # type: ignore[arg-type]
            assert [c.frame.seq for c in part] == [c.frame.seq for c in full]


class TestPerceptualHash:
    def test_a_hash_survives_reencoding_and_a_small_resize(self) -> None:
        image = crop(1)
        copy = cv2.imdecode(cv2.imencode(".jpg", cv2.resize(image, (86, 86)),
                                         [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_COLOR)
        assert copy is not None
        assert hamming(dhash(image), dhash(copy)) < CFG.dedup_distance

    def test_different_pictures_hash_far_apart(self) -> None:
        assert hamming(dhash(crop(1)), dhash(crop(2))) > 16

    def test_an_empty_image_cannot_be_hashed(self) -> None:
        with pytest.raises(ValueError, match="empty"):
            dhash(np.zeros((0, 0, 3), np.uint8))

    def test_the_index_finds_the_nearest_hash_of_at_least_a_given_rank(self) -> None:
        index = HashIndex(capacity=2)
        index.add(1, 0b1111, rank=0)
        index.add(2, 0b0000, rank=2)
        assert index.nearest(0b0111, min_rank=0) == 1
        assert index.nearest(0b0111, min_rank=1) == 3
        index.remove(2)
        assert index.nearest(0b0111, min_rank=1) == 65

    def test_the_index_grows_and_keeps_ranks_across_compaction(self) -> None:
        index = HashIndex(capacity=2)
        for key in range(3000):
            index.add(key, key * 0x9E3779B97F4A7C15 % 2**64, rank=key % 3)
        for key in range(0, 3000, 2):
            index.remove(key)
        index.set_rank(1, 2)
        index.add(5000, 1 * 0x9E3779B97F4A7C15 % 2**64, rank=0)
        assert len(index) == 1501
        assert index.nearest(0x9E3779B97F4A7C15, min_rank=2) == 0


@pytest.mark.shared_data
def test_phash_tells_squirrel_photos_apart_but_matches_a_reencoded_resized_copy(
        shared_data: Path) -> None:
    files = sorted((shared_data / "images" / "squirrel" / "squirrel").glob("*.jpg"))[:40]
    assert len(files) >= 20, "too few squirrel photos in the shared data"
    hashes, copies = [], []
    for path in files:
        image = cv2.imread(str(path))
        assert image is not None, path
        smaller = cv2.resize(image, None, fx=0.9, fy=0.9, interpolation=cv2.INTER_AREA)
        again = cv2.imdecode(cv2.imencode(".jpg", smaller, [cv2.IMWRITE_JPEG_QUALITY, 70])[1],
                             cv2.IMREAD_COLOR)
        assert again is not None
        hashes.append(dhash(image))
        copies.append(hamming(dhash(image), dhash(again)))
    apart = [hamming(a, b) for a, b in itertools.combinations(hashes, 2)]
    assert max(copies) < CFG.dedup_distance
    # The set has a few near-duplicate photos (see its README), hence 98% rather than all.
    assert sum(d >= CFG.dedup_distance for d in apart) / len(apart) >= 0.98
    assert float(np.median(apart)) > 20
