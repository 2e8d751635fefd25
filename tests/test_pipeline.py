"""The frame loop on a real feeder clip with the default model: alerts name their species."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from feederd.assets import default_model_path
from feederd.capture import open_source
from feederd.classifier import Classifier
from feederd.config import Settings
from feederd.motion import MotionDetector, VisitStateMachine
from feederd.mqtt.messages import alert_payload
from feederd.pipeline import Pipeline
from feederd.types import Alert, ClassifiedFrame, VisitSummary
from feederd.visits import VisitTracker

# A tufted titmouse lands on the tray (checked by eye; AIY's majority vote agrees).
TITMOUSE_CLIP = Path("video") / "bird_10_03_2023--14_13_31.mp4"


class Alerts:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def on_classified(self, frame: ClassifiedFrame) -> None:
        return None

    def on_alert(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def on_visit_closed(self, summary: VisitSummary, frames: Sequence[ClassifiedFrame]) -> None:
        return None


@pytest.mark.shared_data
@pytest.mark.timeout(120)
def test_an_alert_on_a_real_clip_carries_the_common_and_scientific_name(
        shared_data: Path) -> None:
    settings = Settings(camera={"source": str(shared_data / TITMOUSE_CLIP), "realtime": False})
    classifier = Classifier(default_model_path(), threads=1)
    bundle, events = classifier.bundle, Alerts()
    pipeline = Pipeline(MotionDetector(settings.motion), VisitStateMachine(settings.motion),
                        VisitTracker(settings.visits, bundle.labels, bundle.negative_labels),
                        classifier, events, settings.classifier)
    source = open_source(settings.camera, settings.motion.height)
    while (frame := source.read()) is not None:
        pipeline.process(frame)
    source.close()
    [alert] = events.alerts
    payload = alert_payload(alert)
    assert (payload["label"], payload["display_name"], payload["scientific_name"]) == (
        "tufted_titmouse", "Tufted Titmouse", "Baeolophus bicolor")
