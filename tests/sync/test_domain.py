"""feederd.sync.domain: base photos rendered as the frames the device really classifies."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from feederd.capture.folder import FolderSource
from feederd.classifier import Classifier
from feederd.config import load_settings
from feederd.motion import MotionDetector, VisitStateMachine
from feederd.pipeline import Pipeline
from feederd.sync.config import ViewConfig
from feederd.sync.domain import DeviceView, renderer, view_key
from feederd.types import Alert, ClassifiedFrame, VisitSummary
from feederd.visits import VisitTracker
from sync.helpers import photo

DEMO_MODEL = Path(__file__).resolve().parents[2] / "models" / "demo.onnx"


class Crops:
    """Pipeline events keeping the crops the classifier was given."""

    def __init__(self) -> None:
        self.crops: list[np.ndarray] = []

    def on_classified(self, frame: ClassifiedFrame) -> None:
        self.crops.append(frame.crop)

    def on_alert(self, alert: Alert) -> None:
        return None

    def on_visit_closed(self, summary: VisitSummary, frames: Sequence[ClassifiedFrame]) -> None:
        return None


def daemon_crops(folder: Path, width: int, height: int) -> list[np.ndarray]:
    """The crops the device pipeline classifies when it replays ``folder`` (default crop)."""
    settings = load_settings(None, state_dir=str(folder / "state"), camera={
        "width": width, "height": height, "realtime": False, "jitter_px": 0,
        "folder_gap_s": 4.0})
    classifier = Classifier(DEMO_MODEL)
    source = FolderSource(folder, settings.camera, settings.motion.height)
    events = Crops()
    bundle = classifier.bundle
    pipeline = Pipeline(MotionDetector(settings.motion), VisitStateMachine(settings.motion),
                        VisitTracker(settings.visits, bundle.labels, bundle.negative_labels),
                        classifier, events, settings.classifier)
    while not source.finished:
        if (frame := source.read()) is not None:
            pipeline.process(frame)
    return events.crops


class TestDeviceView:
    def test_a_rendered_photo_is_the_crop_the_device_pipeline_classifies(
            self, tmp_path: Path) -> None:
        image = cv2.resize(photo("jay", 7, size=48), (160, 120))
        cv2.imwrite(str(tmp_path / "jay.png"), image)
        crops = daemon_crops(tmp_path, 320, 240)
        rendered = DeviceView(ViewConfig(width=320, height=240)).render(image)
        assert crops, "the replay classified nothing"
        first = crops[0]
        assert abs(first.shape[0] - rendered.shape[0]) <= 0.1 * first.shape[0]
        assert first.shape[0] == first.shape[1] and rendered.shape[0] == rendered.shape[1]
        same = cv2.resize(rendered, first.shape[1::-1]).astype(float)
        assert np.abs(same - first).mean() < 12

    def test_the_crop_is_square_around_the_photo_with_the_feeder_around_it(self) -> None:
        image = np.full((100, 200, 3), (30, 60, 20), np.uint8)  # a dark photo
        crop = DeviceView(ViewConfig(width=640, height=480)).render(image)
        assert crop.shape[0] == crop.shape[1] > 480 * 0.8
        assert abs(int(crop[0, 0, 1]) - 128) < 8  # the empty feeder's grey
        middle = crop[crop.shape[0] // 2, crop.shape[1] // 2]
        assert np.abs(middle.astype(int) - (30, 60, 20)).max() < 8

    def test_full_frame_crops_keep_the_camera_frame(self) -> None:
        crop = DeviceView(ViewConfig(width=320, height=240, crop="full")).render(
            photo("jay", 3))
        assert crop.shape == (240, 320, 3)

    def test_the_photo_recipe_renders_nothing_and_has_no_cache_key(self) -> None:
        raw = ViewConfig(domain="photo")
        assert renderer(raw) is None and view_key(raw) == ""
        assert view_key(ViewConfig()) != view_key(ViewConfig(crop_expand=2.0))
