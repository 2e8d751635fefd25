"""The bundled AIY Birds V1 under ONNX Runtime against the TFLite original under LiteRT.

    python tools/bench/litert_bench.py [--shared ../shared/data] [--threads 1 2] [--rounds 15]

Peers (WhosAtMyFeeder, Frigate, BirdView) run this model with LiteRT/TFLite, so LiteRT on the
same ``.tflite`` file is the honest baseline. Both runtimes get the same 224x224 RGB pixels of
the same shared photos (feederd's own resize, done once beforehand), with the same thread
count. Three paths are timed per image:

- ``litert``: ``set_tensor`` (uint8) + ``invoke`` + ``get_tensor``;
- ``ort``: a bare ``session.run`` of the bundle on the float input ``prepare`` made;
- ``ort+prepare``: what feederd does per crop after resizing: the float normalisation into the
  reused buffer, then ``session.run``.

Everything is warmed first; rounds interleave the paths (rotating which goes first) so that a
busy machine slows all alike; each round's figure is the mean over the images, and the
min/median/max of the rounds are printed with the ratios of the medians. Goal: ort / litert
<= 1.0.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from feederd.assets import default_model_path
from feederd.classifier import Classifier, resize_for_model

DEFAULT_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
TFLITE = Path("models") / "aiy_birds_v1" / "aiy_birds_v1.tflite"


def photos(shared: Path, count: int) -> list[np.ndarray]:
    """``count`` shared photos spread over images.csv, resized to 224x224 BGR."""
    with (shared / "images.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    step = max(1, len(rows) // count)
    images = [cv2.imread(str(shared / row["path"])) for row in rows[::step][:count]]
    return [resize_for_model(image, 224, 224) for image in images]


def litert_path(tflite: Path, images_bgr: list[np.ndarray], threads: int
                ) -> Callable[[], None]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite), num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    inputs = [np.ascontiguousarray(image[None, :, :, ::-1]) for image in images_bgr]

    def work() -> None:
        for batch in inputs:
            interpreter.set_tensor(inp, batch)
            interpreter.invoke()
            interpreter.get_tensor(out)
    return work


def ort_paths(bundle: Path, images_bgr: list[np.ndarray], threads: int
              ) -> tuple[Callable[[], None], Callable[[], None]]:
    classifier = Classifier(bundle, threads)
    prepared = [classifier.prepare(image).copy() for image in images_bgr]

    def bare() -> None:
        for batch in prepared:
            classifier.run(batch)

    def with_prepare() -> None:
        for image in images_bgr:
            classifier.run(classifier.prepare(image))
    return bare, with_prepare


def per_image_ms(work: Callable[[], None], images: int) -> float:
    start = time.perf_counter()
    work()
    return (time.perf_counter() - start) / images * 1e3


def bench(paths: dict[str, Callable[[], None]], images: int, rounds: int
          ) -> dict[str, list[float]]:
    for work in paths.values():  # warm: arenas, kernels, thread pools
        work()
    samples: dict[str, list[float]] = {name: [] for name in paths}
    names = list(paths)
    for index in range(rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            samples[name].append(per_image_ms(paths[name], images))
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("FEEDERD_SHARED_DATA", DEFAULT_SHARED)))
    parser.add_argument("--bundle", type=Path, default=default_model_path())
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    tflite = args.shared / TFLITE
    if not tflite.is_file():
        print(f"no {tflite}; pass --shared", file=sys.stderr)
        return 2
    images = photos(args.shared, args.images)
    print(f"{args.bundle.name} vs {tflite.name}: {len(images)} shared photos at 224x224, "
          f"{args.rounds} interleaved rounds, ms per image (min / median / max)")
    for threads in args.threads:
        bare, with_prepare = ort_paths(args.bundle, images, threads)
        paths = {"litert": litert_path(tflite, images, threads), "ort": bare,
                 "ort+prepare": with_prepare}
        samples = bench(paths, len(images), args.rounds)
        med = {name: statistics.median(values) for name, values in samples.items()}
        for name, values in samples.items():
            print(f"  threads {threads}  {name:<12} {min(values):6.2f} / {med[name]:6.2f} / "
                  f"{max(values):6.2f}")
        print(f"  threads {threads}  ratio ort/litert {med['ort'] / med['litert']:.3f}   "
              f"ort+prepare/litert {med['ort+prepare'] / med['litert']:.3f}   (goal <= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
