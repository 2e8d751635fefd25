"""Find burned-in overlays (timestamps, "FPS: 24" captions) in a clip, to suggest motion masks.

An overlay's pixels change in *isolated* frames: the caption of the shared clips reads
"FPS: 24", glitches to "FPS: 1" for one frame and comes back. An animal changes the pixels it
covers for many frames in a row, and its own frame-to-frame changes rarely return to exactly
the previous picture. So, on the motion gate's small grey frame, a pixel is an overlay pixel
when it changed at least ``min_events`` times and (nearly) only in isolated frames: different
from the frame before *and* the frame after, while those two agree. Isolated pixels are grown
a little, grouped, and each group becomes a rectangle in ``motion.ignore_masks`` form
(relative 0-1 coordinates), which the user reviews and pastes into the config.

Used by ``feederd suggest-masks CLIP``; the frame loop never runs this.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from feederd.errors import FeederError
from feederd.motion import downscale_grey

logger = logging.getLogger(__name__)

Polygon = list[tuple[float, float]]


@dataclass(frozen=True)
class OverlaySuggestion:
    """Masks for ``motion.ignore_masks`` and the figures behind them."""

    masks: list[Polygon]
    frames: int
    isolated_events: int  # isolated pixel changes inside the suggested masks

    def toml(self) -> str:
        """The ``[motion]`` lines to paste into the config."""
        polygons = ", ".join(
            "[" + ", ".join(f"[{x:.3f}, {y:.3f}]" for x, y in poly) + "]" for poly in self.masks)
        return f"[motion]\nignore_masks = [{polygons}]"


def read_grey_frames(path: Path, motion_height: int) -> Iterator[np.ndarray]:
    """The clip's frames as the motion gate sees them (small, grey, blurred)."""
    if not path.is_file():
        raise FeederError(f"{path}: no such video file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FeederError(f"{path}: OpenCV cannot open this video")
    try:
        while True:
            ok, image = capture.read()
            if not ok:
                return
            yield cv2.GaussianBlur(downscale_grey(image, motion_height), (5, 5), 0)
    finally:
        capture.release()


def suggest_masks(clips: Iterable[Iterable[np.ndarray]], threshold: int = 25,
                  min_events: int = 2, min_isolated_share: float = 0.8, min_pixels: int = 20,
                  min_density: float = 0.3, pad: int = 1) -> OverlaySuggestion:
    """Rectangles around the pixels that change only in isolated frames (see module doc).

    ``clips``: one or more clips of the same camera (frames from :func:`read_grey_frames`).
    A region is kept when it holds at least ``min_pixels`` overlay pixels covering
    ``min_density`` of its rectangle (text is dense; the isolated flickers along a bird's
    outline are not); with several clips, only regions found in at least two of them (an
    overlay stays put, a bird's flicker does not), merged.
    """
    found: list[list[_Rect]] = []
    frames = events = 0
    shape: tuple[int, ...] | None = None
    for greys in clips:
        isolated, changed, n = _count_changes(greys, threshold)
        if n < 3:
            continue
        if shape is not None and isolated.shape != shape:
            raise FeederError("the clips differ in frame size; give clips of one camera")
        shape, frames = isolated.shape, frames + n
        rects = _regions(isolated, changed, min_events, min_isolated_share, min_pixels,
                         min_density, pad)
        events += sum(int(isolated[y0:y1, x0:x1].sum()) for x0, y0, x1, y1 in rects)
        found.append(rects)
    if shape is None:
        raise FeederError("need at least 3 frames to find overlays")
    rects = found[0] if len(found) == 1 else _recurring(found)
    height, width = shape[:2]
    masks = [_rectangle(x0 / width, y0 / height, x1 / width, y1 / height)
             for x0, y0, x1, y1 in rects]
    logger.info("%d frames of %d clip(s): %d overlay region(s)", frames, len(found), len(masks))
    return OverlaySuggestion(masks, frames, events)


_Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 on the small grey frame


def _regions(isolated: np.ndarray, changed: np.ndarray, min_events: int, min_share: float,
             min_pixels: int, min_density: float, pad: int) -> list[_Rect]:
    # Each isolated change is followed by its revert, which counts as a change too.
    share = isolated / np.maximum(changed - isolated, 1)
    raw = ((isolated >= min_events) & (share >= min_share)).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
    grouped = cv2.dilate(raw, kernel, iterations=1)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(grouped)
    inside = np.bincount(labels[raw > 0], minlength=count)
    height, width = raw.shape
    rects: list[_Rect] = []
    for label in range(1, count):
        x, y, w, h = (int(v) for v in stats[label, :4])
        if inside[label] >= min_pixels and inside[label] >= min_density * w * h:
            rects.append((max(0, x - pad), max(0, y - pad), min(width, x + w + pad),
                          min(height, y + h + pad)))
    return rects


def _recurring(per_clip: list[list[_Rect]]) -> list[_Rect]:
    """Regions that overlap a region of another clip, merged with what they overlap."""
    def meets(a: _Rect, b: _Rect) -> bool:
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]

    tagged = [(i, r) for i, rects in enumerate(per_clip) for r in rects]
    merged: list[_Rect] = []
    for i, rect in tagged:
        if not any(j != i and meets(rect, other) for j, other in tagged):
            continue
        for k, kept in enumerate(merged):
            if meets(rect, kept):
                merged[k] = (min(rect[0], kept[0]), min(rect[1], kept[1]),
                             max(rect[2], kept[2]), max(rect[3], kept[3]))
                break
        else:
            merged.append(rect)
    return merged


def _count_changes(greys: Iterable[np.ndarray], threshold: int
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """Per pixel: changes in isolated frames, and changes at all, over the clip."""
    window: list[np.ndarray] = []
    isolated, changed = np.zeros((1, 1), np.int32), np.zeros((1, 1), np.int32)
    frames = 0
    for grey in greys:
        frames += 1
        if window and grey.shape != window[-1].shape:
            raise FeederError("the clip changes frame size; cannot compare its frames")
        window = [*window[-2:], grey.astype(np.int16)]
        if len(window) < 3:
            isolated, changed = np.zeros(grey.shape, np.int32), np.zeros(grey.shape, np.int32)
            continue
        before, now, after = window
        up = np.abs(now - before) > threshold
        isolated += up & (np.abs(now - after) > threshold) & \
            (np.abs(after - before) <= threshold)
        changed += up
    return isolated, changed, frames


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return [(round(x0, 3), round(y0, 3)), (round(x1, 3), round(y0, 3)),
            (round(x1, 3), round(y1, 3)), (round(x0, 3), round(y1, 3))]
