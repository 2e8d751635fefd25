"""Convert a TFLite bird classifier into a feederd bundle, and measure it against LiteRT.

    python tools/convert_tflite.py                 # AIY Birds V1 -> models/aiy_birds_v1.onnx
    python tools/convert_tflite.py --source ../shared/data/models/inat_bird_mobilenet_v2/\
mobilenet_v2_1.0_224_inat_bird_quant.tflite --out /tmp/inat.onnx --version inat-bird-v2
    python tools/convert_tflite.py --measure-only  # figures for the committed bundle
    python tools/convert_tflite.py --compare fp32 qdq-u8  # the variants, same photos

The conversion itself is :func:`feederd.tflite_import.import_tflite` (the code behind
``feederd model import``; no TensorFlow). This script adds what only a maintainer has: the
LiteRT reference (``ai-edge-litert``) and the shared photos. It runs every photo of
``../shared/data/images.csv`` through both runtimes with the same feederd preprocessing and
reports top-1 agreement (all photos; a LiteRT tie at its 1/256 output grid counts as agreement
when ours is one of the tied classes) and top-1/top-5 accuracy on the CUB photos of the
species the model knows, and stores those figures in the bundle's ``feederd.metrics``.
Targets: agreement >= 99%, accuracy within 0.5 point of LiteRT.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from feederd.bundle import Bundle
from feederd.classifier import Classifier, resize_for_model
from feederd.tflite_import import import_tflite

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
AIY = SHARED / "models" / "aiy_birds_v1" / "aiy_birds_v1.tflite"
INAT_LABELS = SHARED / "models" / "inat_bird_mobilenet_v2" / "inat_bird_labels.txt"
OUT = REPO / "models" / "aiy_birds_v1.onnx"
CREATED = "2026-12-01T00:00:00Z"  # fixed, so that re-running gives the same file


@dataclass(frozen=True)
class Photo:
    path: Path
    source: str
    fine: str


@dataclass
class Scores:
    """Top-5 class indices per photo for one runtime, and the tie sets of LiteRT's top-1."""

    top5: np.ndarray
    top1_sets: list[set[int]]
    seconds: float
    top5_grid: np.ndarray | None = None  # ours, ranked after rounding to LiteRT's output grid


def shared_photos(shared: Path) -> list[Photo]:
    with (shared / "images.csv").open(encoding="utf-8") as handle:
        return [Photo(shared / row["path"], row["source"], row["fine"])
                for row in csv.DictReader(handle)]


def cub_targets(bundle: Bundle, photos: list[Photo]) -> dict[int, int]:
    """Photo index -> class index for CUB photos whose folder names a class of the model.

    CUB writes "Anna_Hummingbird" where the model says "Anna's Hummingbird": both are reduced
    to lower-case letters after dropping a possessive "'s".
    """
    def key(name: str) -> str:
        return re.sub(r"[^a-z]", "", name.lower().replace("'s ", " "))

    by_key = {key(bundle.display_name(label)): i for i, label in enumerate(bundle.labels)}
    return {i: by_key[key(p.fine.replace("_", " "))] for i, p in enumerate(photos)
            if p.source == "serizba/vision" and key(p.fine.replace("_", " ")) in by_key}


def model_input(image_bgr: np.ndarray, bundle: Bundle) -> np.ndarray:
    """The uint8 RGB pixels both runtimes see (feederd's own resize)."""
    resized = resize_for_model(image_bgr, bundle.input.width, bundle.input.height)
    return np.ascontiguousarray(resized[:, :, ::-1])


def run_litert(tflite_path: Path, images: list[np.ndarray], threads: int) -> Scores:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_path), num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    top5, ties = [], []
    start = time.perf_counter()
    for rgb in images:
        interpreter.set_tensor(inp, rgb[None])
        interpreter.invoke()
        scores = interpreter.get_tensor(out)[0].astype(np.int32)
        top5.append(np.argsort(-scores, kind="stable")[:5])
        ties.append(set(np.flatnonzero(scores == scores.max()).tolist()))
    return Scores(np.array(top5), ties, time.perf_counter() - start)


