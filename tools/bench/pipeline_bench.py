"""The device pipeline on the shared feeder clips, every figure measured side by side.

    python tools/bench/pipeline_bench.py [--shared ../shared/data]

Prints, in one run:
- motion-gate cost per frame, and as a fraction of one classification;
- classifier overhead (crop + prepare + run + top-k) against a bare onnxruntime ``run`` on the
  same prepared input (target <= 1.10);
- end-to-end replay throughput of the pipeline (motion gate, visits, classify_fps) against a
  naive loop that classifies every frame, on the same decoded frames (target >= 5x);
- peak RSS of ``feederd run`` replaying the clips with the SqueezeNet bundle (target <= 150 MB).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from classifier_bench import DEFAULT_SHARED, measure_overhead, squeezenet_bundle
from motion_bench import load_frames, measure_motion, shared_clips

from feederd.classifier import Classifier
from feederd.config import Settings
from feederd.motion import MotionDetector, VisitStateMachine
from feederd.pipeline import Pipeline
from feederd.types import Alert, Box, ClassifiedFrame, Frame, VisitSummary
from feederd.visits import VisitTracker


class CountingEvents:
    """Stands in for the event queue: counts, keeps nothing."""

    def __init__(self) -> None:
        self.classified = self.alerts = self.visits = 0

    def on_classified(self, frame: ClassifiedFrame) -> None:
        self.classified += 1

    def on_alert(self, alert: Alert) -> None:
        self.alerts += 1

    def on_visit_closed(self, summary: VisitSummary, frames: Sequence[ClassifiedFrame]) -> None:
        self.visits += 1


def clip_frames(path: Path, fps: float = 24.0) -> list[Frame]:
    images = load_frames(path)
    return [Frame(i, i / fps, time.time(), image) for i, image in enumerate(images)]


def run_pipeline(classifier: Classifier, frames: list[Frame], settings: Settings
                 ) -> tuple[float, CountingEvents]:
    events = CountingEvents()
    bundle = classifier.bundle
    pipeline = Pipeline(MotionDetector(settings.motion), VisitStateMachine(settings.motion),
                        VisitTracker(settings.visits, bundle.labels, bundle.negative_labels),
                        classifier, events, settings.classifier)
    start = time.perf_counter()
    for frame in frames:
        pipeline.process(frame)
    pipeline.close_visit(time.time())
    return time.perf_counter() - start, events


def run_naive(classifier: Classifier, frames: list[Frame]) -> float:
    start = time.perf_counter()
    for frame in frames:
        classifier.classify(frame.image)
    return time.perf_counter() - start


def peak_rss_mb(bundle: Path, clip: Path, state: Path) -> float:
    """Peak resident memory of a real ``feederd run`` process replaying ``clip``."""
    config = state / "feederd.toml"
    config.write_text(f'state_dir = "{state}"\n[camera]\nsource = "{clip}"\nrealtime = false\n'
                      f'[classifier]\nmodel = "{bundle}"\n[mqtt]\nenabled = false\n')
    # The child reads its own high-water mark: a fork's pre-exec pages would otherwise count.
    code = ("import sys; from feederd.cli import main; rc = main(sys.argv[1:]); "
            "sys.stdout.write(next(l for l in open('/proc/self/status') "
            "if l.startswith('VmHWM'))); sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, "run", "--config", str(config)],
                            capture_output=True, text=True, check=True)
    return int(result.stdout.split()[1]) / 1024


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("FEEDERD_SHARED_DATA", DEFAULT_SHARED)))
    args = parser.parse_args(argv)
    clips = shared_clips(args.shared)
    if not clips:
        print(f"no shared clips under {args.shared}; nothing to measure")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        bundle = squeezenet_bundle(args.shared, Path(tmp))
        assert bundle is not None
        classifier = Classifier(bundle, threads=2)
        settings = Settings(state_dir=Path(tmp))
        frames = {clip: clip_frames(clip) for clip in clips}
        some = next(iter(frames.values()))
        box = Box(120, 90, 80, 60)  # a small bird on the tray, as the motion gate boxes it
        overhead = measure_overhead(classifier, some[100].image, box, rounds=20)
        motion_s = measure_motion(clips)
        print(f"motion gate           {motion_s * 1e6:8.0f} us/frame = "
              f"{motion_s / overhead.pipeline_s:.3f} of one classification "
              f"({overhead.pipeline_s * 1e3:.2f} ms)")
        print(f"classifier overhead   ratio {overhead.ratio:.3f} to bare run "
              f"(bare {overhead.bare_s * 1e3:.2f} ms, pipeline {overhead.pipeline_s * 1e3:.2f} ms;"
              " target <= 1.10)")
        pipe_s = naive_s = 0.0
        total = classified = visits = alerts = 0
        for clip_f in frames.values():
            seconds, events = run_pipeline(classifier, clip_f, settings)
            pipe_s += seconds
            naive_s += run_naive(classifier, clip_f)
            total += len(clip_f)
            classified, visits = classified + events.classified, visits + events.visits
            alerts += events.alerts
        print(f"replay throughput     pipeline {total / pipe_s:7.1f} fps, naive "
              f"{total / naive_s:7.1f} fps: {naive_s / pipe_s:.1f}x (target >= 5x); "
              f"{total} frames, {classified} classified, {visits} visits, {alerts} alerts")
        joined = Path(tmp) / "joined"
        joined.mkdir()
        rss = peak_rss_mb(bundle, clips[0], joined)
        print(f"peak RSS feederd run  {rss:7.1f} MB with the SqueezeNet bundle (target <= 150)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
