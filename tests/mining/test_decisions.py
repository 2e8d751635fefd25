"""Mining decisions on crafted prediction sequences, and the perceptual hash they rely on."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from feederd.config import MiningConfig
from feederd.mining.decisions import (
    evidence,
    feedback_frames,
    mine_feedback,
    mine_visit,
    priority,
)
from feederd.mining.imagehash import HashIndex, dhash, hamming
from feederd.types import Box, ClassifiedFrame, Decision, Prediction

NEGATIVE = frozenset({"background", "squirrel"})
LABELS = ("blue_jay", "crow", "hummingbird", "background", "squirrel")
CFG = MiningConfig(low_margin=0.15, flicker_confidence=0.6, flicker_window=2, max_per_visit=8,
                   dedup_distance=6, min_gap_s=0.0)
CROP = Box(100, 100, 80, 80)
# What the camera says about a crop: foreground share against the visit's empty feeder.
SEEN = {"empty": 0.0, "object": 0.4, None: None}


def crop(seed: int) -> np.ndarray:
    """A distinct picture per seed (blurred noise: dHash tells them apart)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
    return cv2.resize(small, (96, 96), interpolation=cv2.INTER_CUBIC)


def frame(seq: int, label: str, conf: float = 0.9, second: float | None = None,
          image: np.ndarray | None = None, visit: str = "v1", seen: str | None = None,
          embedding: np.ndarray | None = None) -> ClassifiedFrame:
    """A classified frame; ``seen``: what the evidence says ("empty", "object", None)."""
    second = (1 - conf) * 0.8 if second is None else second
    others = [x for x in LABELS if x != label]
    pred = Prediction((label, others[0], others[1]), (conf, second, max(0.0, 1 - conf - second)),
                      np.zeros(len(LABELS), dtype=np.float32), embedding)
    return ClassifiedFrame(visit, seq, seq * 0.25, 1000.0 + seq, pred, None,
                           crop(seq) if image is None else image, label not in NEGATIVE,
                           crop_box=CROP, foreground=SEEN[seen])


