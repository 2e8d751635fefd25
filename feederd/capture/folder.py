"""Image-folder replay: a folder of photos played as if animals visited an empty feeder.

The timeline is: ``folder_gap_s`` of plain mid-grey "empty feeder", then the first image for
``frames_per_image`` frames, another gap, the next image, ..., and a last gap, so each image
forms a visit of its own and the last visit closes before the replay ends. Each shown frame is
shifted by a small deterministic jitter (up to ``jitter_px``), as a moving animal would be.

Every frame has the configured size. An image is scaled to fit ``folder_fill`` (default 0.8)
of the frame in each direction and centred on the same grey, like an animal in front of a
plain background: its arrival then changes at most ~64% of the frame, which the motion gate
takes for an animal and not for a lighting change, and the motion box frames the photo.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from feederd.capture.base import Pacer
from feederd.config import CameraConfig
from feederd.errors import CameraError
from feederd.motion import downscale_grey
from feederd.types import Frame

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff",
                            ".ppm", ".pgm", ".pbm", ".jp2"})
BACKGROUND_GREY = 128


@dataclass(frozen=True, slots=True)
class _Shown:
    """One step of the timeline: an image (with its jitter) or a gap (``path`` is None)."""

    path: Path | None
    picture: np.ndarray | None = None
    offset: tuple[int, int] = (0, 0)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` in sorted order (recursive); warns once per other file."""
    if not folder.is_dir():
        raise CameraError(f"camera.source: {folder} is not a folder")
    files = sorted((p for p in folder.rglob("*") if p.is_file()),
                   key=lambda p: p.relative_to(folder).parts)
    images = []
    for path in files:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            logger.warning("%s: not an image (by its suffix); skipped", path)
    if not images:
        raise CameraError(f"camera.source: no images in {folder} (looked for "
                          f"{', '.join(sorted(IMAGE_SUFFIXES))}); add some or choose another "
                          "source")
    return images


def fit_image(image: np.ndarray, width: int, height: int, fill: float = 0.8) -> np.ndarray:
    """``image`` scaled (aspect kept) to fit ``fill`` of a ``width`` x ``height`` frame."""
    scale = min(width * fill / image.shape[1], height * fill / image.shape[0])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    shrink = scale < 1
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def jitter(image_index: int, shown: int, jitter_px: int) -> tuple[int, int]:
    """The (dx, dy) shift of the ``shown``-th frame of an image: deterministic, |d| <= jitter."""
    if jitter_px == 0:
        return 0, 0
    rng = np.random.default_rng([image_index, shown])
    dx, dy = rng.integers(-jitter_px, jitter_px + 1, size=2)
    return int(dx), int(dy)


class FolderSource:
    """Replays the images of a folder with empty-feeder gaps; see the module docstring."""

    def __init__(self, folder: Path, cfg: CameraConfig, motion_height: int) -> None:
        self._folder = folder
        self._cfg = cfg
        self._motion_height = motion_height
        self._paths = list_images(folder)
        self._gap_frames = round(cfg.folder_gap_s * cfg.fps)
        self._background = np.full((cfg.height, cfg.width, 3), BACKGROUND_GREY, np.uint8)
        self._unreadable: set[Path] = set()
        self._require_one_image()
        self._timeline = self._steps()
        self._pacer = Pacer(cfg.fps) if cfg.realtime else None
        self._seq = 0
        self._finished = False
        self.current_path: Path | None = None
        logger.info("replaying %d images from %s", len(self._paths), folder)

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def fps(self) -> float:
        return self._cfg.fps

    @property
    def paths(self) -> list[Path]:
        """The images that will be shown, in order."""
        return list(self._paths)

    def read(self) -> Frame | None:
        if self._finished or (self._pacer is not None and not self._pacer.wait()):
            return None
        step = next(self._timeline, None)
        if step is None:
            self._finished = True
            self.current_path = None
            return None
        self.current_path = step.path
        image = self._render(step)
        seq = self._seq
        self._seq += 1
        grey = downscale_grey(image, self._motion_height)
        return Frame(seq, seq / self._cfg.fps, time.time(), image, grey)

    def close(self) -> None:
        self._finished = True
        self._timeline.close()

    def _steps(self) -> Generator[_Shown, None, None]:
        gap = _Shown(None)
        while True:
            shown_any = False
            for index, path in enumerate(self._paths):
                yield from (gap for _ in range(self._gap_frames))
                picture = self._load(path)
                if picture is None:
                    continue
                shown_any = True
                for shown in range(self._cfg.frames_per_image):
                    yield _Shown(path, picture, jitter(index, shown, self._cfg.jitter_px))
            yield from (gap for _ in range(self._gap_frames))
            if not self._cfg.loop:
                return
            if not shown_any:
                logger.error("%s: none of the images could be read; stopping the replay",
                             self._folder)
                return

    def _require_one_image(self) -> None:
        """Fail at start-up, like an empty folder, when not one image decodes: a replay of
        nothing but grey would otherwise end quietly with exit 0."""
        if any(self._load(path) is not None for path in self._paths):
            return
        raise CameraError(f"camera.source: none of the {len(self._paths)} image file(s) in "
                          f"{self._folder} can be decoded (e.g. {self._paths[0].name}); are "
                          "they images OpenCV reads (JPEG, PNG, BMP, WebP, TIFF)?")

    def _load(self, path: Path) -> np.ndarray | None:
        if path in self._unreadable:
            return None
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            logger.warning("%s: cannot decode this image; skipped", path)
            self._unreadable.add(path)
            return None
        return fit_image(image, self._cfg.width, self._cfg.height, self._cfg.folder_fill)

    def _render(self, step: _Shown) -> np.ndarray:
        frame = self._background.copy()
        if step.picture is None:
            return frame
        return place(frame, step.picture, step.offset)


def place(frame: np.ndarray, picture: np.ndarray, offset: tuple[int, int] = (0, 0)
          ) -> np.ndarray:
    """Paste ``picture`` centred on ``frame`` (in place), shifted by ``offset``, kept inside.

    feeder-sync renders base photos as device frames with it (see ``feederd.sync.domain``).
    """
    height, width = picture.shape[:2]
    frame_h, frame_w = frame.shape[:2]
    dx, dy = offset
    x0 = min(max(0, (frame_w - width) // 2 + dx), frame_w - width)
    y0 = min(max(0, (frame_h - height) // 2 + dy), frame_h - height)
    frame[y0:y0 + height, x0:x0 + width] = picture
    return frame
