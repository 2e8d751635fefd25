"""The motion gate: a cheap per-frame test that wakes the classifier only when something moves.

It works like Frigate's motion detector, on a small grey frame (``motion.height`` pixels high,
~100): Gaussian blur, absolute difference against a running-average background, threshold,
ignore masks, minimum changed area, then the bounding box of what changed (specks removed by a
small opening), scaled back to full-resolution pixels; a dilated frame-to-frame difference
marks where the background must learn slowly. At ~100 px high the gate costs ~0.1 ms per frame
plus the downscale, so it can look at every frame while the classifier sees a few per visit.

Background policy (why it adapts where it does):

* The first frame (and the first after the frame size changes) *is* the background, so start-up
  never counts as motion.
* Where nothing moved the background follows the scene at ``background_alpha`` per frame, so
  shadows, slow light changes and a refilled feeder fade out within a few seconds.
* Where the image changes from one frame to the next (something is moving right now) it adapts
  ``_MOVING_ALPHA_FACTOR`` times slower, so a bird hopping about is not smeared into the
  background mid-visit.
* Where the image differs from the background but stands still it adapts at the normal rate.
  Locally a "ghost" (the empty spot a bird left, when the bird was there as the background was
  learned, e.g. at start-up) looks exactly like a bird that sits still, so both fade within
  ~1/alpha frames. A feeding bird keeps a visit open anyway, because its head moves.
* A change over more than ``max_area`` of the frame is a lighting change (sun, cloud, camera
  exposure), not an animal: the background is re-learned from that frame at once.

:class:`VisitStateMachine` turns the per-frame verdicts into visits: it opens after
``start_frames`` motion frames in a row (one noisy frame is not a visit) and closes after
``close_after_s`` without motion, or after ``max_visit_s``.
"""

from __future__ import annotations

import logging
from typing import Literal

import cv2
import numpy as np

from feederd.config import MotionConfig
from feederd.types import Box, Frame, MotionResult

logger = logging.getLogger(__name__)

_BLUR = (5, 5)
_DILATE_ITERATIONS = 2
_MOVING_ALPHA_FACTOR = 0.1
_BOX_MARGIN = 1

VisitEvent = Literal["open", "close"]


def grey_size(width: int, height: int, motion_height: int) -> tuple[int, int]:
    """(width, height) of the motion frame for an image of ``width`` x ``height``."""
    out_h = min(motion_height, height)
    return max(1, round(width * out_h / height)), out_h


def downscale_grey(image: np.ndarray, motion_height: int) -> np.ndarray:
    """A new grey image ``motion_height`` pixels high (aspect ratio kept) from a BGR or grey one.

    INTER_AREA (averaging, so sensor noise and compression blocks cancel out) is only fast at a
    whole-number scale factor: 1280x720 -> 178x100 costs ~1.7 ms directly but ~0.4 ms as an
    integer-factor reduction followed by a tiny final resize, on the same frame.
    """
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    height, width = grey.shape
    out_w, out_h = grey_size(width, height, motion_height)
    if (out_w, out_h) == (width, height):
        return grey.copy() if grey is image else grey
    factor = height // out_h
    if factor >= 2:
        step_h, step_w = height // factor, width // factor
        grey = cv2.resize(grey[: step_h * factor, : step_w * factor], (step_w, step_h),
                          interpolation=cv2.INTER_AREA)
    return cv2.resize(grey, (out_w, out_h), interpolation=cv2.INTER_AREA)


def rasterise_masks(polygons: list[list[tuple[float, float]]], size: tuple[int, int]
                    ) -> np.ndarray | None:
    """255 where motion counts, 0 inside the ignore polygons (relative 0-1 coordinates).

    ``size`` is (width, height) of the motion frame. ``None`` when there is nothing to ignore,
    so the detector skips the masking step entirely.
    """
    if not polygons:
        return None
    width, height = size
    mask = np.full((height, width), 255, np.uint8)
    scale = np.array([width, height], np.float64)
    shapes = [np.round(np.asarray(poly, np.float64) * scale).astype(np.int32)
              for poly in polygons if len(poly) >= 3]
    cv2.fillPoly(mask, shapes, 0)
    return mask


