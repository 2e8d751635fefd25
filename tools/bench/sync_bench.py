"""feeder-sync benchmarks on the shared SqueezeNet and photos, measured side by side.

1. Embedding throughput of feeder-sync's cached runner (hash, decode in worker threads,
   Classifier preprocessing, batched inference, SQLite cache) as a ratio to a bare
   onnxruntime loop (decode, resize, normalise, ``session.run``) on the same images and model.
2. Head training time on ~2,000 cached embeddings (standardise + logistic regression).
3. An incremental retrain after 25 new samples (cache warm) as a fraction of a full retrain
   (empty cache: every image embedded again).
4. Wall time of one ``feeder-sync loop`` (pull, train, evaluate, push) on the acceptance
   scenario through a local device's real ``feederd`` CLI.

Usage: ``python tools/bench/sync_bench.py [--shared DIR] [--repeat N]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

sys.path.insert(0, str(REPO / "tools" / "bench"))
from benchutil import Spread  # noqa: E402
from sync.helpers import add_samples, run_json, run_sync, spool_dir, sync_config  # noqa: E402
from sync.test_scenario import link_birds  # noqa: E402

from feederd.classifier import resize_for_model  # noqa: E402
from feederd.sync.build import SQUEEZENET_EMBEDDING, SQUEEZENET_INPUT, embedding_model  # noqa: E402
from feederd.sync.config import TrainingConfig  # noqa: E402
from feederd.sync.dataset import BundleRunner, VectorCache  # noqa: E402
from feederd.sync.head import fit_head  # noqa: E402
from feederd.sync.train import train  # noqa: E402
from feederd.sync.workspace import Workspace  # noqa: E402


def bare_onnxruntime(model: Path, paths: list[Path], batch: int, threads: int,
                     decoders: int = 2) -> float:
    """Seconds for what a competent user writes: decode in ``decoders`` threads (one batch
    ahead), resize exactly as the device does (:func:`resize_for_model`), normalise, run.

    Same resize, same decode threads, same onnxruntime threads and batch as the measured side,
    so the ratio is the cost of hashing and caching, not of a weaker baseline.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    mean = np.array(SQUEEZENET_INPUT.mean, np.float32)
    h, w = SQUEEZENET_INPUT.size
    session.run(["embedding"], {name: np.zeros((batch, 3, h, w), np.float32)})  # warm up

    def load(path: Path) -> np.ndarray:
        image = resize_for_model(cv2.imread(str(path), cv2.IMREAD_COLOR), w, h)
        return (image.astype(np.float32) - mean).transpose(2, 0, 1)

    chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=decoders) as pool:
        pending = [pool.submit(load, p) for p in chunks[0]] if chunks else []
        for index in range(len(chunks)):
            ready = pending
            nxt = chunks[index + 1] if index + 1 < len(chunks) else []
            pending = [pool.submit(load, p) for p in nxt]
            session.run(["embedding"], {name: np.stack([f.result() for f in ready])})
    return time.perf_counter() - started


def ort_only(model: Path, tensors: np.ndarray, batch: int, threads: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(["embedding"], {name: tensors[:batch]})
    started = time.perf_counter()
    for start in range(0, len(tensors), batch):
        session.run(["embedding"], {name: tensors[start:start + batch]})
    return time.perf_counter() - started


def runner_time(model: Path, paths: list[Path], cache_path: Path, batch: int, threads: int
                ) -> tuple[float, np.ndarray]:
    cache_path.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(f"{cache_path}{suffix}").unlink(missing_ok=True)
    cache = VectorCache(cache_path)
    runner = BundleRunner(model, cache, "bench", "embedding", threads, batch)
    started = time.perf_counter()
    x, _ = runner.vectors(paths)
    elapsed = time.perf_counter() - started
    cache.close()
    return elapsed, x


def bench_embedding(shared: Path, tmp: Path, repeat: int) -> np.ndarray:
    """Alternate the two sides on the same images, ``repeat`` rounds; the median round ratio
    resists other load on the machine better than one long run of each."""
    backbone = shared / "models/squeezenet1.1/squeezenet1.1-fp32.onnx"
    model = embedding_model(backbone, SQUEEZENET_EMBEDDING, tmp / "embedder.onnx",
                            SQUEEZENET_INPUT)
    paths = sorted(p for p in (shared / "images").rglob("*") if p.is_file())
    for path in paths:
        path.read_bytes()  # page cache warm for both sides
    batch, threads = 16, 2
    bare, ours, ratios = [], [], []
    x = np.zeros(0)
    for round_ in range(repeat + 1):  # round 0 warms both sides up and is not counted
        if round_ % 2:  # alternate which side goes first
            b = bare_onnxruntime(model, paths, batch, threads)
            elapsed, x = runner_time(model, paths, tmp / "cache.db", batch, threads)
        else:
            elapsed, x = runner_time(model, paths, tmp / "cache.db", batch, threads)
            b = bare_onnxruntime(model, paths, batch, threads)
        if round_ == 0:
            continue
        bare.append(b)
        ours.append(elapsed)
        ratios.append(bare[-1] / ours[-1])
    h, w = SQUEEZENET_INPUT.size
    tensors = np.stack([(resize_for_model(cv2.imread(str(p)), w, h).astype(np.float32)
                         - np.array(SQUEEZENET_INPUT.mean, np.float32)).transpose(2, 0, 1)
                        for p in paths[:256]])
    pure = statistics.median(ort_only(model, tensors, batch, threads) for _ in range(repeat))
    n = len(paths)
    print(f"1. embedding {n} images (SqueezeNet 1.1 fp32, batch {batch}, {threads} threads), "
          f"{repeat} alternating rounds:")
    for label, times in (("bare onnxruntime loop (2 decode threads, same resize)", bare),
                         ("feeder-sync cached runner (hash+decode+run+cache)", ours)):
        print(f"   {label}: {Spread.of(times).show(1, 's')} "
              f"({n / statistics.median(times):6.1f} img/s)")
    print(f"   throughput ratio feeder-sync / bare: median {statistics.median(ratios):.2f} "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}; target >= 0.9)")
    print(f"   (inference alone on pre-made tensors: {256 / pure:6.1f} img/s)")
    return x


