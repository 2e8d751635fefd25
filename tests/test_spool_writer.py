"""The spool's batch writer: one bad sample never costs the rest of its batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from test_spool import cand, jpeg, spool_in

from feederd.mining.decisions import Candidate
from feederd.types import Prediction


def with_nan(candidate: Candidate) -> Candidate:
    """As a model that is NaN on real frames predicts it (margin and probabilities NaN)."""
    nan = float("nan")
    prediction = Prediction(("crow", "other"), (nan, nan), np.array([nan, nan], np.float32))
    frame = dataclasses.replace(candidate.frame, prediction=prediction)
    return dataclasses.replace(candidate, frame=frame)


def test_a_sample_with_nan_probabilities_is_refused_and_the_rest_of_its_batch_is_stored(
        tmp_path: Path) -> None:
    with spool_in(tmp_path / "spool") as spool:
        for i in range(5):
            spool.put(with_nan(cand(i)) if i == 2 else cand(i), jpeg(i), "m1")
        assert spool.flush() == 4
        stats = spool.stats()
        assert stats["samples"] == 4 and stats["invalid_sample"] == 1
        assert stats["write_errors"] == 0
        assert sorted(s.frame_seq for s in spool.ls(limit=10)) == [0, 1, 3, 4]
