"""Classifier overhead: the whole per-frame path against a bare ``session.run``, side by side.

    python tools/bench/classifier_bench.py [--shared ../shared/data] [--rounds 30]

For each model, the same frame and motion box go through ``Classifier.classify`` (crop +
resize/normalise into the reused buffer + run + top-k), and the session alone runs on the
input that ``prepare`` produced. Rounds alternate between the two so that a busy machine slows
both alike; the medians are compared. Target: pipeline / bare <= 1.10 on real models
(SqueezeNet). The demo model is so small (a pooling and a 192 x 4 matrix) that a fixed ~0.1 ms
of crop and resize outweighs its run; its absolute overhead is the useful figure.

``measure_overhead(classifier, frame, box)`` is importable by other benches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from feederd.assets import default_model_path, demo_clip_path, demo_model_path
from feederd.classifier import Classifier
from feederd.types import Box

DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
TARGET = 1.10
FRAME_SIZE = (1280, 720)  # the Pi's default main stream
DEMO_FRAME = 70  # the cardinal on the tray
DEMO_BOX = Box(160, 205, 70, 50)  # around it, in the clip's 480x360 pixels


@dataclass(frozen=True)
class Overhead:
    """Median seconds per call of each path, and their ratio."""

    bare_s: float
    pipeline_s: float
    crop_prepare_s: float
    round_ratios: tuple[float, ...] = ()  # pipeline / bare in each interleaved round

    @property
    def ratio(self) -> float:
        return self.pipeline_s / self.bare_s

    @property
    def overhead_s(self) -> float:
        return self.pipeline_s - self.bare_s


def _median_per_call(work: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        work()
    return (time.perf_counter() - start) / calls


def measure_overhead(classifier: Classifier, frame: np.ndarray, box: Box | None,
                     expand: float = 1.6, rounds: int = 30, calls: int = 10) -> Overhead:
    """Time ``classify`` against a bare ``session.run`` on the input it prepares, interleaved."""
    batch = classifier.prepare(classifier.crop(frame, box, expand)).copy()
    feeds = {classifier.input_name: batch}
    session = classifier.session

    def bare() -> object:
        return session.run(None, feeds)

    def pipeline() -> object:
        return classifier.classify(frame, box, expand)

    def crop_prepare() -> object:
        return classifier.prepare(classifier.crop(frame, box, expand))

    for work in (bare, pipeline, crop_prepare):  # warm caches and thread pools
        _median_per_call(work, calls)
    samples: dict[str, list[float]] = {"bare": [], "pipeline": [], "crop_prepare": []}
    for _ in range(rounds):
        for name, work in (("bare", bare), ("pipeline", pipeline),
                           ("crop_prepare", crop_prepare)):
            samples[name].append(_median_per_call(work, calls))
    med = {name: statistics.median(values) for name, values in samples.items()}
    ratios = tuple(p / b for p, b in zip(samples["pipeline"], samples["bare"], strict=True))
    return Overhead(med["bare"], med["pipeline"], med["crop_prepare"], ratios)


def demo_frame() -> np.ndarray:
    """A frame of the demo clip with a bird on the tray."""
    capture = cv2.VideoCapture(str(demo_clip_path()))
    capture.set(cv2.CAP_PROP_POS_FRAMES, DEMO_FRAME)
    ok, frame = capture.read()
    capture.release()
    if not ok:
        raise SystemExit(f"cannot read frame {DEMO_FRAME} of {demo_clip_path()}")
    return frame


def scaled(frame: np.ndarray, box: Box, size: tuple[int, int]) -> tuple[np.ndarray, Box]:
    """The frame and box at another resolution (camera frames are larger than the clip)."""
    fx, fy = size[0] / frame.shape[1], size[1] / frame.shape[0]
    big = cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR)
    return big, Box(round(box.x * fx), round(box.y * fy), round(box.w * fx), round(box.h * fy))


def squeezenet_bundle(shared: Path, folder: Path) -> Path | None:
    """The SqueezeNet ImageNet bundle built into ``folder``, or None without shared data."""
    source = shared / "models" / "squeezenet1.1"
    if not (source / "squeezenet1.1-fp32.onnx").is_file():
        return None
    from feederd.sync.build import SQUEEZENET_EMBEDDING, SQUEEZENET_INPUT, imagenet_bundle

    return imagenet_bundle(source / "squeezenet1.1-fp32.onnx", source / "labels.txt",
                           SQUEEZENET_EMBEDDING, SQUEEZENET_INPUT, folder / "squeezenet.onnx")


def report(name: str, result: Overhead) -> str:
    verdict = "ok" if result.ratio <= TARGET else "over target"
    return (f"{name:<28} bare {result.bare_s * 1e3:7.3f} ms   pipeline "
            f"{result.pipeline_s * 1e3:7.3f} ms   crop+prepare {result.crop_prepare_s * 1e6:6.0f}"
            f" us   overhead {result.overhead_s * 1e6:6.0f} us   ratio {result.ratio:5.3f}"
            f" (rounds min {min(result.round_ratios, default=0):.3f}, max "
            f"{max(result.round_ratios, default=0):.3f}; {verdict}, target <= {TARGET})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("FEEDERD_SHARED_DATA", DEFAULT_SHARED)))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    frame, box = scaled(demo_frame(), DEMO_BOX, FRAME_SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        models = {"demo (64x64, 4 classes)": demo_model_path(),
                  "AIY Birds V1 (224x224, 965)": default_model_path()}
        if (squeeze := squeezenet_bundle(args.shared, Path(tmp))) is not None:
            models["squeezenet (224x224, 1000)"] = squeeze
        else:
            print(f"no SqueezeNet under {args.shared}; pass --shared", file=sys.stderr)
        print(f"frame {FRAME_SIZE[0]}x{FRAME_SIZE[1]}, box {box.w}x{box.h}, expand 1.6, "
              f"{args.threads} threads, {args.rounds} rounds")
        for name, path in models.items():
            classifier = Classifier(path, threads=args.threads)
            print(report(name, measure_overhead(classifier, frame, box, rounds=args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