def run_bundle(bundle_path: Path, images: list[np.ndarray], threads: int,
               grid: float = 1 / 256) -> Scores:
    """Our ranks; also ranked on LiteRT's uint8 output grid (``grid`` = its output scale),
    where many small probabilities tie at 0 and the lowest index wins, as in LiteRT."""
    classifier = Classifier(bundle_path, threads)
    top5, ties, gridded = [], [], []
    start = time.perf_counter()
    for rgb in images:
        probs, _ = classifier.run(classifier.prepare(np.ascontiguousarray(rgb[:, :, ::-1])))
        order = np.argsort(-probs[0], kind="stable")[:5]
        top5.append(order)
        ties.append({int(order[0])})
        rounded = np.clip(np.round(probs[0] / grid), 0, 255)
        gridded.append(np.argsort(-rounded, kind="stable")[:5])
    return Scores(np.array(top5), ties, time.perf_counter() - start, np.array(gridded))


def agreement(ours: Scores, reference: Scores) -> float:
    hits = sum(int(o[0]) in ref for o, ref in zip(ours.top5, reference.top1_sets, strict=True))
    return hits / len(ours.top5)


def accuracy(scores: Scores, targets: dict[int, int]) -> tuple[float, float]:
    top1 = np.mean([scores.top5[i][0] == t for i, t in targets.items()])
    top5 = np.mean([t in scores.top5[i] for i, t in targets.items()])
    return float(top1), float(top5)


def measure(bundle_path: Path, tflite_path: Path, shared: Path, threads: int,
            reference: Scores | None = None) -> tuple[dict[str, float], Scores]:
    bundle = Classifier(bundle_path, 1).bundle
    photos = shared_photos(shared)
    images = [model_input(cv2.imread(str(p.path), cv2.IMREAD_COLOR), bundle) for p in photos]
    reference = reference or run_litert(tflite_path, images, threads)
    ours = run_bundle(bundle_path, images, threads)
    targets = cub_targets(bundle, photos)
    lite1, lite5 = accuracy(reference, targets)
    our1, our5 = accuracy(ours, targets)
    grid5 = accuracy(Scores(ours.top5_grid, [], 0.0), targets)[1]  # type: ignore[arg-type]
    figures = {
        "litert_top1_agreement": round(agreement(ours, reference), 4),
        "photos": len(photos), "cub_photos": len(targets),
        "cub_top1": round(our1, 4), "cub_top5": round(our5, 4),
        "cub_top5_on_litert_output_grid": round(grid5, 4),
        "litert_cub_top1": round(lite1, 4), "litert_cub_top5": round(lite5, 4),
    }
    print(f"{bundle_path.name}: agreement with LiteRT {figures['litert_top1_agreement']:.2%} "
          f"on {len(photos)} photos; CUB ({len(targets)} photos of "
          f"{len(set(targets.values()))} known species) top-1 {our1:.2%} / top-5 {our5:.2%} "
          f"({grid5:.2%} ranked on LiteRT's 1/256 output grid), "
          f"LiteRT {lite1:.2%} / {lite5:.2%}; wall {ours.seconds:.1f} s vs LiteRT "
          f"{reference.seconds:.1f} s (not a benchmark: see tools/bench/litert_bench.py)")
    return figures, reference


def convert(args: argparse.Namespace, out: Path, mode: str = "qdq",
            metrics: dict[str, float] | None = None) -> Path:
    names = args.names if args.names and args.names.is_file() else None
    return import_tflite(args.source, out, labels=args.labels, names=names,
                         version=args.version, created=args.created, metrics=metrics,
                         mode=mode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=AIY)
    parser.add_argument("--labels", type=Path, default=None,
                        help="label file (default: the one inside the .tflite)")
    parser.add_argument("--names", type=Path, default=INAT_LABELS,
                        help="'Scientific (Common)' lines giving common names")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--version", default="aiy-birds-v1")
    parser.add_argument("--created", default=CREATED)
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--measure-only", action="store_true",
                        help="measure --out as it is, write nothing")
    parser.add_argument("--compare", nargs="*", default=[], choices=["fp32", "qdq-u8"],
                        help="also build and measure these variants (not written)")
    args = parser.parse_args(argv)
    if args.measure_only:
        measure(args.out, args.source, args.shared, args.threads)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        draft = convert(args, Path(tmp) / "draft.onnx")
        figures, reference = measure(draft, args.source, args.shared, args.threads)
        for mode in args.compare:
            other = convert(args, Path(tmp) / f"{mode}.onnx", mode=mode)
            measure(other, args.source, args.shared, args.threads, reference)
    convert(args, args.out, metrics=figures)
    print(json.dumps(figures, indent=1))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
