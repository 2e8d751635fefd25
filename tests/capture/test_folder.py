"""Image-folder replay: timeline, frame size, jitter, bad files, and one visit per image."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from feederd.capture.folder import BACKGROUND_GREY, FolderSource
from feederd.config import CameraConfig, MotionConfig
from feederd.errors import CameraError
from feederd.motion import MotionDetector, VisitStateMachine

from .helpers import read_all

MakeCfg = Callable[..., CameraConfig]


def photo(seed: int, width: int = 200, height: int = 150) -> np.ndarray:
    """A textured colour picture, different for each seed."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """b.png, a.jpg and sub/c.png: three images, listed out of order, one in a sub-folder."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "b.png"), photo(2))
    cv2.imwrite(str(root / "a.jpg"), photo(1, 120, 160))
    cv2.imwrite(str(root / "sub" / "c.png"), photo(3))
    return root


def small_cfg(fast_cfg: MakeCfg, **overrides: object) -> CameraConfig:
    values: dict[str, object] = {"width": 320, "height": 240, "fps": 10.0,
                                 "frames_per_image": 4, "folder_gap_s": 0.5, "jitter_px": 3}
    values.update(overrides)
    return fast_cfg(**values)


def timeline(source: FolderSource, limit: int = 1000) -> list[str | None]:
    """The name shown in each frame (None in gaps) until the replay ends."""
    names: list[str | None] = []
    while not source.finished and len(names) < limit:
        if source.read() is not None:
            names.append(source.current_path.name if source.current_path else None)
    return names


def visits_opened(source: FolderSource) -> list[Path | None]:
    """The image on screen each time the motion gate opens a visit, replaying to the end."""
    detector, visits = MotionDetector(MotionConfig()), VisitStateMachine(MotionConfig())
    opened = []
    while not source.finished:
        frame = source.read()
        if frame is not None and visits.update(frame.mono,
                                               detector.detect(frame).moving) == "open":
            opened.append(source.current_path)
    assert not visits.active
    return opened


def test_shows_each_image_for_its_frames_between_gaps_in_sorted_order(
        folder: Path, fast_cfg: MakeCfg) -> None:
    source = FolderSource(folder, small_cfg(fast_cfg), motion_height=60)
    gap, shown = [None] * 5, 4
    assert timeline(source) == (gap + ["a.jpg"] * shown + gap + ["b.png"] * shown + gap
                                + ["c.png"] * shown + gap)
    assert source.read() is None


def test_every_frame_has_the_configured_size_and_a_motion_grey(folder: Path,
                                                                fast_cfg: MakeCfg) -> None:
    frames = read_all(FolderSource(folder, small_cfg(fast_cfg), motion_height=60))
    assert {f.image.shape for f in frames} == {(240, 320, 3)}
    assert {f.grey.shape for f in frames if f.grey is not None} == {(60, 80)}
    assert [f.mono for f in frames[:3]] == pytest.approx([0.0, 0.1, 0.2])


def test_gaps_are_plain_grey_and_images_are_centred_on_it(folder: Path,
                                                          fast_cfg: MakeCfg) -> None:
    frames = read_all(FolderSource(folder, small_cfg(fast_cfg, jitter_px=0), motion_height=60))
    assert np.all(frames[0].image == BACKGROUND_GREY)
    shown = frames[5].image
    assert np.all(shown[:20] == BACKGROUND_GREY) and np.all(shown[:, :20] == BACKGROUND_GREY)
    assert not np.all(shown[100:140, 140:180] == BACKGROUND_GREY)


def test_jitter_shifts_shown_frames_deterministically(folder: Path, fast_cfg: MakeCfg) -> None:
    def shown_frames() -> list[np.ndarray]:
        source = FolderSource(folder, small_cfg(fast_cfg), motion_height=60)
        return [f.image for f in read_all(source)[5:9]]

    first, again = shown_frames(), shown_frames()
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not np.array_equal(first[0], other) for other in first[1:])


def test_non_image_files_are_skipped_with_one_warning_each(
        folder: Path, fast_cfg: MakeCfg, caplog: pytest.LogCaptureFixture) -> None:
    (folder / "notes.txt").write_text("seen a jay\n")
    (folder / "sub" / "clip.mp4").write_bytes(b"\0" * 10)
    caplog.set_level(logging.WARNING, logger="feederd.capture.folder")
    source = FolderSource(folder, small_cfg(fast_cfg), motion_height=60)
    assert [p.name for p in source.paths] == ["a.jpg", "b.png", "c.png"]
    warned = sorted(r.getMessage() for r in caplog.records)
    assert len(warned) == 2
    assert "notes.txt" in warned[0] and "clip.mp4" in warned[1]


def test_an_image_that_cannot_be_decoded_is_skipped_with_a_warning(
        folder: Path, fast_cfg: MakeCfg, caplog: pytest.LogCaptureFixture) -> None:
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    caplog.set_level(logging.WARNING, logger="feederd.capture.folder")
    names = timeline(FolderSource(folder, small_cfg(fast_cfg), motion_height=60))
    assert "broken.jpg" not in names and "c.png" in names
    assert sum("broken.jpg" in r.getMessage() for r in caplog.records) == 1


def test_a_folder_without_images_is_a_camera_error(tmp_path: Path, fast_cfg: MakeCfg) -> None:
    (tmp_path / "readme.md").write_text("no birds here\n")
    with pytest.raises(CameraError, match="no images in"):
        FolderSource(tmp_path, small_cfg(fast_cfg), motion_height=60)


def test_loops_when_asked(folder: Path, fast_cfg: MakeCfg) -> None:
    source = FolderSource(folder, small_cfg(fast_cfg, loop=True), motion_height=60)
    one_pass = 4 * 5 + 3 * 4  # four gaps, three images
    names = timeline(source, limit=2 * one_pass)
    assert not source.finished and len(names) == 2 * one_pass
    assert names[:one_pass] == names[one_pass:]
    assert names.count("a.jpg") == names.count("c.png") == 2 * 4


def test_each_image_forms_its_own_visit(folder: Path, fast_cfg: MakeCfg) -> None:
    cfg = small_cfg(fast_cfg, folder_gap_s=4.0, frames_per_image=5)
    source = FolderSource(folder, cfg, motion_height=100)
    assert visits_opened(source) == source.paths


@pytest.mark.shared_data
def test_real_photos_each_form_their_own_visit_at_the_default_size(
        shared_data: Path, fast_cfg: MakeCfg, tmp_path: Path) -> None:
    birds = sorted((shared_data / "images" / "bird").rglob("*.jpg"))[:4]
    squirrels = sorted((shared_data / "images" / "squirrel").rglob("*.jpg"))[:2]
    for index, path in enumerate(birds + squirrels):
        (tmp_path / f"{index:02d}{path.suffix}").symlink_to(path)
    source = FolderSource(tmp_path, fast_cfg(), motion_height=100)
    assert visits_opened(source) == source.paths