class MotionDetector:
    """Frame differencing against a running-average background on the small grey frame.

    Not thread-safe: one detector per frame loop. All working images are allocated once per
    frame size and reused.
    """

    _blur: np.ndarray
    _prev: np.ndarray

    def __init__(self, cfg: MotionConfig) -> None:
        self._cfg = cfg
        self._shape: tuple[int, int] | None = None
        self._bg: np.ndarray | None = None
        self._kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
        self.quiet_run = 0  # motion-free frames in a row up to now
        self.quiet_before = 0  # length of the quiet run that preceded the current motion
        self._allocate((1, 1))

    def reset(self) -> None:
        """Forget the background; the next frame becomes the new one (e.g. after a camera gap)."""
        self._bg = None
        self.quiet_run = self.quiet_before = 0

    def detect(self, frame: Frame) -> MotionResult:
        """Compare ``frame`` to the background, then let the background learn from it."""
        grey = self._grey(frame)
        if grey.shape != self._shape:
            self._allocate(grey.shape)
        cv2.GaussianBlur(grey, _BLUR, 0, dst=self._blur)
        if self._bg is None:
            self._bg = self._blur.astype(np.float32)
            np.copyto(self._prev, self._blur)
            return MotionResult(False, 0.0, None)
        try:
            result = self._compare(frame)
        finally:
            self._blur, self._prev = self._prev, self._blur
        if result.moving:
            self.quiet_before = self.quiet_run or self.quiet_before
            self.quiet_run = 0
        else:
            self.quiet_run += 1
        return result

    @property
    def threshold(self) -> int:
        return self._cfg.threshold

    @property
    def grey(self) -> np.ndarray:
        """The blurred small grey image of the last frame (overwritten by the next one)."""
        return self._prev

    def background(self) -> np.ndarray | None:
        """A copy of the background as a small grey image (``None`` before the first frame):
        at a visit's start it is the empty feeder mining compares crops with."""
        return None if self._bg is None else cv2.convertScaleAbs(self._bg)

    def _compare(self, frame: Frame) -> MotionResult:
        assert self._bg is not None
        area = self._changed_area()
        if area > self._cfg.max_area:
            logger.debug("lighting change over %.0f%% of the frame: background re-learned",
                         area * 100)
            np.copyto(self._bg, self._blur)
            return MotionResult(False, area, None)
        if area < self._cfg.min_area:
            cv2.accumulateWeighted(self._blur, self._bg, self._cfg.background_alpha)
            return MotionResult(False, area, None)
        box = self._box(frame.image.shape[1], frame.image.shape[0])
        live = self._adapt_around_motion()
        return MotionResult(True, area, box, live)

    def _grey(self, frame: Frame) -> np.ndarray:
        if frame.grey is not None and frame.grey.shape[0] <= self._cfg.height:
            return frame.grey
        source = frame.grey if frame.grey is not None else frame.image
        return downscale_grey(source, self._cfg.height)

    def _allocate(self, shape: tuple[int, ...]) -> None:
        height, width = shape[:2]
        self._shape = (height, width)
        self._pixels = float(height * width)
        self._blur = np.empty((height, width), np.uint8)
        self._prev = np.empty_like(self._blur)
        self._bg8 = np.empty_like(self._blur)
        self._diff = np.empty_like(self._blur)
        self._changed = np.empty_like(self._blur)
        self._blobs = np.empty_like(self._blur)
        self._moving = np.empty_like(self._blur)
        self._still = np.empty_like(self._blur)
        self._mask = rasterise_masks(self._cfg.ignore_masks, (width, height))
        self._bg = None
        self.quiet_run = self.quiet_before = 0
        logger.debug("motion frame %dx%d", width, height)

    def _changed_area(self) -> float:
        """Fraction of the motion frame that differs from the background (outside masks)."""
        assert self._bg is not None
        cv2.convertScaleAbs(self._bg, dst=self._bg8)
        cv2.absdiff(self._blur, self._bg8, dst=self._diff)
        cv2.threshold(self._diff, self._cfg.threshold, 255, cv2.THRESH_BINARY, dst=self._changed)
        if self._mask is not None:
            cv2.bitwise_and(self._changed, self._mask, dst=self._changed)
        return cv2.countNonZero(self._changed) / self._pixels

    def _box(self, full_width: int, full_height: int) -> Box:
        """Bounding box of what changed, specks removed, in full-resolution pixels.

        A 3x3 opening drops isolated changed pixels (compression noise, a leaf edge) so they do
        not stretch the box across the frame; if nothing survives it (the motion is all thin
        fragments), the box of the raw change is used. Then one motion pixel of margin, since
        blur and threshold shave the faint edges of an animal.
        """
        cv2.morphologyEx(self._changed, cv2.MORPH_OPEN, self._kernel, dst=self._blobs)
        x, y, w, h = cv2.boundingRect(self._blobs)
        if w == 0 or h == 0:
            x, y, w, h = cv2.boundingRect(self._changed)
        height, width = self._blobs.shape
        x0, y0 = max(0, x - _BOX_MARGIN), max(0, y - _BOX_MARGIN)
        x1, y1 = min(width, x + w + _BOX_MARGIN), min(height, y + h + _BOX_MARGIN)
        return _scale_box(x0, y0, x1, y1, self._blobs.shape, full_width, full_height)

    def _adapt_around_motion(self) -> float:
        """Learn slowly where the image moves frame to frame, normally everywhere else;
        -> the share of the frame that changed since the previous frame (outside masks)."""
        assert self._bg is not None
        alpha = self._cfg.background_alpha
        cv2.absdiff(self._blur, self._prev, dst=self._diff)
        cv2.threshold(self._diff, self._cfg.threshold, 255, cv2.THRESH_BINARY, dst=self._moving)
        if self._mask is not None:
            cv2.bitwise_and(self._moving, self._mask, dst=self._still)
            live = cv2.countNonZero(self._still) / self._pixels
        else:
            live = cv2.countNonZero(self._moving) / self._pixels
        cv2.dilate(self._moving, self._kernel, dst=self._moving, iterations=_DILATE_ITERATIONS)
        cv2.bitwise_not(self._moving, dst=self._still)
        cv2.accumulateWeighted(self._blur, self._bg, alpha, mask=self._still)
        cv2.accumulateWeighted(self._blur, self._bg, alpha * _MOVING_ALPHA_FACTOR,
                               mask=self._moving)
        return live


