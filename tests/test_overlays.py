"""Overlay masks suggested from clips: pixels that change in isolated frames only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from feederd.overlays import suggest_masks


def synthetic_clip(frames: int = 120, seed: int = 0) -> list[np.ndarray]:
    """A still scene with a caption that glitches for one frame now and then, and a bird
    that hops about for most of the clip."""
    rng = np.random.default_rng(seed)
    scene = rng.integers(60, 200, (100, 133)).astype(np.int16)
    out = []
    for t in range(frames):
        frame = scene.copy()
        frame[2:9, 4:28] = 240 if t % 17 else 30  # "FPS: 24" -> "FPS: 1" for one frame
        x = 50 + int(20 * np.sin(t / 6))
        frame[60:75, x:x + 15] = 20
        out.append(np.clip(frame + rng.integers(-3, 4, frame.shape), 0, 255).astype(np.uint8))
    return out


def test_a_caption_that_glitches_in_single_frames_is_masked_and_the_bird_is_not() -> None:
    found = suggest_masks([synthetic_clip()])
    ((x0, y0), (x1, _), (_, y1), _) = found.masks[0]
    assert len(found.masks) == 1
    assert (x0, y0) <= (4 / 133, 2 / 100) and (x1, y1) >= (28 / 133, 9 / 100)
    assert x1 < 0.3 and y1 < 0.2


def test_with_several_clips_only_regions_found_in_two_of_them_are_kept() -> None:
    still = [np.full((100, 133), 128, np.uint8)] * 30
    assert suggest_masks([synthetic_clip(seed=1), still]).masks == []
    assert len(suggest_masks([synthetic_clip(seed=1), synthetic_clip(seed=2)]).masks) == 1


@pytest.mark.shared_data
def test_the_shared_clips_fps_caption_is_found_and_nothing_where_the_birds_are(
        shared_data: Path) -> None:
    clips = sorted((shared_data / "video").glob("bird_*.mp4"))
    done = subprocess.run([sys.executable, "-m", "feederd.cli", "suggest-masks", "--json",
                           *map(str, clips)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (mask,) = json.loads(done.stdout)["ignore_masks"]
    xs, ys = [p[0] for p in mask], [p[1] for p in mask]
    # "FPS: 24" sits in the top-left ~70 x 15 pixels of the 320 x 240 frames.
    assert min(xs) == 0 and min(ys) == 0
    assert 70 / 320 <= max(xs) <= 0.3 and 15 / 240 <= max(ys) <= 0.15
