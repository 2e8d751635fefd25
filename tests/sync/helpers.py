"""Real parts for the feeder-sync tests: a small ONNX backbone, photo-like images, a local
"device" (feederd config, real spool) and runners for the two real command lines."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from feederd.config import SpoolConfig
from feederd.mining.decisions import Candidate
from feederd.spool import Spool
from feederd.types import ClassifiedFrame, Prediction

FEEDERD = f"{sys.executable} -m feederd.cli"
SYNC = [sys.executable, "-m", "feederd.sync.cli"]
BACKBONE_TENSOR = "features"

# Colour (BGR) of the animal in each synthetic class; "other" birds are green or grey.
COLOURS = {"robin": (40, 60, 200), "jay": (200, 90, 30), "other": (60, 160, 60),
           "squirrel": (40, 90, 150)}


def make_backbone(path: Path, seed: int = 3) -> Path:
    """An ImageNet-style classifier in miniature (opset 11): data [1,3,32,32] -> Conv -> Relu
    = ``features`` (16 x 32 x 32) -> GlobalAveragePool -> Flatten -> Gemm -> Softmax."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (16, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.5, (10, 16)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["data", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], [BACKBONE_TENSOR]),
        helper.make_node("GlobalAveragePool", [BACKBONE_TENSOR], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def photo(kind: str, seed: int, size: int = 48) -> np.ndarray:
    """A noisy background with an animal-coloured blob placed at random."""
    rng = np.random.default_rng(seed)
    image = rng.integers(90, 150, (size, size, 3)).astype(np.uint8)
    colour = np.array(COLOURS[kind], float) + rng.normal(0, 18, 3)
    if kind == "other" and seed % 2:
        colour = np.full(3, rng.uniform(60, 200))
    centre = (int(rng.integers(14, size - 14)), int(rng.integers(14, size - 14)))
    axes = (int(rng.integers(7, 13)), int(rng.integers(5, 10)))
    cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360,
                tuple(int(c) for c in np.clip(colour, 0, 255)), -1)
    return image


def jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return data.tobytes()


def make_dataset(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """``root/<label>/<n>.jpg`` for each label."""
    for index, (label, count) in enumerate(counts.items()):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(count):
            (folder / f"{label}_{n:03d}.jpg").write_bytes(
                jpeg(photo(label, seed * 10_000 + index * 1000 + n)))
    return root


def write_toml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def device_config(tmp: Path) -> Path:
    """A feederd config for a device whose state lives in ``tmp/device``."""
    return write_toml(tmp / "feederd.toml", f'state_dir = "{tmp / "device"}"\n'
                      "[mqtt]\nenabled = false\n[homeassistant]\nenabled = false\n"
                      "[spool]\ncommit_interval_s = 0\n")


def sync_config(tmp: Path, device: str = "feeder", *, transport: str = "local",
                extra: str = "", training: str = "") -> Path:
    """A feeder-sync config with one device reached through the real feederd CLI."""
    feederd_config = device_config(tmp)
    text = (f'workspace = "{tmp / "workspace"}"\n[training]\n{training}\n'
            f"[devices.{device}]\n"
            f'transport = "{transport}"\nfeederd = "{FEEDERD}"\n'
            f'feederd_config = "{feederd_config}"\n{extra}\n')
    return write_toml(tmp / "sync.toml", text)


def spool_dir(tmp: Path) -> Path:
    return tmp / "device" / "spool"


def models_dir(tmp: Path) -> Path:
    return tmp / "device" / "models"


def add_samples(spool: Path, samples: Iterable[tuple[bytes, str | None, str | None,
                                                     Sequence[str]]],
                *, predicted: str = "robin", visit: str = "20250101T000000.000Z-0001") -> int:
    """Store samples in the device's real spool as the daemon would: (jpeg, label,
    label_source, reasons) each. Returns the spool's last sequence number."""
    with Spool(spool, SpoolConfig(commit_interval_s=0), dedup_distance=0) as store:
        for n, (data, label, source, reasons) in enumerate(samples):
            prediction = Prediction(labels=(predicted, "other"), scores=(0.8, 0.2),
                                    probs=np.array([0.8, 0.2], np.float32))
            frame = ClassifiedFrame(visit_id=visit, seq=n, mono=float(n), wall=time.time(),
                                    prediction=prediction, box=None,
                                    crop=np.zeros((2, 2, 3), np.uint8), of_interest=True)
            store.put(Candidate(frame, tuple(reasons), label, source, 1.0, n + 1), data, "v0")  # type: ignore[arg-type]
        store.flush()
        return store.last_seq


def run_sync(config: Path, *args: str, check: bool = True, timeout: float = 300,
             stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``feeder-sync --config CONFIG ARGS`` as a real subprocess."""
    command = [*SYNC, *args[:1], "--config", str(config), *args[1:]]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          input=stdin, env={**os.environ, "FEEDER_SYNC_CONFIG": ""})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def run_json(config: Path, *args: str) -> Any:
    return json.loads(run_sync(config, *args, "--json").stdout)


def feederd(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The device's real ``feederd`` command line."""
    command = [*FEEDERD.split(), *args[:2], "--config", str(config), *args[2:]]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def pulled_samples(workspace: Path, visits: int, per_visit: int, *, seed: int = 0,
                   labels: Sequence[str] = ("robin", "jay", "other"), size: int = 96,
                   start_id: int = 1) -> list[dict[str, Any]]:
    """Write pulled samples straight into a workspace, as ``feeder-sync pull`` leaves them:
    real JPEGs under ``samples/`` and rows in the real ``samples.db``. Each visit has its own
    time and margin spread; every third sample carries a pseudo-label."""
    from feederd.sync.samples import SampleIndex

    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    kinds = list(COLOURS)
    for v in range(visits):
        when = 1_764_590_000.0 + 3600 * v
        for k in range(per_visit):
            n = start_id + len(rows)
            data = jpeg(photo(kinds[(v + k) % len(kinds)], seed * 100_000 + n, size))
            sha = hashlib.sha256(data).hexdigest()
            path = workspace / "samples" / sha[:2] / f"{sha}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            p = rng.dirichlet(np.ones(len(labels)) * 0.7)
            probs = {name: round(float(x), 4) for name, x in zip(labels, p, strict=True)}
            ranked = np.sort(p)[::-1]
            pseudo = n % 3 == 0
            rows.append({"id": n, "sha256": sha, "seq": n, "visit_id": f"visit-{v:04d}",
                         "time": when + 2 * k, "reasons": ["flicker_positive"] if pseudo
                         else ["low_margin"], "predicted": labels[int(p.argmax())],
                         "probs": probs,
                         "margin": round(float(ranked[0] - ranked[1]), 4),
                         "label": labels[int(p.argmax())] if pseudo else None,
                         "label_source": "pseudo" if pseudo else None, "model_version": "v0",
                         "phash": None, "size": len(data),
                         "file": str(path.relative_to(workspace))})
    with SampleIndex(workspace / "samples.db") as index:
        index.commit(rows, "spool-test", start_id + len(rows) - 1)
    return rows
