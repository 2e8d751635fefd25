"""Confusion-matrix figures: coloured by row share, counts in the cells, the gate's figures in
the titles, deployed and candidate side by side."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from feederd.sync.evaluate import Score
from feederd.sync.plots import columns, confusion_pair_png, confusion_png, row_shares, title


def score(version: str, confusion: dict[str, dict[str, int]], alerts: int, total: int) -> Score:
    recall = {t: row.get(t, 0) / sum(row.values()) for t, row in confusion.items()}
    return Score(version, ["robin", "jay", "other"], ["other"], confusion, recall, 0.9, total,
                 alerts, 0, 0)


DEPLOYED = score("v1", {"robin": {"robin": 40, "other": 10}, "jay": {"jay": 4, "robin": 1},
                        "other": {"other": 30, "jay": 9}}, 12, 40)
CANDIDATE = score("v2", {"robin": {"robin": 45, "other": 5}, "jay": {"jay": 5},
                         "other": {"other": 38, "squirrel": 1}}, 3, 40)


class TestShares:
    def test_each_cell_is_its_share_of_the_true_class(self) -> None:
        shares = row_shares(np.array([[40, 10], [1, 4], [0, 0]]))
        assert np.allclose(shares, [[0.8, 0.2], [0.2, 0.8], [0.0, 0.0]])

    def test_a_label_the_model_lacks_gets_a_column_after_its_own(self) -> None:
        assert columns(CANDIDATE.confusion, CANDIDATE.labels) == ["robin", "jay", "other",
                                                                 "squirrel"]

    def test_the_title_carries_the_false_alert_figures(self) -> None:
        assert title(DEPLOYED, "deployed") == ("deployed: v1\nfalse alerts 12 / 40 field "
                                               "negatives (30.0%)")


class TestPng:
    def test_deployed_and_candidate_sit_side_by_side_in_one_image(self, tmp_path: Path
                                                                  ) -> None:
        one = cv2.imread(str(confusion_png(CANDIDATE, tmp_path / "one.png")))
        pair = cv2.imread(str(confusion_pair_png([("deployed", DEPLOYED),
                                                  ("candidate", CANDIDATE)],
                                                 tmp_path / "pair.png")))
        assert one is not None and pair is not None
        assert pair.shape[1] > 1.4 * one.shape[1]
        assert abs(pair.shape[0] - one.shape[0]) < 0.2 * one.shape[0]

    def test_a_matrix_without_test_images_still_draws(self, tmp_path: Path) -> None:
        empty = score("v0", {}, 0, 0)
        image = cv2.imread(str(confusion_png(empty, tmp_path / "empty.png")))
        assert image is not None and image.shape[0] > 50
