"""The device pipeline on the shared feeder clips, every figure measured side by side.

    python tools/bench/pipeline_bench.py [--shared ../shared/data]

Prints, in one run:
- motion-gate cost per frame, and as a fraction of one classification;
- classifier overhead (crop + prepare + run + top-k) against a bare onnxruntime ``run`` on the
  same prepared input (target <= 1.10);
- end-to-end replay throughput of the pipeline (motion gate, visits, classify_fps) against the
  same pipeline with no motion gate at the same ``classify_fps`` (every frame counts as motion:
  what the gate saves on empty frames) and with Frigate's motion detector in place of ours
  (the peer; ``frigate_motion.py``), on the same decoded frames, in interleaved rounds, medians;
- peak RSS of ``feederd run`` replaying the clips with the SqueezeNet bundle (target <= 150 MB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchutil import interleave, ratio_line
from classifier_bench import DEFAULT_SHARED, measure_overhead, squeezenet_bundle
from frigate_motion import FrigateGate, NoGate
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


def run_pipeline(classifier: Classifier, frames: list[Frame], settings: Settings,
                 detector: object) -> CountingEvents:
    events = CountingEvents()
    bundle = classifier.bundle
    pipeline = Pipeline(detector, VisitStateMachine(settings.motion),  # type: ignore[arg-type]
                        VisitTracker(settings.visits, bundle.labels, bundle.negative_labels),
                        classifier, events, settings.classifier)
    for frame in frames:
        pipeline.process(frame)
    pipeline.close_visit(time.time())
    return events


GATES = {"feederd gate": lambda s: MotionDetector(s.motion),
         "Frigate gate": lambda s: FrigateGate(),
         "no gate": lambda s: NoGate()}


def compare_gates(classifier: Classifier, clips: dict[Path, list[Frame]], settings: Settings,
                  rounds: int) -> tuple[dict[str, list[float]], dict[str, CountingEvents]]:
    """Seconds per round over all clips for each gate, interleaved; events of the last round."""
    last: dict[str, CountingEvents] = {}

    def side(name: str) -> Callable[[], None]:
        def run() -> None:
            total = CountingEvents()
            for frames in clips.values():
                events = run_pipeline(classifier, frames, settings, GATES[name](settings))
                total.classified += events.classified
                total.alerts += events.alerts
                total.visits += events.visits
            last[name] = total
        return run

    times = interleave({name: side(name) for name in GATES}, rounds, warmup=1)
    return times, last


def _gate_only(detector: object, frames: list[Frame]) -> None:
    for frame in frames:
        detector.detect(frame)  # type: ignore[attr-defined]


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
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per side")
    parser.add_argument("--model", type=Path, default=None,
                        help="bundle to classify with (default: the SqueezeNet bundle)")
    args = parser.parse_args(argv)
    clips = shared_clips(args.shared)
    if not clips:
        print(f"no shared clips under {args.shared}; nothing to measure")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.model or squeezenet_bundle(args.shared, Path(tmp))
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
        total = sum(len(f) for f in frames.values())
        times, events = compare_gates(classifier, frames, settings, args.rounds)
        print(f"replay, {total} frames of {len(frames)} clips, classify_fps "
              f"{settings.visits.classify_fps:g} on every side, {args.rounds} interleaved rounds:")
        for name, seconds in times.items():
            e = events[name]
            print(f"  {name:13s} {total / statistics.median(seconds):7.1f} fps (median; min "
                  f"{total / max(seconds):.1f}, max {total / min(seconds):.1f}); "
                  f"{e.classified} classified, {e.visits} visits, {e.alerts} alerts")
        for name in ("feederd gate", "Frigate gate"):
            print("  " + ratio_line(f"{name} vs no gate (time per replay)",
                                    ("no gate", times["no gate"]), (name, times[name]),
                                    scale=1, unit="s"))
        print("  " + ratio_line("feederd gate vs Frigate gate", ("Frigate gate",
                                times["Frigate gate"]), ("feederd gate", times["feederd gate"]),
                                scale=1, unit="s"))
        gate_us = interleave({"feederd": lambda: _gate_only(MotionDetector(settings.motion), some),
                              "Frigate": lambda: _gate_only(FrigateGate(), some)}, args.rounds)
        print("  " + ratio_line("motion gate alone per frame", ("Frigate", [
            t / len(some) for t in gate_us["Frigate"]]), ("feederd", [
            t / len(some) for t in gate_us["feederd"]]), scale=1e6, unit="us"))
        joined = Path(tmp) / "joined"
        joined.mkdir()
        rss = peak_rss_mb(bundle, clips[0], joined)
        print(f"peak RSS feederd run  {rss:7.1f} MB with {bundle.name} (target <= 150)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
