"""Frame sources: the Pi camera, OpenCV (USB, RTSP/HTTP, video files) and image-folder replay.

Only this package talks to picamera2 or to OpenCV's capture API. :func:`open_source` picks the
source from ``[camera]`` and checks what can be checked at once (the file exists and decodes,
the folder has images, picamera2 is installed), so a wrong setting fails at start-up with a
message that names it. A live camera that is absent is not an error: it is retried in the
background, since a USB camera may still be enumerating at boot and an IP camera may still be
booting after the same power cut.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from feederd.capture.base import FrameSource
from feederd.capture.folder import FolderSource
from feederd.capture.opencv import OpenCVFileSource, OpenCVStreamSource, _redact
from feederd.capture.picamera import PiCameraSource, build_picamera_config
from feederd.config import CameraConfig
from feederd.errors import CameraError

__all__ = [
    "FolderSource",
    "FrameSource",
    "OpenCVFileSource",
    "OpenCVStreamSource",
    "PiCameraSource",
    "build_picamera_config",
    "describe_source",
    "is_demo_source",
    "open_source",
]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def open_source(cfg: CameraConfig, motion_height: int,
                demo_clip: Path | None = None) -> FrameSource:
    """The frame source ``cfg`` describes; raises :class:`CameraError` naming what to fix."""
    kind, source = cfg.kind, cfg.source.strip()
    _check_permission(source)
    if kind == "picamera2" or (kind == "auto" and source == "picamera2"):
        return PiCameraSource(cfg, motion_height)
    if kind == "demo" or (kind == "auto" and source == "demo"):
        return _demo(cfg, motion_height, demo_clip)
    if kind == "folder":
        return FolderSource(Path(source).expanduser(), cfg, motion_height)
    if kind == "video":
        return OpenCVFileSource(Path(source).expanduser(), cfg, motion_height)
    if source.isdigit():
        return OpenCVStreamSource(int(source), cfg, motion_height)
    if _URL.match(source):
        return OpenCVStreamSource(source, cfg, motion_height)
    path = Path(source).expanduser()
    if path.is_dir():
        if kind == "auto":
            return FolderSource(path, cfg, motion_height)
        raise CameraError(f"camera.source = {source!r} is a folder, which camera.kind = "
                          f"{kind!r} cannot read; set camera.kind to 'folder' or 'auto'")
    if path.is_file():
        return OpenCVFileSource(path, cfg, motion_height)
    raise CameraError(
        f"camera.source = {source!r}: no such file or folder. Give 'demo', a device index "
        "('0'), an rtsp:// or http:// URL, a video file, an image folder, or 'picamera2'"
    )


def is_demo_source(cfg: CameraConfig) -> bool:
    """The bundled cartoon clip, not a camera (the default when nothing is configured)."""
    return cfg.kind == "demo" or (cfg.kind == "auto" and cfg.source.strip() == "demo")


def describe_source(cfg: CameraConfig) -> str:
    """What a log line or the doctor should say is being read (passwords hidden)."""
    if is_demo_source(cfg):
        return "the bundled demo clip (cartoon birds, not a camera)"
    if cfg.kind == "picamera2" or cfg.source.strip() == "picamera2":
        return "the Pi camera (picamera2)"
    source = cfg.source.strip()
    if source.isdigit():
        return f"USB camera {source} (/dev/video{source})"
    return f"{cfg.kind} {_redact(source)}"


def _check_permission(source: str) -> None:
    """A file, folder or /dev/videoN this user may not read fails now, naming it: OpenCV
    would only say it cannot decode, and a live camera would be retried for ever."""
    path = Path(f"/dev/video{int(source)}") if source.isdigit() else Path(source).expanduser()
    if source in ("demo", "picamera2") or _URL.match(source) or not path.exists():
        return
    need = os.R_OK | (os.X_OK if path.is_dir() else os.W_OK if source.isdigit() else 0)
    if os.access(path, need):
        return
    fix = ("add the user to the 'video' group (`sudo usermod -aG video USER`, then log in "
           "again)" if source.isdigit() else "fix its permissions or owner")
    raise CameraError(f"camera.source = {source!r}: permission denied on {path} for this "
                      f"user (uid {os.getuid()}); {fix}")


def _demo(cfg: CameraConfig, motion_height: int, demo_clip: Path | None) -> FrameSource:
    if demo_clip is None or not demo_clip.is_file():
        raise CameraError(
            f"camera.source = 'demo': the bundled demo clip is missing ({demo_clip}); reinstall "
            "feederd, or set camera.source to a camera, video file or image folder"
        )
    return OpenCVFileSource(demo_clip, cfg, motion_height)
