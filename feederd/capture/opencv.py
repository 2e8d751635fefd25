"""OpenCV sources: a video file replayed in media time, and live cameras (USB, RTSP, HTTP).

A live camera is read by a thread of its own that keeps only the newest frame: a slow consumer
then gets fresh frames instead of a growing backlog (the skipped ones are counted in
``dropped``), and ``read()`` never waits on a stalled network or a reconnect for longer than
half a second. When the camera vanishes the thread closes it and retries with exponential
backoff, one warning per attempt and one info line on recovery; the daemon never sees an
exception.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from feederd.capture.base import MAX_BLOCK_S, Backoff, Pacer
from feederd.config import CameraConfig
from feederd.errors import CameraError
from feederd.motion import downscale_grey
from feederd.types import Frame

logger = logging.getLogger(__name__)

# FFmpeg's own defaults wait 30 s on a dead RTSP/HTTP camera; the reader thread should notice
# sooner so that the reconnect (and its log line) comes promptly.
_STREAM_TIMEOUT_MS = 5000
_WAIT_FOR_FRAME_S = MAX_BLOCK_S / 2
_JOIN_S = 2.0


def _usable_fps(value: float) -> bool:
    return bool(np.isfinite(value)) and 0 < value <= 240


class OpenCVFileSource:
    """A video file replayed frame by frame; ``mono`` is media time (``seq / fps``).

    Replaying as fast as possible therefore forms the same visits as replaying at native speed
    (``camera.realtime``), which only adds sleeps.
    """

    def __init__(self, path: Path, cfg: CameraConfig, motion_height: int) -> None:
        self._path = path
        self._cfg = cfg
        self._motion_height = motion_height
        self._cap, first = self._open()
        native = self._cap.get(cv2.CAP_PROP_FPS)
        self._fps = native if _usable_fps(native) else cfg.fps
        if not _usable_fps(native):
            logger.warning("%s: no usable frame rate in the file; assuming camera.fps = %g",
                           path, cfg.fps)
        self._pending: np.ndarray | None = first
        self._pacer = Pacer(self._fps) if cfg.realtime else None
        self._seq = 0
        self._finished = False

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def fps(self) -> float:
        return self._fps

    def read(self) -> Frame | None:
        if self._finished or (self._pacer is not None and not self._pacer.wait()):
            return None
        image = self._next_image()
        if image is None:
            return None
        seq = self._seq
        self._seq += 1
        grey = downscale_grey(image, self._motion_height)
        return Frame(seq, seq / self._fps, time.time(), image, grey)

    def close(self) -> None:
        self._cap.release()
        self._finished = True

    def _open(self) -> tuple[cv2.VideoCapture, np.ndarray]:
        """Open the file and decode its first frame, so a bad file fails now, not later."""
        if not self._path.is_file():
            raise CameraError(f"camera.source: video file {self._path} does not exist; give an "
                              "existing file, an image folder, a device index or a URL")
        cap = cv2.VideoCapture(str(self._path))
        ok, first = cap.read() if cap.isOpened() else (False, None)
        if not ok or first is None:
            cap.release()
            raise CameraError(f"camera.source: cannot decode video file {self._path}; is it a "
                              "video in a format FFmpeg knows (mp4, avi, mkv)? Try playing it "
                              "with ffplay")
        return cap, first

    def _next_image(self) -> np.ndarray | None:
        if self._pending is not None:
            image, self._pending = self._pending, None
            return image
        ok, image = self._cap.read()
        if ok and image is not None:
            return image
        if not self._cfg.loop:
            logger.info("%s: end of video after %d frames", self._path, self._seq)
            self._finished = True
            return None
        self._cap.release()
        try:
            self._cap, first = self._open()
        except CameraError as exc:
            logger.error("%s: cannot loop: %s", self._path, exc)
            self._finished = True
            return None
        return first


class OpenCVStreamSource:
    """A live camera: a V4L2 device index or an RTSP/HTTP URL, read by a background thread.

    ``failures`` counts failed connection attempts since frames last flowed and
    ``retry_delay_s`` is the wait before the next one; both are for status and tests.
    """

    def __init__(self, target: int | str, cfg: CameraConfig, motion_height: int) -> None:
        self._target = target
        self._name = f"device {target}" if isinstance(target, int) else _redact(target)
        self._cfg = cfg
        self._motion_height = motion_height
        self._fps = cfg.fps
        self._cond = threading.Condition()
        self._latest: tuple[np.ndarray, float, float] | None = None
        self._stop = threading.Event()
        self._seq = 0
        self.dropped = 0
        self.failures = 0
        self.retry_delay_s = 0.0
        self.connected = False
        self._ever_connected = False
        self._thread = threading.Thread(target=self._run, name=f"capture {self._name}",
                                         daemon=True)
        self._thread.start()

    @property
    def finished(self) -> bool:
        return False

    @property
    def fps(self) -> float:
        return self._fps

    def read(self) -> Frame | None:
        with self._cond:
            if self._latest is None:
                self._cond.wait(_WAIT_FOR_FRAME_S)
            item, self._latest = self._latest, None
        if item is None:
            return None
        image, mono, wall = item
        seq = self._seq
        self._seq += 1
        return Frame(seq, mono, wall, image, downscale_grey(image, self._motion_height))

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(_JOIN_S)
            if self._thread.is_alive():
                logger.warning("camera %s: reader still blocked in OpenCV; leaving it behind",
                               self._name)

    def _run(self) -> None:
        """Connect, pump frames until the camera fails, back off, repeat until closed."""
        backoff = Backoff(self._cfg.reconnect_min_s, self._cfg.reconnect_max_s)
        while not self._stop.is_set():
            cap = self._connect()
            frames = 0
            if cap is not None:
                frames = self._pump(cap)
                cap.release()
            self.connected = False
            if self._stop.is_set():
                return
            if frames:
                backoff.reset()
            self.failures += 1
            self.retry_delay_s = backoff.next_delay()
            if frames:
                logger.warning("camera %s: stopped delivering frames; reconnecting in %.1f s",
                               self._name, self.retry_delay_s)
            else:
                logger.warning("camera %s: no frames (attempt %d); retrying in %.1f s. %s",
                               self._name, self.failures, self.retry_delay_s, self._hint())
            self._stop.wait(self.retry_delay_s)

    def _hint(self) -> str:
        if isinstance(self._target, int):
            return "Is the USB camera plugged in (ls /dev/video*) and free (not used elsewhere)?"
        return "Is the camera powered and on the network, and is the URL right?"

    def _connect(self) -> cv2.VideoCapture | None:
        if isinstance(self._target, int):
            cap = cv2.VideoCapture(self._target)
            # Most USB webcams only reach 720p at a useful rate in MJPG; others ignore this.
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*"MJPG"))
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self._cfg.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self._cfg.height)
            cap.set(cv2.CAP_PROP_FPS, self._cfg.fps)
        else:
            cap = cv2.VideoCapture(self._target, cv2.CAP_FFMPEG, [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, _STREAM_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC, _STREAM_TIMEOUT_MS,
            ])
        if not cap.isOpened():
            cap.release()
            return None
        native = cap.get(cv2.CAP_PROP_FPS)
        self._fps = native if _usable_fps(native) else self._cfg.fps
        self.connected = True
        logger.debug("camera %s: opened", self._name)
        return cap

    def _pump(self, cap: cv2.VideoCapture) -> int:
        """Hand frames over until the camera fails or we are closed; returns how many."""
        frames = 0
        while not self._stop.is_set():
            ok, image = cap.read()
            if not ok or image is None:
                break
            if frames == 0:
                self._first_frame(image)
            frames += 1
            with self._cond:
                if self._latest is not None:
                    self.dropped += 1
                self._latest = (image, time.monotonic(), time.time())
                self._cond.notify()
        return frames


    def _first_frame(self, image: np.ndarray) -> None:
        """One info line when frames start flowing: on the first connection or a recovery."""
        if self.failures:
            logger.info("camera %s: frames flowing again after %d failed attempt(s)",
                        self._name, self.failures)
        elif not self._ever_connected:
            logger.info("camera %s: streaming %dx%d at %.3g fps", self._name,
                        image.shape[1], image.shape[0], self._fps)
        self._ever_connected = True
        self.failures = 0
        self.retry_delay_s = 0.0


def _redact(url: str) -> str:
    """The URL without a password, for logs (rtsp://user:secret@host -> rtsp://user:***@host)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.partition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
