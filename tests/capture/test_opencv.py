"""OpenCV sources: video-file replay and a live camera that vanishes and comes back."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from feederd.capture.base import FrameSource
from feederd.capture.opencv import OpenCVFileSource, OpenCVStreamSource, _redact
from feederd.config import CameraConfig
from feederd.errors import CameraError

from .conftest import MjpegCamera
from .helpers import first_frame, poll, read_all

MakeCfg = Callable[..., CameraConfig]


class TestVideoFile:
    def test_replays_every_frame_in_order_with_media_time(self, clip: Path,
                                                           fast_cfg: MakeCfg) -> None:
        source = OpenCVFileSource(clip, fast_cfg(), motion_height=60)
        frames = read_all(source)
        assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
        assert [f.mono for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
        brightness = [float(f.image.mean()) for f in frames]
        assert brightness == sorted(brightness)
        assert source.fps == pytest.approx(10.0)

    def test_gives_a_grey_image_at_the_motion_height(self, clip: Path, fast_cfg: MakeCfg
                                                     ) -> None:
        frame = OpenCVFileSource(clip, fast_cfg(), motion_height=60).read()
        assert frame is not None and frame.grey is not None
        assert frame.grey.shape == (60, 80)
        assert frame.image.shape == (120, 160, 3)

    def test_is_finished_at_the_end_and_then_reads_none(self, clip: Path, fast_cfg: MakeCfg
                                                        ) -> None:
        source = OpenCVFileSource(clip, fast_cfg(), motion_height=60)
        read_all(source)
        assert source.finished
        assert source.read() is None

    def test_loops_with_time_still_increasing(self, clip: Path, fast_cfg: MakeCfg) -> None:
        source = OpenCVFileSource(clip, fast_cfg(loop=True), motion_height=60)
        frames = read_all(source, limit=12)
        assert not source.finished
        assert [f.seq for f in frames] == list(range(12))
        assert frames[5].image.mean() < frames[4].image.mean()  # back to the first frame
        monos = [f.mono for f in frames]
        assert monos == sorted(monos)

    def test_a_missing_file_is_a_camera_error_naming_it(self, tmp_path: Path,
                                                        fast_cfg: MakeCfg) -> None:
        missing = tmp_path / "nope.mp4"
        with pytest.raises(CameraError, match=r"nope\.mp4"):
            OpenCVFileSource(missing, fast_cfg(), motion_height=60)

    def test_an_undecodable_file_is_a_camera_error_naming_it(self, tmp_path: Path,
                                                             fast_cfg: MakeCfg) -> None:
        junk = tmp_path / "junk.mp4"
        junk.write_bytes(b"this is not a video\n" * 100)
        with pytest.raises(CameraError, match=r"junk\.mp4.*format"):
            OpenCVFileSource(junk, fast_cfg(), motion_height=60)

    def test_is_a_frame_source(self, clip: Path, fast_cfg: MakeCfg) -> None:
        assert isinstance(OpenCVFileSource(clip, fast_cfg(), motion_height=60), FrameSource)


class TestLiveStream:
    def test_delivers_frames_from_an_ip_camera(self, ip_camera: MjpegCamera,
                                               fast_cfg: MakeCfg) -> None:
        source = OpenCVStreamSource(ip_camera.url, fast_cfg(), motion_height=60)
        try:
            frame = first_frame(source)
        finally:
            source.close()
        assert frame.image.shape == (120, 160, 3)
        assert frame.grey is not None and frame.grey.shape == (60, 80)
        assert not source.finished

    def test_a_camera_that_vanishes_is_retried_with_growing_delays_then_recovers(
            self, ip_camera: MjpegCamera, fast_cfg: MakeCfg,
            caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger="feederd.capture.opencv")
        source = OpenCVStreamSource(ip_camera.url, fast_cfg(), motion_height=60)
        try:
            first_frame(source)
            ip_camera.stop()
            while_down = poll(lambda: source.failures >= 5, source.read)
            ip_camera.start()
            recovered = first_frame(source)
        finally:
            source.close()
        assert all(item is None for item in while_down[3:])
        assert recovered.seq > 0 and source.failures == 0
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert "stopped delivering frames" in warnings[0].getMessage()
        retries = [r for r in warnings if "attempt" in r.getMessage()]
        assert [r.args[1] for r in retries[:4]] == [2, 3, 4, 5]  # type: ignore[index]
        delays = [r.args[2] for r in retries]  # type: ignore[index]
        assert delays[:3] == [0.1, 0.2, 0.2]  # doubling from 0.05, capped at 0.2
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert sum("frames flowing again" in m for m in infos) == 1

    def test_a_url_that_does_not_answer_reads_none_without_raising(
            self, ip_camera: MjpegCamera, fast_cfg: MakeCfg) -> None:
        ip_camera.stop()  # a port where nobody listens any more
        source = OpenCVStreamSource(ip_camera.url, fast_cfg(), motion_height=60)
        try:
            results = poll(lambda: source.failures >= 3, source.read)
        finally:
            source.close()
        assert results and all(item is None for item in results)
        assert source.retry_delay_s > 0.05

    def test_a_missing_usb_camera_reads_none_without_raising(self, fast_cfg: MakeCfg) -> None:
        source = OpenCVStreamSource(63, fast_cfg(), motion_height=60)
        try:
            results = poll(lambda: source.failures >= 2, source.read)
        finally:
            source.close()
        assert all(item is None for item in results)

    def test_close_stops_the_reader_thread(self, ip_camera: MjpegCamera,
                                           fast_cfg: MakeCfg) -> None:
        source = OpenCVStreamSource(ip_camera.url, fast_cfg(), motion_height=60)
        first_frame(source)
        source.close()
        assert not source._thread.is_alive()


def test_passwords_in_urls_are_not_logged() -> None:
    assert _redact("rtsp://admin:hunter2@cam.lan/live") == "rtsp://admin:***@cam.lan/live"
    assert _redact("rtsp://cam.lan/live") == "rtsp://cam.lan/live"
