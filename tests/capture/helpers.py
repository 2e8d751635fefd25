"""Helpers for the capture tests (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from feederd.capture.base import FrameSource
from feederd.types import Frame


def write_clip(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """Write BGR frames as an MJPG AVI (decodable by every FFmpeg build)."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), "this OpenCV cannot write MJPG AVI files"
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def numbered_frames(count: int, width: int = 160, height: int = 120) -> list[np.ndarray]:
    """Frames whose mean brightness encodes their index (10 + 20 * i), to check order."""
    return [np.full((height, width, 3), 10 + 20 * i, np.uint8) for i in range(count)]


def poll(condition: Callable[[], bool], read: Callable[[], object], timeout_s: float = 20.0
         ) -> list[object]:
    """Call ``read`` until ``condition`` holds; returns what ``read`` gave. Fails on timeout."""
    results: list[object] = []
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        results.append(read())
    return results


def read_all(source: FrameSource, limit: int = 1000) -> list[Frame]:
    """Read until the source is finished (or ``limit`` frames); skips the Nones."""
    frames: list[Frame] = []
    while not source.finished and len(frames) < limit:
        frame = source.read()
        if frame is not None:
            frames.append(frame)
    return frames


def first_frame(source: FrameSource) -> Frame:
    """Read until a frame comes (a live source may give None for a while)."""
    got: list[Frame] = []

    def read() -> object:
        frame = source.read()
        if frame is not None:
            got.append(frame)
        return frame

    poll(lambda: bool(got), read)
    return got[0]