def visit(*labels: str, conf: float = 0.9, seen: str | None = None) -> list[ClassifiedFrame]:
    return [frame(i, label, conf, seen=seen) for i, label in enumerate(labels)]


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

    def test_an_isolated_species_between_empty_crops_is_a_flicker_negative_of_the_generic_label(
            self) -> None:
        frames = visit("background", "squirrel", "hummingbird", "squirrel", "squirrel",
                       seen="empty")
        frames[2] = frame(2, "hummingbird", seen=None)
        (cand,) = mine_visit(frames, CFG, NEGATIVE, negative_label="background")
        assert (cand.frame.seq, cand.reasons) == (2, ("flicker_negative",))
        assert (cand.label, cand.label_source) == ("background", "pseudo")

    def test_an_isolated_species_whose_neighbours_have_no_evidence_is_not_a_flicker(
            self) -> None:
        frames = visit("background", "squirrel", "hummingbird", "squirrel", "squirrel")
        assert mine_visit(frames, CFG, NEGATIVE) == []

    def test_an_isolated_species_with_an_animal_there_is_an_unlabelled_disagreement(
            self) -> None:
        """The neighbours' "nothing" may be the model's own misses of the bird."""
        frames = visit("background", "background", "hummingbird", "background", "background",
                       seen="object")
        cand = by_seq(mine_visit(frames, CFG, NEGATIVE, alerted=True))[2]
        assert (cand.reasons, cand.label, cand.label_source) == (("disagreement",), None, None)

    def test_an_isolated_species_in_a_crop_unlike_the_empty_feeder_is_no_flicker_negative(
            self) -> None:
        frames = visit("background", "background", "crow", "background", "background",
                       seen="empty")
        frames[2] = frame(2, "crow", seen="object")
        (cand,) = mine_visit(frames, CFG, NEGATIVE)
        assert cand.reasons == ("disagreement",)

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

    def test_no_flicker_positive_where_the_crop_shows_the_empty_feeder(self) -> None:
        """The bird left for that frame: "nothing" was right."""
        frames = visit("blue_jay", "blue_jay", "background", "blue_jay", "blue_jay")
        frames[2] = frame(2, "background", seen="empty")
        assert mine_visit(frames, CFG, NEGATIVE) == []

    def test_neighbours_that_disagree_on_the_species_give_no_flicker_positive(self) -> None:
        frames = visit("blue_jay", "crow", "background", "blue_jay", "blue_jay")
        assert all("flicker_positive" not in c.reasons
                   for c in mine_visit(frames, CFG, NEGATIVE))

    def test_a_frame_can_have_several_reasons(self) -> None:
        frames = visit("background", "background", "crow", "background", "background",
                       seen="empty")
        frames[2] = frame(2, "crow", 0.62, second=0.5)
        (cand,) = mine_visit(frames, CFG, NEGATIVE)
        assert cand.reasons == ("low_margin", "flicker_negative")

    def test_candidates_come_most_useful_first(self) -> None:
        frames = visit(*["background"] * 3, "crow", *["background"] * 4, "blue_jay",
                       *["background"] * 3, seen="empty")
        frames[3] = frame(3, "crow", 0.7)
        frames[8] = frame(8, "blue_jay", 0.95)
        frames[5] = frame(5, "background", 0.4, second=0.35, seen="empty")
        cands = mine_visit(frames, CFG, NEGATIVE)
        assert [c.frame.seq for c in cands] == [8, 3, 5]
        assert [c.priority for c in cands] == sorted((c.priority for c in cands), reverse=True)

    def test_near_duplicate_frames_of_a_visit_are_kept_once(self) -> None:
        same = crop(99)
        frames = [frame(i, "crow", 0.45, second=0.4, image=same) for i in range(5)]
        frames.append(frame(5, "crow", 0.45, second=0.4))
        cands = mine_visit(frames, CFG, NEGATIVE)
        assert len(cands) == 2
        assert hamming(cands[0].phash, cands[1].phash) >= CFG.visit_dedup_distance

    def test_with_embeddings_near_duplicates_are_those_the_model_sees_alike(self) -> None:
        """Cosine similarity of embeddings decides where the bundle has them, not dHash."""
        rng = np.random.default_rng(4)
        base, other = rng.normal(size=16), rng.normal(size=16)
        frames = [frame(i, "crow", 0.45, second=0.4, embedding=base + rng.normal(0, 0.05, 16))
                  for i in range(4)]
        frames.append(frame(4, "crow", 0.45, second=0.4, image=crop(0), embedding=other))
        assert [c.frame.seq for c in mine_visit(frames, CFG, NEGATIVE)] == [0, 4]

    def test_a_visit_s_picks_are_spread_over_its_time(self) -> None:
        frames = [frame(i, "crow", 0.45 + i / 1000, second=0.4) for i in range(24)]
        cands = mine_visit(frames, CFG.model_copy(update={"min_gap_s": 1.0}), NEGATIVE)
        times = sorted(c.frame.mono for c in cands)
        assert len(cands) == 6
        assert min(b - a for a, b in itertools.pairwise(times)) >= 1.0

    def test_a_visit_contributes_at_most_max_per_visit_samples(self) -> None:
        frames = [frame(i, "crow", 0.45, second=0.4) for i in range(30)]
        assert len(mine_visit(frames, CFG.model_copy(update={"max_per_visit": 5}),
                              NEGATIVE)) == 5

    def test_disabled_mining_keeps_nothing(self) -> None:
        frames = [frame(i, "crow", 0.45, second=0.4) for i in range(3)]
        assert mine_visit(frames, CFG.model_copy(update={"enabled": False}), NEGATIVE) == []


class TestTaskDecision:
    def test_low_margin_is_the_task_s_margin_not_the_raw_top_two(self) -> None:
        """Two negatives close together ("langur" vs "sloth bear" on a blue jay) is no doubt
        about the task: nothing of interest, by a wide margin."""
        frames = visit("background", "background", "background")
        sure = Decision("background", 0.9, 0.85, False)
        frames[1] = replace_decision(frame(1, "squirrel", 0.4, second=0.38), sure)
        assert mine_visit(frames, CFG, NEGATIVE) == []

    def test_a_species_folded_into_the_negative_is_no_flicker(self) -> None:
        frames = visit("background", "background", "crow", "background", "background",
                       seen="empty")
        folded = Decision("background", 0.9, 0.8, False)
        frames[2] = replace_decision(frame(2, "crow", 0.9), folded)
        assert mine_visit(frames, CFG, NEGATIVE) == []


def replace_decision(f: ClassifiedFrame, decision: Decision) -> ClassifiedFrame:
    pred = f.prediction
    return dataclasses.replace(
        f, prediction=dataclasses.replace(pred, decision=decision),
        of_interest=decision.of_interest)


