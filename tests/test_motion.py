"""The motion gate and the visit state machine, on synthetic scenes and the real feeder clips."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from feederd.capture.opencv import OpenCVFileSource
from feederd.config import CameraConfig, MotionConfig
from feederd.motion import MotionDetector, VisitStateMachine, downscale_grey, rasterise_masks
from feederd.types import Frame, MotionResult

logger = logging.getLogger(__name__)

WIDTH, HEIGHT = 320, 240
# The feeder clips' burned-in "FPS: 24" caption blinks off now and then.
CAPTION_MASK = [[(0.0, 0.0), (0.28, 0.0), (0.28, 0.1), (0.0, 0.1)]]


def scenery(seed: int = 0, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A textured, feeder-like background."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(40, 200, (height // 8, width // 8, 3), dtype=np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


class Scene:
    """Frames of a background with sensor noise and, optionally, a dark square 'bird'."""

    def __init__(self, seed: int = 0, width: int = WIDTH, height: int = HEIGHT,
                 fps: float = 10.0) -> None:
        self.background = scenery(seed, width, height)
        self.rng = np.random.default_rng(seed + 1)
        self.fps = fps
        self.seq = 0

    def frame(self, bird: tuple[int, int, int] | None = None, *, brighten: int = 0,
              with_grey: int | None = None) -> Frame:
        """``bird`` = (x, y, side) in pixels; ``with_grey`` = set Frame.grey at that height."""
        image = self.background.astype(np.int16) + brighten
        image += self.rng.normal(0, 3, image.shape).astype(np.int16)
        if bird is not None:
            x, y, side = bird
            image[y:y + side, x:x + side] = 20
        image8 = np.clip(image, 0, 255).astype(np.uint8)
        grey = downscale_grey(image8, with_grey) if with_grey else None
        frame = Frame(self.seq, self.seq / self.fps, 0.0, image8, grey)
        self.seq += 1
        return frame


def run(detector: MotionDetector, frames: list[Frame]) -> list[MotionResult]:
    return [detector.detect(frame) for frame in frames]


class TestMotionDetector:
    def test_the_first_frame_is_the_background_not_motion(self) -> None:
        scene = Scene()
        result = MotionDetector(MotionConfig()).detect(scene.frame(bird=(100, 100, 60)))
        assert result == MotionResult(False, 0.0, None)

    def test_a_still_scene_with_sensor_noise_is_never_motion(self) -> None:
        scene = Scene()
        results = run(MotionDetector(MotionConfig()), [scene.frame() for _ in range(100)])
        assert not any(r.moving for r in results)

    def test_a_bird_arriving_is_motion_boxed_in_full_resolution_pixels(self) -> None:
        scene = Scene(width=1280, height=720)
        detector = MotionDetector(MotionConfig())
        detector.detect(scene.frame())
        result = detector.detect(scene.frame(bird=(600, 300, 120)))
        assert result.moving and result.box is not None
        box = result.box
        assert box.x <= 600 and box.y <= 300
        assert box.x + box.w >= 720 and box.y + box.h >= 420
        assert box.w < 300 and box.h < 300  # around the bird, not the frame
        assert result.area == pytest.approx(120 * 120 / (1280 * 720), rel=0.5)

    def test_motion_inside_an_ignore_mask_is_not_motion(self) -> None:
        cfg = MotionConfig(ignore_masks=[[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]])
        scene = Scene()
        detector = MotionDetector(cfg)
        detector.detect(scene.frame())
        assert not detector.detect(scene.frame(bird=(40, 80, 60))).moving  # left half
        assert detector.detect(scene.frame(bird=(220, 80, 60))).moving  # right half

    def test_a_change_smaller_than_min_area_is_not_motion(self) -> None:
        def moving(min_area: float) -> bool:
            scene = Scene()
            detector = MotionDetector(MotionConfig(min_area=min_area))
            detector.detect(scene.frame())
            return detector.detect(scene.frame(bird=(150, 100, 16))).moving  # 0.3% of frame

        assert not moving(0.01)
        assert moving(0.001)

    def test_a_lighting_change_over_the_whole_frame_is_not_motion_and_is_learned(self) -> None:
        scene = Scene()
        detector = MotionDetector(MotionConfig())
        detector.detect(scene.frame())
        lit = detector.detect(scene.frame(brighten=60))
        assert not lit.moving and lit.area > 0.8
        assert not detector.detect(scene.frame(brighten=60)).moving

    def test_uses_the_sources_grey_image_when_there_is_one(self) -> None:
        scene = Scene()
        detector = MotionDetector(MotionConfig())
        detector.detect(scene.frame(with_grey=100))
        still_image = scene.frame().image
        moved_grey = scene.frame(bird=(150, 100, 60), with_grey=100).grey
        result = detector.detect(Frame(9, 0.9, 0.0, still_image, moved_grey))
        assert result.moving

    def test_a_larger_grey_image_such_as_a_lores_y_plane_is_downscaled(self) -> None:
        scene = Scene()
        detector = MotionDetector(MotionConfig(height=100))
        detector.detect(scene.frame(with_grey=240))
        result = detector.detect(scene.frame(bird=(150, 100, 60), with_grey=240))
        assert result.moving and result.box is not None and result.box.x <= 150

    def test_a_change_of_frame_size_relearns_the_background(self) -> None:
        detector = MotionDetector(MotionConfig())
        detector.detect(Scene().frame())
        assert not detector.detect(Scene(width=640, height=360).frame(bird=(5, 5, 90))).moving

    def test_a_bird_that_leaves_stops_being_motion(self) -> None:
        scene = Scene()
        detector = MotionDetector(MotionConfig())
        detector.detect(scene.frame())
        hopping = [scene.frame(bird=(60 + 4 * i, 100, 40)) for i in range(30)]
        assert all(r.moving for r in run(detector, hopping))
        after = run(detector, [scene.frame() for _ in range(60)])
        assert not any(r.moving for r in after[-30:])

    def test_a_bird_present_when_the_background_was_learned_leaves_no_lasting_ghost(
            self) -> None:
        scene = Scene()
        detector = MotionDetector(MotionConfig())
        detector.detect(scene.frame(bird=(100, 100, 50)))  # learned with the bird in it
        results = run(detector, [scene.frame() for _ in range(100)])
        assert results[0].moving  # the empty spot differs from the learned background
        assert not any(r.moving for r in results[-50:])

    def test_masks_are_rasterised_in_relative_coordinates(self) -> None:
        mask = rasterise_masks([[(0.5, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)]], (100, 50))
        assert mask is not None and mask.shape == (50, 100)
        assert mask[:, :45].min() == 255 and mask[:, 55:].max() == 0
        assert rasterise_masks([], (100, 50)) is None


class TestDownscaleGrey:
    @pytest.mark.parametrize(("size", "expected"), [((1280, 720), (178, 100)),
                                                    ((320, 240), (133, 100)),
                                                    ((1920, 1080), (178, 100)),
                                                    ((120, 80), (120, 80))])
    def test_keeps_the_aspect_ratio_at_the_motion_height(
            self, size: tuple[int, int], expected: tuple[int, int]) -> None:
        image = np.zeros((size[1], size[0], 3), np.uint8)
        assert downscale_grey(image, 100).shape == (expected[1], expected[0])

    def test_puts_things_where_a_direct_area_resize_does(self) -> None:
        image = np.zeros((720, 1280, 3), np.uint8)
        image[300:400, 900:1000] = 255
        direct = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (178, 100),
                            interpolation=cv2.INTER_AREA)

        def centre(grey: np.ndarray) -> np.ndarray:
            moments = cv2.moments(grey)
            return np.array([moments["m10"], moments["m01"]]) / moments["m00"]

        assert np.abs(centre(downscale_grey(image, 100)) - centre(direct)).max() < 1.0


class TestVisitStateMachine:
    def feed(self, machine: VisitStateMachine, moves: str, fps: float = 10.0,
             start: int = 0) -> list[tuple[int, str]]:
        """``moves`` is a string of '#' (motion) and '.' (none), one per frame."""
        events: list[tuple[int, str]] = []
        for i, mark in enumerate(moves, start):
            event = machine.update(i / fps, mark == "#")
            if event:
                events.append((i, event))
        return events

    def test_opens_on_the_start_frames_th_motion_frame_in_a_row(self) -> None:
        machine = VisitStateMachine(MotionConfig(start_frames=3))
        assert self.feed(machine, "..###") == [(4, "open")]
        assert machine.active and machine.first_motion_mono == pytest.approx(0.2)

    def test_shorter_runs_of_motion_never_open_a_visit(self) -> None:
        machine = VisitStateMachine(MotionConfig(start_frames=3))
        assert self.feed(machine, "#.##.#..##.#.") == []
        assert not machine.active and machine.first_motion_mono is None

    def test_closes_after_close_after_s_without_motion(self) -> None:
        machine = VisitStateMachine(MotionConfig(start_frames=1, close_after_s=1.0))
        assert self.feed(machine, "##" + "." * 15) == [(0, "open"), (11, "close")]
        assert not machine.active

    def test_motion_before_close_after_s_keeps_the_visit_open(self) -> None:
        machine = VisitStateMachine(MotionConfig(start_frames=1, close_after_s=1.0))
        assert self.feed(machine, "#" + ".........#" * 3) == [(0, "open")]
        assert machine.active

    def test_a_visit_longer_than_max_visit_s_closes_and_a_new_one_opens(self) -> None:
        machine = VisitStateMachine(MotionConfig(start_frames=2, max_visit_s=2.0))
        events = self.feed(machine, "#" * 30)
        assert events == [(1, "open"), (20, "close"), (22, "open")]
        assert machine.first_motion_mono == pytest.approx(2.1)

    def test_first_motion_time_is_still_readable_when_the_visit_closes(self) -> None:
        machine = VisitStateMachine(MotionConfig(start_frames=2, close_after_s=0.5))
        self.feed(machine, ".###......")
        assert not machine.active and machine.first_motion_mono == pytest.approx(0.1)

    def test_end_closes_an_open_visit_once(self) -> None:
        machine = VisitStateMachine(MotionConfig(start_frames=1))
        self.feed(machine, "#")
        assert machine.end() == "close"
        assert machine.end() is None and not machine.active


def replay(path: Path, cfg: MotionConfig, first: int = 0, last: int | None = None
           ) -> tuple[list[MotionResult], list[tuple[int, str]]]:
    """Replay frames [first, last) of a video through a fresh motion gate."""
    source = OpenCVFileSource(path, CameraConfig(realtime=False), cfg.height)
    detector, machine = MotionDetector(cfg), VisitStateMachine(cfg)
    results: list[MotionResult] = []
    events: list[tuple[int, str]] = []
    while (frame := source.read()) is not None and (last is None or frame.seq < last):
        if frame.seq < first:
            continue
        result = detector.detect(frame)
        results.append(result)
        if event := machine.update(frame.mono, result.moving):
            events.append((frame.seq, event))
    source.close()
    return results, events


def feeder_clips() -> list[str]:
    """The clip names, for test ids; found where tests/conftest.py looks for the shared data."""
    default = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    folder = Path(os.environ.get("FEEDERD_SHARED_DATA", default)) / "video"
    return sorted(p.name for p in folder.glob("bird_*.mp4")) or ["absent"]


@pytest.mark.shared_data
@pytest.mark.parametrize("name", feeder_clips())
def test_every_feeder_clip_forms_at_least_one_visit(shared_data: Path, name: str) -> None:
    _, events = replay(shared_data / "video" / name, MotionConfig())
    assert ("open" in [event for _, event in events]), f"{name}: no visit"


@pytest.mark.shared_data
@pytest.mark.parametrize("name", feeder_clips())
def test_a_still_empty_feeder_with_sensor_noise_forms_no_visit(shared_data: Path,
                                                               name: str) -> None:
    source = OpenCVFileSource(shared_data / "video" / name, CameraConfig(realtime=False), 100)
    first = source.read()
    source.close()
    assert first is not None
    rng = np.random.default_rng(7)
    detector, machine = MotionDetector(MotionConfig()), VisitStateMachine(MotionConfig())
    base = first.image.astype(np.float32)
    noise = [rng.standard_normal(base.shape, dtype=np.float32) * 4 for _ in range(13)]
    for seq in range(120):
        image = np.clip(base + noise[seq % len(noise)], 0, 255).astype(np.uint8)
        frame = Frame(seq, seq / 24, 0.0, image, downscale_grey(image, 100))
        assert not detector.detect(frame).moving
        assert machine.update(frame.mono, False) is None


# Stretches of the real clips where the feeder is empty (checked by eye): frame ranges.
EMPTY_STRETCHES = [("bird_10_03_2023--12_24_20.mp4", 80, 197),
                   ("bird_10_03_2023--12_25_35.mp4", 100, 204),
                   ("bird_10_03_2023--12_30_53.mp4", 100, 179)]


@pytest.mark.shared_data
@pytest.mark.parametrize(("name", "first", "last"), EMPTY_STRETCHES)
def test_real_empty_feeder_stretches_form_no_visit(shared_data: Path, name: str, first: int,
                                                   last: int) -> None:
    _, events = replay(shared_data / "video" / name, MotionConfig(), first, last)
    assert events == []


@pytest.mark.shared_data
@pytest.mark.parametrize(("name", "first", "last"), EMPTY_STRETCHES)
def test_masking_the_blinking_caption_leaves_no_motion_at_all_when_empty(
        shared_data: Path, name: str, first: int, last: int) -> None:
    cfg = MotionConfig(ignore_masks=CAPTION_MASK)
    results, _ = replay(shared_data / "video" / name, cfg, first, last)
    assert not any(r.moving for r in results)


@pytest.mark.shared_data
def test_a_bird_that_leaves_closes_its_visit_and_the_empty_feeder_opens_none(
        shared_data: Path) -> None:
    _, events = replay(shared_data / "video" / "bird_10_03_2023--12_25_35.mp4", MotionConfig())
    assert [event for _, event in events] == ["open", "close"]


HUMMINGBIRD = {1: (862, 575), 2: (820, 543), 3: (943, 480), 4: (666, 431)}
"""Where the hummingbird is in frames 1-4 of PlotWatcherTest.avi (1280x720), read off the
frames by eye; frame 0 is the empty foliage, frame 5 is 38 s later, after it left."""


@pytest.mark.shared_data
def test_in_wind_moved_foliage_the_motion_box_covers_the_hummingbird(shared_data: Path
                                                                     ) -> None:
    results, events = replay(shared_data / "video" / "PlotWatcherTest.avi", MotionConfig())
    assert len(results) == 6 and not results[0].moving  # the first frame seeds the background
    for index, (x, y) in HUMMINGBIRD.items():
        box = results[index].box
        assert results[index].moving and box is not None, f"frame {index}: no motion"
        assert box.x <= x < box.x + box.w and box.y <= y < box.y + box.h, (index, box)
        assert box.w * box.h < 0.25 * 1280 * 720, f"frame {index}: {box} is most of the frame"
    assert ("open" in [event for _, event in events]), events


class TestEvidenceForMining:
    def test_a_moving_bird_changes_frame_to_frame_but_its_ghost_does_not(self) -> None:
        """The spot a bird just left differs from the background for a while (a ghost) but
        does not change from one frame to the next; mining tells them apart by ``live``."""
        scene, detector = Scene(), MotionDetector(MotionConfig())
        run(detector, [scene.frame() for _ in range(30)])
        hopping = run(detector, [scene.frame((100 + 6 * i, 120, 30)) for i in range(4)])
        sitting = run(detector, [scene.frame((124, 120, 30)) for _ in range(30)])
        ghost = run(detector, [scene.frame() for _ in range(2)])
        assert all(r.moving and r.live > 0.005 for r in hopping)
        assert ghost[-1].moving and ghost[-1].area > 0.005 and ghost[-1].live == 0.0
        assert sitting[-1].live == 0.0

    def test_the_quiet_spell_before_motion_is_remembered(self) -> None:
        scene, detector = Scene(), MotionDetector(MotionConfig())
        run(detector, [scene.frame() for _ in range(25)])
        run(detector, [scene.frame((100 + 6 * i, 120, 30)) for i in range(3)])
        assert detector.quiet_before == 24 and detector.quiet_run == 0
        background = detector.background()
        assert background is not None and background.shape == detector.grey.shape
