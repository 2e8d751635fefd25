"""The Pi camera source: its stream configuration, and the message where picamera2 is absent."""

from __future__ import annotations

import importlib.util

import pytest

from feederd.capture.picamera import BUFFER_COUNT, PiCameraSource, build_picamera_config
from feederd.config import CameraConfig
from feederd.errors import CameraError

no_picamera2 = pytest.mark.skipif(importlib.util.find_spec("picamera2") is not None,
                                  reason="picamera2 is installed here")


def test_main_stream_is_full_size_bgr_for_the_classifier() -> None:
    config = build_picamera_config(CameraConfig(width=1280, height=720))
    assert config["main"] == {"size": (1280, 720), "format": "RGB888"}


def test_lores_stream_is_yuv420_so_its_y_plane_feeds_motion() -> None:
    config = build_picamera_config(CameraConfig(lores_width=320, lores_height=240))
    assert config["lores"] == {"size": (320, 240), "format": "YUV420"}


def test_frame_rate_and_a_small_buffer_count_are_requested() -> None:
    config = build_picamera_config(CameraConfig(fps=15.0))
    assert config["controls"] == {"FrameRate": 15.0}
    assert config["buffer_count"] == BUFFER_COUNT <= 4


def test_no_preview_or_encoder_stream_is_set_up() -> None:
    config = build_picamera_config(CameraConfig())
    assert config["display"] is None and config["encode"] is None


def test_odd_sizes_are_rounded_down_to_even_as_libcamera_requires() -> None:
    config = build_picamera_config(CameraConfig(width=1281, height=721, lores_width=321,
                                                lores_height=241))
    assert config["main"]["size"] == (1280, 720)
    assert config["lores"]["size"] == (320, 240)


def test_a_lores_stream_larger_than_main_is_refused_naming_the_keys() -> None:
    with pytest.raises(CameraError, match=r"camera\.lores_width x lores_height"):
        build_picamera_config(CameraConfig(width=320, height=240, lores_width=640,
                                           lores_height=480))


@no_picamera2
def test_without_picamera2_the_error_says_how_to_install_it() -> None:
    with pytest.raises(CameraError) as caught:
        PiCameraSource(CameraConfig(kind="picamera2"), motion_height=100)
    message = str(caught.value)
    assert "sudo apt install python3-picamera2" in message
    assert "--system-site-packages" in message
