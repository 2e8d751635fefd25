"""The bundled AIY Birds V1 under ONNX Runtime against the TFLite original under LiteRT.

    python tools/bench/litert_bench.py [--shared ../shared/data] [--threads 1 2] [--rounds 15]

Peers (WhosAtMyFeeder, Frigate, BirdView) run this model with LiteRT/TFLite, so LiteRT on the
same ``.tflite`` file, as it comes (its default XNNPACK delegate), is the honest baseline. Both
runtimes get the same 224x224 uint8 RGB pixels of the same shared photos (feederd's own resize,
done once beforehand; the script checks the two inputs are equal), with the same thread count,
in the Classifier's own session (the options feederd runs with). Paths timed per image:

- ``litert``: ``set_tensor`` (uint8) + ``invoke`` + ``get_tensor``;
- ``ort``: a bare ``Classifier.run`` of the bundle on the input ``prepare`` made (for the
  shipped bundle: the uint8 pixels themselves);
- ``ort+prepare``: what feederd does per crop: ``prepare`` (resize of the 224x224 crop, BGR to
  RGB into the reused buffer) then ``run``;
- ``ort spinning``: the bare run in a session whose worker threads busy-wait between runs
  (onnxruntime's default; feederd's classifier bounds the spin to 50 us,
  ``feederd.onnx_session.SPIN_US``);
- ``ort no spin``: the bare run with worker threads that sleep at once (feederd before the
  bounded spin);
- ``ort qdq-u8`` (``--variant``): the bare run of the same .tflite converted the earlier way
  (uint8 weights everywhere, float NCHW input; see :class:`feederd.tflite_graph.Converter`).

Everything is warmed first; rounds interleave the paths (rotating which goes first) so that a
busy machine slows all alike; each round's figure is the mean over the images, and the
min/median/max of the rounds are printed, wall and process CPU time per image (all threads;
less sensitive to other load than wall time), with the ratios of the medians and the load
average before and after. Goal: ort / litert <= 1.0.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from feederd.assets import default_model_path
from feederd.classifier import Classifier, resize_for_model
from feederd.tflite_import import import_tflite

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
    if prepared[0].dtype == np.uint8 and not all(  # the same pixels LiteRT gets
            np.array_equal(p[0], i[:, :, ::-1]) for p, i in zip(prepared, images_bgr, strict=True)):
        raise SystemExit(f"{bundle}: prepare does not give LiteRT's pixels; not comparable")

    def bare() -> None:
        for batch in prepared:
            classifier.run(batch)

    def with_prepare() -> None:
        for image in images_bgr:
            classifier.run(classifier.prepare(image))
    return bare, with_prepare


def spinning_path(bundle: Path, images_bgr: list[np.ndarray], threads: int, spin: bool
                  ) -> Callable[[], None]:
    """The bundle in a session whose worker threads busy-wait as onnxruntime does by default
    (``spin``), or sleep at once (feederd's setting before the bounded spin)."""
    import onnxruntime as ort

    classifier = Classifier(bundle, threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    session = ort.InferenceSession(str(bundle), options, providers=["CPUExecutionProvider"])
    feeds = [{classifier.input_name: classifier.prepare(image).copy()} for image in images_bgr]

    def work() -> None:
        for feed in feeds:
            session.run(None, feed)
    return work


def per_image_ms(work: Callable[[], None], images: int) -> tuple[float, float]:
    """Wall-clock and process CPU milliseconds per image (CPU: all threads together)."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return ((time.perf_counter() - wall) / images * 1e3,
            (time.process_time() - cpu) / images * 1e3)


def bench(paths: dict[str, Callable[[], None]], images: int, rounds: int
          ) -> dict[str, list[tuple[float, float]]]:
    for work in paths.values():  # warm: arenas, kernels, thread pools
        work()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    names = list(paths)
    for index in range(rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            samples[name].append(per_image_ms(paths[name], images))
    return samples


def report(threads: int, samples: dict[str, list[tuple[float, float]]]) -> None:
    wall = {name: [w for w, _ in values] for name, values in samples.items()}
    cpus = {name: [c for _, c in values] for name, values in samples.items()}
    cpu = {name: statistics.median(values) for name, values in cpus.items()}
    cpu_ratios = ", ".join(f"{name} {cpu[name] / cpu['litert']:.3f}" for name in cpu
                           if name != "litert")
    med = {name: statistics.median(values) for name, values in wall.items()}
    for name, values in wall.items():
        low, high = min(cpus[name]), max(cpus[name])
        print(f"  threads {threads}  {name:<13} wall {min(values):6.2f} / {med[name]:6.2f} / "
              f"{max(values):6.2f}   cpu {low:6.2f} / {cpu[name]:6.2f} / {high:6.2f}")
    ratios = ", ".join(f"{name} {med[name] / med['litert']:.3f}" for name in med
                       if name != "litert")
    print(f"  threads {threads}  ratios to litert, medians (goal <= 1.0):\n"
          f"    wall {ratios}\n    cpu  {cpu_ratios}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("FEEDERD_SHARED_DATA", DEFAULT_SHARED)))
    parser.add_argument("--bundle", type=Path, default=default_model_path())
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--variant", choices=["qdq-u8", "fp32"], nargs="*", default=["qdq-u8"],
                        help="also time these conversions of the same .tflite (not shipped)")
    parser.add_argument("--busy", type=int, default=0,
                        help="keep this many other processes busy-looping meanwhile (a loaded "
                             "machine: spinning worker threads then compete with them)")
    args = parser.parse_args(argv)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(args.busy)]
    try:
        return run(args)
    finally:
        for process in busy:
            process.kill()
            process.wait()


def run(args: argparse.Namespace) -> int:
    tflite = args.shared / TFLITE
    if not tflite.is_file():
        print(f"no {tflite}; pass --shared", file=sys.stderr)
        return 2
    images = photos(args.shared, args.images)
    print(f"{args.bundle.name} vs {tflite.name}: {len(images)} shared photos at 224x224, "
          f"{args.rounds} interleaved rounds, ms per image (min / median / max); load "
          f"average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        variants = {mode: import_tflite(tflite, Path(tmp) / f"{mode}.onnx", mode=mode)
                    for mode in args.variant}
        for threads in args.threads:
            bare, with_prepare = ort_paths(args.bundle, images, threads)
            paths = {"litert": litert_path(tflite, images, threads), "ort": bare,
                     "ort+prepare": with_prepare,
                     "ort spinning": spinning_path(args.bundle, images, threads, True),
                     "ort no spin": spinning_path(args.bundle, images, threads, False)}
            paths.update({f"ort {mode}": ort_paths(path, images, threads)[0]
                          for mode, path in variants.items()})
            report(threads, bench(paths, len(images), args.rounds))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