def scenario_labels(shared: Path, paths: list[Path]) -> list[str]:
    """The six scenario classes for birds; squirrel, cat, ... for the rest."""
    from sync.test_scenario import label_of

    labels = []
    for path in paths:
        parts = path.relative_to(shared / "images").parts
        labels.append(label_of(parts[1]) if parts[0] == "bird" else parts[0])
    return labels


def bench_head(x: np.ndarray, shared: Path) -> None:
    paths = sorted(p for p in (shared / "images").rglob("*") if p.is_file())
    labels = scenario_labels(shared, paths)
    cfg = TrainingConfig.model_validate({})
    times = []
    for _ in range(3):
        started = time.perf_counter()
        fit_head(x, labels, sorted(set(labels)), cfg)
        times.append(time.perf_counter() - started)
    print(f"2. head training on {len(x)} cached 512-d embeddings, {len(set(labels))} classes "
          f"(C={cfg.c}, {cfg.class_weight}): {Spread.of(times).show(1, 's')}")


def bench_retrain_and_loop(shared: Path, tmp: Path) -> None:
    config = sync_config(tmp)
    data = link_birds(shared, tmp / "birds")
    squirrels = sorted(p for p in (shared / "images/squirrel").rglob("*") if p.is_file())
    run_sync(config, "init", "--device", "feeder", "--backbone",
             str(shared / "models/squeezenet1.1/squeezenet1.1-fp32.onnx"), "--embedding-output",
             SQUEEZENET_EMBEDDING, "--preprocess", "caffe", "--data", str(data),
             "--negative-labels", "other", timeout=1800)
    run_sync(config, "push")
    ws = Workspace(tmp / "workspace", "feeder")
    cfg = TrainingConfig.model_validate({})
    for name in ("embeddings.db", "embeddings.db-wal", "embeddings.db-shm"):
        (ws.dir / name).unlink(missing_ok=True)
    full = train(ws, cfg)
    picked = sorted(squirrels, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())[:25]
    add_samples(spool_dir(tmp), [(p.read_bytes(), "other", "user", ["rejected"])
                                 for p in picked])
    run_sync(config, "pull")
    incremental = train(ws, cfg)
    print(f"3. full retrain (empty cache, {full.embedded} images embedded): {full.seconds:.2f} s"
          f" (embed {full.timings['embed_s']:.1f}, fit {full.timings['fit_s']:.1f})")
    print(f"   incremental retrain after 25 new samples ({incremental.embedded} embedded, "
          f"out-of-fold {incremental.timings.get('oof_s', 0):.1f} s): "
          f"{incremental.seconds:.2f} s = {incremental.seconds / full.seconds:.2f} of a full "
          "retrain")
    more = sorted(squirrels, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())[25:50]
    add_samples(spool_dir(tmp), [(p.read_bytes(), "other", "user", ["rejected"])
                                 for p in more])
    started = time.perf_counter()
    summary = run_json(config, "loop")
    wall = time.perf_counter() - started
    print(f"4. one 'feeder-sync loop' on the scenario (25 new rejected squirrels): {wall:.1f} s "
          f"wall; steps {summary['seconds']}; gate {summary['gate']}, pushed "
          f"{bool(summary['pushed'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=os.environ.get(
        "FEEDERD_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    shared = Path(args.shared)
    if not (shared / "models/squeezenet1.1").is_dir():
        print(f"{shared}: shared data not found; nothing to measure")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    try:
        x = bench_embedding(shared, tmp, args.repeat)
        bench_head(x, shared)
        bench_retrain_and_loop(shared, tmp / "scenario")
    except subprocess.CalledProcessError as exc:
        print(f"failed: {exc}")
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