def _scale_box(x0: int, y0: int, x1: int, y1: int, small_shape: tuple[int, ...],
               full_width: int, full_height: int) -> Box:
    """Map a half-open box on the motion frame to full resolution, rounding outwards."""
    sx = full_width / small_shape[1]
    sy = full_height / small_shape[0]
    left, top = int(x0 * sx), int(y0 * sy)
    right = min(full_width, int(np.ceil(x1 * sx)))
    bottom = min(full_height, int(np.ceil(y1 * sy)))
    return Box(left, top, max(1, right - left), max(1, bottom - top))


class VisitStateMachine:
    """Motion frames in, visit boundaries out.

    ``update`` returns ``"open"`` on the frame that completes ``start_frames`` motion frames in a
    row, ``"close"`` once ``close_after_s`` have passed since the last motion frame (or the visit
    reached ``max_visit_s``; motion that goes on then opens a new visit after another
    ``start_frames`` frames), else ``None``. ``first_motion_mono`` is the time of the first
    motion frame of the visit that is opening or open; it stays set after a close until the
    next run of motion starts, so the caller can still read it when handling ``"close"``.
    """

    def __init__(self, cfg: MotionConfig) -> None:
        self._cfg = cfg
        self.active = False
        self.first_motion_mono: float | None = None
        self.last_motion_mono: float | None = None
        self._run = 0

    def update(self, mono: float, moving: bool) -> VisitEvent | None:
        if self.active:
            return self._update_active(mono, moving)
        if not moving:
            if self._run:
                self._run = 0
                self.first_motion_mono = None
            return None
        if self._run == 0:
            self.first_motion_mono = mono
        self._run += 1
        self.last_motion_mono = mono
        if self._run >= self._cfg.start_frames:
            self.active = True
            self._run = 0
            return "open"
        return None

    def end(self) -> VisitEvent | None:
        """Close the open visit, if any: the source finished or the daemon is stopping."""
        if not self.active:
            return None
        self.active = False
        return "close"

    def _update_active(self, mono: float, moving: bool) -> VisitEvent | None:
        assert self.first_motion_mono is not None and self.last_motion_mono is not None
        if moving:
            self.last_motion_mono = mono
        quiet = mono - self.last_motion_mono >= self._cfg.close_after_s
        too_long = mono - self.first_motion_mono >= self._cfg.max_visit_s
        if quiet or too_long:
            self.active = False
            return "close"
        return None
