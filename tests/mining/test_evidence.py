"""The empty-feeder reference: how much of a crop differs from the feeder without a bird."""

from __future__ import annotations

import numpy as np
import pytest

from feederd.mining.evidence import SETTLE_FRAMES, EmptyReference
from feederd.types import Box

FULL = (320, 240)  # width, height of the full frame; the grey frame is 133 x 100


def feeder(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(120, 200, (100, 133)).astype(np.uint8)


def with_bird(grey: np.ndarray) -> np.ndarray:
    out = grey.copy()
    out[50:62, 60:75] = 20  # a dark silhouette, 15 x 12 grey pixels
    return out


class TestEmptyReference:
    def test_the_empty_feeder_has_no_foreground(self) -> None:
        ref = EmptyReference(feeder(), threshold=25)
        assert ref.foreground(feeder(), Box(120, 100, 80, 80), *FULL) == 0.0

    def test_a_bird_fills_its_share_of_the_crop(self) -> None:
        ref = EmptyReference(feeder(), threshold=25)
        share = ref.foreground(with_bird(feeder()), Box(130, 110, 60, 60), *FULL)
        assert share == pytest.approx(15 * 12 / (25 * 25), abs=0.08)

    def test_a_whole_frame_exposure_change_is_not_foreground(self) -> None:
        ref = EmptyReference(feeder(), threshold=25)
        darker = (feeder().astype(np.float32) * 0.7).astype(np.uint8)
        assert ref.foreground(darker, Box(120, 100, 80, 80), *FULL) < 0.02
        assert ref.foreground(with_bird(darker), Box(130, 110, 60, 60), *FULL) > 0.2

    def test_a_background_learned_without_a_quiet_spell_is_not_trusted(self) -> None:
        assert EmptyReference.at_visit_open(feeder(), SETTLE_FRAMES - 1, 25) is None
        assert EmptyReference.at_visit_open(None, 1000, 25) is None
        assert EmptyReference.at_visit_open(feeder(), SETTLE_FRAMES, 25) is not None
