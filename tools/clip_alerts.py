"""Which visits of the shared feeder clips alert, with which species, under default settings.

    python tools/clip_alerts.py [--shared ../shared/data] [--model FILE] [--out DIR]

Each ``video/bird_*.mp4`` is replayed as fast as possible through the device pipeline
(motion gate, visit tracker, classifier) with every setting at its default and the default
model (the bundled AIY Birds V1). For every visit it prints the frames classified, the top
votes and the alert, if any, with the species' common name; ``--out`` saves, per visit, a PNG
strip of the most confident crops voting for the alerted species (or, without an alert, for
the most-voted species), so that a person can check the answer by eye.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from feederd.capture import open_source
from feederd.classifier import Classifier
from feederd.config import Settings
from feederd.daemon import resolve_model_path
from feederd.motion import MotionDetector, VisitStateMachine
from feederd.pipeline import Pipeline
from feederd.types import Alert, ClassifiedFrame, VisitSummary
from feederd.visits import VisitTracker

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


@dataclass
class ClipEvents:
    """Pipeline events of one clip: alerts, visit summaries, the best crop of each alert."""

    alerts: list[Alert] = field(default_factory=list)
    visits: list[VisitSummary] = field(default_factory=list)
    frames: dict[str, list[ClassifiedFrame]] = field(default_factory=dict)

    def on_classified(self, frame: ClassifiedFrame) -> None:
        self.frames.setdefault(frame.visit_id, []).append(frame)

    def on_alert(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def on_visit_closed(self, summary: VisitSummary,
                        frames: Sequence[ClassifiedFrame]) -> None:
        self.visits.append(summary)


def replay(clip: Path, classifier: Classifier) -> ClipEvents:
    settings = Settings(camera={"source": str(clip), "realtime": False})
    bundle = classifier.bundle
    events = ClipEvents()
    pipeline = Pipeline(MotionDetector(settings.motion), VisitStateMachine(settings.motion),
                        VisitTracker(settings.visits, bundle.labels, bundle.negative_labels),
                        classifier, events, settings.classifier)
    source = open_source(settings.camera, settings.motion.height)
    last_wall = 0.0
    try:
        while (frame := source.read()) is not None:
            pipeline.process(frame)
            last_wall = frame.wall
    finally:
        source.close()
    pipeline.close_visit(last_wall)
    return events


def describe(clip: Path, events: ClipEvents, classifier: Classifier, out: Path | None) -> None:
    bundle = classifier.bundle
    alerts = {a.event_id: a for a in events.alerts}
    print(f"{clip.name}: {len(events.visits)} visit(s), {len(events.alerts)} alert(s)")
    for visit in events.visits:
        top = Counter(visit.votes).most_common(3)
        votes = ", ".join(f"{label} {n}" for label, n in top)
        alert = alerts.get(visit.event_id)
        said = (f"ALERT {alert.label} ({bundle.display_name(alert.label)}) conf "
                f"{alert.confidence:.2f} frames {alert.frames}" if alert else "no alert")
        print(f"  visit: {visit.frames_seen:3d} frames, {visit.frames_classified:3d} "
              f"classified [{votes}] -> {said}")
        species = [label for label, _ in Counter(visit.votes).most_common()
                   if not bundle.is_negative(label)]
        if out is not None and species:
            label = alert.label if alert else species[0]
            name = f"{clip.stem}-{'alert' if alert else 'top'}-{label}.png"
            save_crops(out / name, events.frames.get(visit.event_id, []), label)


def save_crops(path: Path, frames: list[ClassifiedFrame], label: str) -> None:
    """A strip of the (up to 6) most confident crops voting for ``label``, for the eye."""
    voting = sorted((f for f in frames if f.prediction.label == label),
                    key=lambda f: -f.prediction.confidence)[:6]
    if not voting:
        return
    tiles = [cv2.resize(f.crop, (160, 160), interpolation=cv2.INTER_AREA) for f in voting]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.hconcat(tiles))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--model", type=Path, default=None,
                        help="bundle (default: what feederd run would use)")
    parser.add_argument("--out", type=Path, default=None, help="save alert crops here")
    args = parser.parse_args(argv)
    model = args.model or resolve_model_path(Settings())
    classifier = Classifier(model, Settings().classifier.threads)
    print(f"model {classifier.bundle.version} ({model.name}), default settings")
    clips = sorted((args.shared / "video").glob("bird_*.mp4"))
    if not clips:
        print(f"no clips under {args.shared / 'video'}", file=sys.stderr)
        return 2
    for clip in clips:
        describe(clip, replay(clip, classifier), classifier, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
