"""The Raspberry Pi camera through picamera2 (libcamera).

Two streams come out of the ISP for the price of one capture: ``main`` (``camera.width`` x
``height``, ``RGB888``, which numpy sees in BGR order, as OpenCV wants) for the classifier, and
``lores`` (``YUV420``) whose Y plane *is* a grey image, so the motion gate gets its input
without a colour conversion.

picamera2 is imported only when this source is opened: it exists only on Raspberry Pi OS (from
apt, built against the system libcamera), and nothing else in feederd needs it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from feederd.capture.base import MAX_BLOCK_S, Backoff
from feederd.config import CameraConfig
from feederd.errors import CameraError
from feederd.motion import downscale_grey
from feederd.types import Frame

logger = logging.getLogger(__name__)

# Enough for libcamera to keep streaming while we hold one request and picamera2 queues one;
# each 1280x720 RGB888 buffer is 2.8 MB of scarce CMA memory on a Pi Zero 2.
BUFFER_COUNT = 4
_WAIT_S = MAX_BLOCK_S / 2
# No frame for this long means the camera (or its cable) is gone: reopen it.
_STALL_S = 10.0

INSTALL_HINT = (
    "picamera2 is not installed for this Python. On Raspberry Pi OS: "
    "`sudo apt install python3-picamera2`, and create feederd's virtual environment with "
    "`python3 -m venv --system-site-packages` so it can see the system package "
    "(pip cannot build picamera2's libcamera bindings)."
)


def _even(value: int) -> int:
    return value - value % 2


def build_picamera_config(cfg: CameraConfig) -> dict[str, Any]:
    """Keyword arguments for ``Picamera2.create_video_configuration(...)``.

    Sizes are rounded down to even numbers, as libcamera requires. Raises :class:`CameraError`
    if the lores stream would be larger than the main one, which libcamera refuses.
    """
    main = (_even(cfg.width), _even(cfg.height))
    lores = (_even(cfg.lores_width), _even(cfg.lores_height))
    if lores[0] > main[0] or lores[1] > main[1]:
        raise CameraError(
            f"camera.lores_width x lores_height ({lores[0]}x{lores[1]}) must not exceed "
            f"camera.width x height ({main[0]}x{main[1]}); lower the lores size"
        )
    return {
        "main": {"size": main, "format": "RGB888"},
        "lores": {"size": lores, "format": "YUV420"},
        "controls": {"FrameRate": cfg.fps},
        "buffer_count": BUFFER_COUNT,
        "display": None,
        "encode": None,
    }


def import_picamera2() -> Any:
    """The ``Picamera2`` class, or a :class:`CameraError` saying how to install it."""
    try:
        from picamera2 import Picamera2
    except ImportError as exc:
        raise CameraError(f"camera.kind = picamera2: {INSTALL_HINT}") from exc
    return Picamera2


class PiCameraSource:
    """Frames from the Pi camera; reopens it with backoff if it stops delivering."""

    def __init__(self, cfg: CameraConfig, motion_height: int) -> None:
        self._picamera2 = import_picamera2()
        self._cfg = cfg
        self._motion_height = motion_height
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s)
        self._cam: Any = None
        self._job: Any = None
        self._retry_at = 0.0
        self._last_frame = time.monotonic()
        self._seq = 0
        try:
            self._open()
        except Exception as exc:
            raise CameraError(
                f"picamera2 cannot start the camera: {exc}. Check the ribbon cable and that "
                "`rpicam-hello --list-cameras` lists it"
            ) from exc

    @property
    def finished(self) -> bool:
        return False

    @property
    def fps(self) -> float:
        return self._cfg.fps

    def read(self) -> Frame | None:
        if self._cam is None:
            self._reopen_when_due()
            return None
        request = self._next_request()
        if request is None:
            return None
        try:
            return self._frame(request)
        finally:
            request.release()

    def close(self) -> None:
        cam, self._cam, self._job = self._cam, None, None
        if cam is None:
            return
        try:
            cam.stop()
        finally:
            cam.close()

    def _open(self) -> None:
        cam = self._picamera2()
        try:
            cam.configure(cam.create_video_configuration(**build_picamera_config(self._cfg)))
            cam.start()
        except Exception:
            cam.close()
            raise
        lores = cam.camera_configuration()["lores"]["size"]
        self._lores_size: tuple[int, int] = (int(lores[0]), int(lores[1]))
        self._cam = cam
        self._last_frame = time.monotonic()

    def _next_request(self) -> Any:
        """A completed request, or None after waiting ``_WAIT_S``; never loses a request.

        The capture job stays pending across calls: abandoning a timed-out job would let it
        take a request later that nobody releases, and libcamera would run out of buffers.
        """
        if self._job is None:
            self._job = self._cam.capture_request(wait=False)
        try:
            request = self._cam.wait(self._job, timeout=_WAIT_S)
        except TimeoutError:
            if time.monotonic() - self._last_frame > _STALL_S:
                self._lose(f"no frame for {_STALL_S:.0f} s")
            return None
        except Exception as exc:
            self._lose(str(exc))
            return None
        self._job = None
        self._last_frame = time.monotonic()
        return request

    def _frame(self, request: Any) -> Frame:
        image = request.make_array("main")
        yuv = request.make_array("lores")
        width, height = self._lores_size
        grey = downscale_grey(yuv[:height, :width], self._motion_height)
        seq = self._seq
        self._seq += 1
        return Frame(seq, time.monotonic(), time.time(), image, grey)

    def _lose(self, why: str) -> None:
        delay = self._backoff.next_delay()
        logger.warning("Pi camera: %s; reopening in %.1f s", why, delay)
        try:
            self._cam.cancel_all_and_flush()
            self.close()
        except Exception as exc:
            logger.warning("Pi camera: error while closing it: %s", exc)
            self._cam, self._job = None, None
        self._retry_at = time.monotonic() + delay

    def _reopen_when_due(self) -> None:
        remaining = self._retry_at - time.monotonic()
        if remaining > 0:
            time.sleep(min(remaining, _WAIT_S))
            return
        try:
            self._open()
        except Exception as exc:
            delay = self._backoff.next_delay()
            logger.warning("Pi camera: cannot reopen (%s); retrying in %.1f s", exc, delay)
            self._retry_at = time.monotonic() + delay
            return
        logger.info("Pi camera: frames flowing again")
        self._backoff.reset()