class TestMissedVisit:
    def test_a_visit_without_alert_with_an_animal_in_most_crops_is_a_missed_visit(
            self) -> None:
        frames = visit(*["background"] * 10, seen="object")
        cands = mine_visit(frames, CFG.model_copy(update={"max_per_visit": 4}), NEGATIVE)
        assert len(cands) == 4
        assert {(c.reasons, c.label, c.label_source) for c in cands} == \
            {(("missed_visit",), None, None)}

    def test_a_visit_that_alerted_is_not_missed(self) -> None:
        frames = visit(*["background"] * 10, seen="object")
        assert mine_visit(frames, CFG, NEGATIVE, alerted=True) == []

    def test_a_visit_mostly_of_the_empty_feeder_is_not_missed(self) -> None:
        frames = visit(*["background"] * 10, seen="empty")
        for i in (2, 5):
            frames[i] = frame(i, "background", seen="object")
        assert mine_visit(frames, CFG, NEGATIVE) == []

    def test_frames_that_named_a_species_are_picked_too_when_the_visit_did_not_alert(
            self) -> None:
        """A blue jay called Steller's, Eurasian and blue jay in turn alerts on none of them."""
        frames = visit("crow", "blue_jay", "hummingbird", "background", seen="object")
        cands = mine_visit(frames, CFG, NEGATIVE)
        assert sorted(c.frame.seq for c in cands if "missed_visit" in c.reasons) == [0, 1, 2, 3]

    def test_only_crops_with_the_animal_are_picked(self) -> None:
        frames = visit(*["background"] * 10, seen="object")
        frames[3] = frame(3, "background", seen="empty")
        assert 3 not in {c.frame.seq for c in mine_visit(frames, CFG, NEGATIVE)}


class TestEmptyScene:
    def test_a_visit_of_the_empty_feeder_gives_its_frame_nearest_a_species_as_a_negative(
            self) -> None:
        frames = visit(*["background"] * 6, seen="empty")
        frames[4] = frame(4, "background", 0.55, second=0.4, seen="empty")  # crow at 0.4
        (cand,) = mine_visit(frames, CFG, NEGATIVE, negative_label="background",
                             empty_scene=True)
        assert (cand.frame.seq, cand.reasons) == (4, ("empty_scene",))
        assert (cand.label, cand.label_source) == ("background", "pseudo")

    def test_only_when_the_caller_allows_one(self) -> None:
        frames = visit(*["background"] * 6, seen="empty")
        assert mine_visit(frames, CFG, NEGATIVE) == []

    def test_never_from_a_visit_that_alerted(self) -> None:
        frames = visit(*["background"] * 6, seen="empty")
        assert mine_visit(frames, CFG, NEGATIVE, alerted=True, empty_scene=True) == []

    def test_never_from_a_visit_where_the_evidence_saw_an_object(self) -> None:
        frames = visit(*["background"] * 6, seen="empty")
        frames[1] = frame(1, "background", seen="object")
        assert mine_visit(frames, CFG, NEGATIVE, empty_scene=True) == []

    def test_never_without_a_crop_the_evidence_calls_empty(self) -> None:
        frames = visit(*["background"] * 6, seen=None)
        assert mine_visit(frames, CFG, NEGATIVE, empty_scene=True) == []

    def test_a_visit_that_already_gave_a_labelled_sample_gives_no_second(self) -> None:
        frames = visit("background", "squirrel", "hummingbird", "squirrel", "squirrel",
                       seen="empty")
        cands = mine_visit(frames, CFG, NEGATIVE, empty_scene=True)
        assert [c.reasons for c in cands] == [("flicker_negative",)]


class TestEvidence:
    def test_a_crop_like_the_empty_feeder_is_empty_whatever_moved(self) -> None:
        f = dataclasses.replace(frame(0, "crow"), foreground=0.01, motion_box=CROP,
                                motion_area=0.05, motion_live=0.05)
        assert evidence(f, CFG) == "empty"

    def test_animal_sized_live_motion_in_the_crop_is_an_object(self) -> None:
        f = dataclasses.replace(frame(0, "crow"), motion_box=Box(110, 110, 40, 40),
                                motion_area=0.02, motion_live=0.01)
        assert evidence(f, CFG) == "object"

    def test_a_ghost_that_differs_from_the_background_but_does_not_move_is_no_object(
            self) -> None:
        f = dataclasses.replace(frame(0, "crow"), motion_box=Box(110, 110, 40, 40),
                                motion_area=0.02, motion_live=0.0)
        assert evidence(f, CFG) == "unknown"

    def test_motion_mostly_outside_the_crop_is_no_object_in_it(self) -> None:
        f = dataclasses.replace(frame(0, "crow"), motion_box=Box(0, 0, 300, 300),
                                motion_area=0.3, motion_live=0.1)
        assert evidence(f, CFG) == "unknown"


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
