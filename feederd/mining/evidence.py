"""Evidence about a crop that does not come from the model: does it look like the empty feeder?

A negative prediction is not evidence that nothing is there: on the shared clips the model's
"nothing" frames were mostly its own misses of a titmouse. So mining asks the camera instead.
When a visit opens, the motion gate's background has just been learned from the empty
feeder; :class:`EmptyReference` keeps that small grey picture (~13 kB at 100 px high) for the
visit and measures, per classified crop, the share of its pixels that differ from it. A crop
of the empty feeder scores near 0, a crop with a bird in it scores its silhouette's share.

The reference is only trusted when the scene had been still for a while before the visit
(:data:`SETTLE_FRAMES` background updates); a replay that starts with a bird on the tray has
no empty feeder to compare with, and then no frame of that visit counts as empty.
"""

from __future__ import annotations

import cv2
import numpy as np

from feederd.types import Box

SETTLE_FRAMES = 20
"""Quiet frames before a visit after which the background is taken as the empty feeder."""


class EmptyReference:
    """The empty feeder of one visit, on the motion gate's small grey frame."""

    def __init__(self, background: np.ndarray, threshold: int) -> None:
        if background.ndim != 2 or background.size == 0:
            raise ValueError(f"expected a small grey background, got shape {background.shape}")
        self._ref = background.astype(np.float32)
        self._threshold = float(threshold)

    @classmethod
    def at_visit_open(cls, background: np.ndarray | None, quiet_frames: int,
                      threshold: int) -> EmptyReference | None:
        """The visit's reference, or ``None`` when the background cannot be trusted."""
        if background is None or quiet_frames < SETTLE_FRAMES:
            return None
        return cls(background, threshold)

    def foreground(self, grey: np.ndarray, box: Box, width: int, height: int) -> float:
        """Share of ``box`` (full-resolution pixels of a ``width`` x ``height`` frame) where
        the small grey ``grey`` differs from the empty feeder, exposure change discounted."""
        if grey.shape != self._ref.shape:
            return 1.0  # the camera changed size mid-visit: claim nothing is empty
        rows, cols = grey.shape
        x0, x1 = _span(box.x, box.w, width, cols)
        y0, y1 = _span(box.y, box.h, height, rows)
        if x1 <= x0 or y1 <= y0:
            return 0.0
        ref = self._ref[y0:y1, x0:x1]
        now = grey[y0:y1, x0:x1].astype(np.float32)
        # Auto-exposure brightens or darkens the whole picture when a dark bird arrives:
        # compare after matching the overall brightness (median ratio over the frame).
        gain = float(np.median(grey.astype(np.float32) / np.maximum(self._ref, 1.0)))
        diff = cv2.absdiff(now, ref * max(gain, 1e-3))
        return float(np.count_nonzero(diff > self._threshold)) / diff.size


def _span(start: int, length: int, full: int, small: int) -> tuple[int, int]:
    """A full-resolution interval mapped onto ``small`` cells, clipped to the frame."""
    scale = small / full
    return max(0, int(start * scale)), min(small, int(np.ceil((start + length) * scale)))
