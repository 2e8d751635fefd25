"""Real inputs for the capture tests: small video files and a live MJPEG-over-HTTP camera."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from feederd.config import CameraConfig

from .helpers import numbered_frames, write_clip


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A 5-frame, 10 fps, 160x120 clip."""
    return write_clip(tmp_path / "clip.avi", numbered_frames(5))


@pytest.fixture
def fast_cfg() -> Callable[..., CameraConfig]:
    """CameraConfig with replay as fast as possible and short reconnect delays."""
    def make(**overrides: object) -> CameraConfig:
        values: dict[str, object] = {"realtime": False, "reconnect_min_s": 0.05,
                                     "reconnect_max_s": 0.2}
        values.update(overrides)
        return CameraConfig(**values)
    return make


class MjpegCamera:
    """An IP camera on 127.0.0.1 streaming multipart MJPEG; it can be stopped and restarted."""

    def __init__(self) -> None:
        self.port = 0
        self._server: _Server | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> None:
        server = _Server(("127.0.0.1", self.port), _StreamHandler)
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stopping = True
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    stopping = False


class _StreamHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        jpeg = cv2.imencode(".jpg", np.full((120, 160, 3), 90, np.uint8))[1].tobytes()
        part = (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                % len(jpeg)) + jpeg + b"\r\n"
        try:
            while not getattr(self.server, "stopping", False):
                self.wfile.write(part)
                time.sleep(0.04)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def ip_camera() -> Iterator[MjpegCamera]:
    camera = MjpegCamera()
    yield camera
    camera.stop()
