"""Frigate's motion detector, as the peer the motion-gate benchmarks compare against.

Written from Frigate's source (``frigate/motion/improved_motion.py``, ``ImprovedMotionDetector``,
at commit e3fa70189324, MIT licence) with its default ``MotionConfig``: 100-px-high frame,
INTER_NEAREST resize, contrast stretch over the last 50 frames' 4th/96th percentiles,
``scipy.ndimage.gaussian_filter(sigma=1, radius=1)``, threshold 30, one dilation, external
contours over ``contour_area`` 10, calibration while more than 5 % of the frame changes or more
than 4 boxes, lightning threshold 0.8, frame_alpha 0.01 (0.2 while calibrating), and the
background learning only after 10 consecutive motion frames. PTZ handling, masks and debug
images are left out: they are off for a fixed feeder camera.

Frigate receives the Y plane of its YUV frames; feederd's OpenCV sources give BGR, so the
adapter converts to grey first, as a Frigate user feeding BGR frames would. The adapter
returns a :class:`feederd.types.MotionResult` so the same visit logic runs behind either gate.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from feederd.types import Box, Frame, MotionResult


class ImprovedMotion:
    """The detection core of Frigate's ``ImprovedMotionDetector`` for one camera."""

    def __init__(self, frame_shape: tuple[int, int], frame_height: int = 100,
                 threshold: int = 30, contour_area: int = 10,
                 lightning_threshold: float = 0.8, frame_alpha: float = 0.01) -> None:
        self.frame_shape = frame_shape
        self.resize_factor = frame_shape[0] / frame_height
        self.size = (frame_height, frame_height * frame_shape[1] // frame_shape[0])
        self.avg_frame = np.zeros(self.size, np.float32)
        self.motion_frame_count = 0
        self.calibrating = True
        self.contrast_values = np.zeros((50, 2), np.uint8)
        self.contrast_values[:, 1:2] = 255
        self.contrast_index = 0
        self.threshold = threshold
        self.contour_area = contour_area
        self.lightning_threshold = lightning_threshold
        self.frame_alpha = frame_alpha

    def detect(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        resized = cv2.resize(gray, dsize=(self.size[1], self.size[0]),
                             interpolation=cv2.INTER_NEAREST)
        resized = self._contrast(resized)
        resized = gaussian_filter(resized, sigma=1, radius=1)
        delta = cv2.absdiff(resized, cv2.convertScaleAbs(self.avg_frame))
        thresh = cv2.threshold(delta, self.threshold, 255, cv2.THRESH_BINARY)[1]
        dilated = cv2.dilate(thresh, None, iterations=1)  # type: ignore[call-overload]
        contours, _ = cv2.findContours(dilated, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        boxes: list[tuple[int, int, int, int]] = []
        total = 0.0
        for contour in contours:
            area = cv2.contourArea(contour)
            total += area
            if area > self.contour_area:
                x, y, w, h = cv2.boundingRect(contour)
                f = self.resize_factor
                boxes.append((int(x * f), int(y * f), int((x + w) * f), int((y + h) * f)))
        pct = total / (self.size[0] * self.size[1])
        if pct < 0.05 and len(boxes) <= 4:
            self.calibrating = False
        if self.calibrating or pct > self.lightning_threshold:
            self.calibrating = True
        self._learn(resized, bool(boxes))
        return boxes

    def _contrast(self, resized: np.ndarray) -> np.ndarray:
        low = np.percentile(resized, 4).astype(np.uint8)
        high = np.percentile(resized, 96).astype(np.uint8)
        if low >= high:
            return resized
        self.contrast_values[self.contrast_index] = [low, high]
        self.contrast_index = (self.contrast_index + 1) % len(self.contrast_values)
        avg_min, avg_max = np.mean(self.contrast_values, axis=0)
        clipped = np.clip(resized, avg_min, avg_max)
        return (((clipped - avg_min) / (avg_max - avg_min)) * 255).astype(np.uint8)

    def _learn(self, resized: np.ndarray, moving: bool) -> None:
        alpha = 0.2 if self.calibrating else self.frame_alpha
        if moving:
            self.motion_frame_count += 1
            if self.motion_frame_count >= 10:
                cv2.accumulateWeighted(resized, self.avg_frame, alpha)
        else:
            cv2.accumulateWeighted(resized, self.avg_frame, alpha)
            self.motion_frame_count = 0


class _NoEvidence:
    """What the pipeline asks of feederd's detector for mining evidence (the empty-feeder
    background at a visit's start): the peers offer none, so mining there works without it,
    and feederd's side alone pays for computing it."""

    quiet_before = 0
    threshold = 30
    grey = np.zeros((1, 1), np.uint8)

    def background(self) -> np.ndarray | None:
        return None


class FrigateGate(_NoEvidence):
    """Frigate's detector behind feederd's ``detect(frame) -> MotionResult`` interface."""

    def __init__(self) -> None:
        self._detector: ImprovedMotion | None = None

    def detect(self, frame: Frame) -> MotionResult:
        gray = cv2.cvtColor(frame.image, cv2.COLOR_BGR2GRAY)
        if self._detector is None or self._detector.frame_shape != gray.shape[:2]:
            self._detector = ImprovedMotion((gray.shape[0], gray.shape[1]))
        boxes = self._detector.detect(gray)
        if not boxes or self._detector.calibrating:
            return MotionResult(False, 0.0, None)
        x0 = min(b[0] for b in boxes)
        y0 = min(b[1] for b in boxes)
        x1 = max(b[2] for b in boxes)
        y1 = max(b[3] for b in boxes)
        area = (x1 - x0) * (y1 - y0) / (gray.shape[0] * gray.shape[1])
        return MotionResult(True, float(area), Box(x0, y0, x1 - x0, y1 - y0))


class NoGate(_NoEvidence):
    """No motion gate: every frame counts as motion, classified at ``classify_fps``.

    What the pipeline would cost if the classifier's rate cap were the only saving; the
    difference to the real gate is what motion detection saves on an empty feeder.
    """

    def detect(self, frame: Frame) -> MotionResult:
        return MotionResult(True, 1.0, None)
