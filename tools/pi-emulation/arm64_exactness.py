#!/usr/bin/env python3
"""Does a bundle compute the same integers on a Pi 4 and a Pi 5 as on this x86 machine?

    sudo python3 tools/pi-emulation/arm64_exactness.py [--shared ../shared/data]

Runs the shipped AIY bundle and the same .tflite converted with uint8 weights everywhere
(``qdq-u8``, whose u8u8 kernels are exact on every CPU) on shared photos and synthetic extremes,
here and under qemu as a Cortex-A72 (no dot product: onnxruntime's int16-pair NEON kernel for
int8 weights) and a Cortex-A76 (UDOT), through ``arm64-ort.sh``. Prints the largest difference
of each output between the two bundles per CPU, and between the CPUs. The embedding is the
dequantized uint8 pool, so 0 there means every integer up to it matched.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TFLITE = Path("models") / "aiy_birds_v1" / "aiy_birds_v1.tflite"


def outputs(bundles: dict[str, Path], inputs: np.ndarray) -> dict[str, np.ndarray]:
    """probs and embedding of each bundle on each image (only onnxruntime and numpy)."""
    import onnxruntime as ort

    result: dict[str, np.ndarray] = {}
    for name, path in bundles.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        image = session.get_inputs()[0]
        got = []
        for rgb in inputs:
            feed = rgb[None] if image.type == "tensor(uint8)" else (
                (rgb.transpose(2, 0, 1)[None].astype(np.float32) - 128) / 128)
            got.append(session.run(["probs", "embedding"], {image.name: feed}))
        result[f"{name}.probs"] = np.array([p[0] for p, _ in got])
        result[f"{name}.embedding"] = np.array([e[0] for _, e in got])
    return result


def prepare(shared: Path, tmp: Path) -> dict[str, Path]:
    import cv2

    sys.path.insert(0, str(REPO))
    from feederd.assets import default_model_path
    from feederd.classifier import resize_for_model
    from feederd.tflite_import import import_tflite

    with (shared / "images.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[::98]
    images = [resize_for_model(cv2.imread(str(shared / r["path"])), 224, 224)[:, :, ::-1]
              for r in rows]
    checker = (np.indices((224, 224)).sum(0) % 2 * 255).astype(np.uint8)
    images += [np.zeros((224, 224, 3), np.uint8), np.full((224, 224, 3), 255, np.uint8),
               np.repeat(checker[:, :, None], 3, axis=2)]
    np.save(tmp / "inputs.npy", np.ascontiguousarray(np.stack(images)))
    u8 = import_tflite(shared / TFLITE, tmp / "qdq-u8.onnx", mode="qdq-u8")
    return {"shipped": default_model_path(), "qdq-u8": u8}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":  # inside the emulated CPU
        folder = Path(sys.argv[2])
        bundles = {"shipped": Path(sys.argv[3]), "qdq-u8": folder / "qdq-u8.onnx"}
        np.savez(folder / sys.argv[4], **outputs(bundles, np.load(folder / "inputs.npy")))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        bundles = prepare(args.shared, tmp)
        runs = {"x86": outputs(bundles, np.load(tmp / "inputs.npy"))}
        for cpu in ("a72", "a76"):
            subprocess.run([str(HERE / "arm64-ort.sh"), cpu, __file__, "--worker", str(tmp),
                            str(bundles["shipped"]), f"{cpu}.npz"], check=True)
            runs[cpu] = dict(np.load(tmp / f"{cpu}.npz"))
    for cpu, got in runs.items():
        for part in ("probs", "embedding"):
            gap = np.abs(got[f"shipped.{part}"] - got[f"qdq-u8.{part}"]).max()
            across = np.abs(got[f"shipped.{part}"] - runs["x86"][f"shipped.{part}"]).max()
            print(f"{cpu:4} {part:9} shipped vs qdq-u8 max |diff| {gap:.3g}; "
                  f"shipped vs x86 {across:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
