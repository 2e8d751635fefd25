"""open_source: which source each [camera] setting opens, and the errors that name the fix."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from feederd.capture import (
    FolderSource,
    OpenCVFileSource,
    OpenCVStreamSource,
    open_source,
)
from feederd.config import CameraConfig
from feederd.errors import CameraError

MakeCfg = Callable[..., CameraConfig]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "bird.png"), np.full((40, 40, 3), 50, np.uint8))
    return folder


def test_demo_replays_the_bundled_clip(clip: Path, fast_cfg: MakeCfg) -> None:
    source = open_source(fast_cfg(), 100, demo_clip=clip)
    assert isinstance(source, OpenCVFileSource)
    assert source.read() is not None


def test_demo_without_its_clip_is_a_camera_error(tmp_path: Path, fast_cfg: MakeCfg) -> None:
    with pytest.raises(CameraError, match="demo clip is missing"):
        open_source(fast_cfg(), 100, demo_clip=tmp_path / "gone.mp4")
    with pytest.raises(CameraError, match="demo clip is missing"):
        open_source(fast_cfg(kind="demo"), 100)


def test_a_video_file_is_replayed(clip: Path, fast_cfg: MakeCfg) -> None:
    assert isinstance(open_source(fast_cfg(source=str(clip)), 100), OpenCVFileSource)
    assert isinstance(open_source(fast_cfg(kind="video", source=str(clip)), 100),
                      OpenCVFileSource)


def test_a_folder_is_replayed_as_images(photos: Path, fast_cfg: MakeCfg) -> None:
    assert isinstance(open_source(fast_cfg(source=str(photos)), 100), FolderSource)


def test_a_folder_under_the_opencv_kind_says_which_kind_to_use(photos: Path,
                                                               fast_cfg: MakeCfg) -> None:
    with pytest.raises(CameraError, match="'folder' or 'auto'"):
        open_source(fast_cfg(kind="opencv", source=str(photos)), 100)


@pytest.mark.parametrize("source", ["7", "rtsp://user:pw@127.0.0.1:1/live",
                                    "http://127.0.0.1:1/video.mjpg"])
def test_a_device_index_or_url_opens_a_live_camera(source: str, fast_cfg: MakeCfg) -> None:
    live = open_source(fast_cfg(source=source), 100)
    try:
        assert isinstance(live, OpenCVStreamSource)
        assert not live.finished
    finally:
        live.close()


def test_a_source_that_is_nothing_known_is_a_camera_error_naming_it(fast_cfg: MakeCfg) -> None:
    with pytest.raises(CameraError, match=r"'/no/such/feeder\.mp4'.*device index"):
        open_source(fast_cfg(source="/no/such/feeder.mp4"), 100)


@pytest.mark.skipif(importlib.util.find_spec("picamera2") is not None,
                    reason="picamera2 is installed here")
@pytest.mark.parametrize("settings", [{"kind": "picamera2"}, {"source": "picamera2"}])
def test_the_pi_camera_needs_picamera2(settings: dict[str, str], fast_cfg: MakeCfg) -> None:
    with pytest.raises(CameraError, match="python3-picamera2"):
        open_source(fast_cfg(**settings), 100)
