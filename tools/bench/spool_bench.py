"""Spool and mining costs, measured side by side in one run.

1. Bytes written to disk per stored sample relative to its JPEG (``/proc/<pid>/io``
   ``write_bytes`` of a writer subprocess, checkpoint and close included; target <= 1.2x), and
   fsyncs per stored sample (``strace -c``, when strace is installed), for SQLite page sizes
   1 KiB (the spool's choice) and 4 KiB, and batches of 1, 4 and 8 samples per commit.
2. Mining cost per classified frame as a fraction of one classification (target <= 5%):
   recent-frame store, visit mining, feedback selection, JPEG of the kept frames, spool.put;
   against ``models/demo.onnx`` (Classifier.classify, crop included) and SqueezeNet 1.1 from
   ../shared/data (the real-data backbone), each when present, timed visit by visit.
3. Export throughput (MB/s) from a spool of ``--export-mb`` MB (default 500) built in a
   temporary directory that is removed afterwards, with the page cache warm and cold.

    python tools/bench/spool_bench.py [--quick] [--export-mb 500] [--dir /var/tmp]

The directory must be on a real disk (tmpfs writes are not counted in write_bytes).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from feederd.config import MiningConfig, SpoolConfig  # noqa: E402
from feederd.mining.decisions import Candidate, feedback_frames, mine_visit  # noqa: E402
from feederd.mining.recent import RecentVisits  # noqa: E402
from feederd.spool import Spool  # noqa: E402
from feederd.spool import index as spool_module  # noqa: E402
from feederd.types import Box, ClassifiedFrame, Prediction  # noqa: E402

SHARED = Path(os.environ.get("FEEDERD_SHARED_DATA", REPO.parent / "shared" / "data"))
SQUEEZENET = SHARED / "models" / "squeezenet1.1" / "squeezenet1.1-fp32.onnx"
LABELS = ("blue_jay", "crow", "hummingbird", "swallow", "woodpecker", "other", "background")
NEGATIVE = frozenset({"other", "background"})


def crops(n: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """Real photos (squirrels) resized to ``size`` when shared data exists, else textures."""
    files = sorted(glob.glob(str(SHARED / "images" / "squirrel" / "squirrel" / "*.jpg")))
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = cv2.imread(files[i % len(files)]) if files else None
        if image is None:
            base = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
            image = cv2.GaussianBlur(cv2.resize(base, size), (5, 5), 0)
        out.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    return out


def frame(visit: str, seq: int, crop: np.ndarray, label: str, conf: float) -> ClassifiedFrame:
    rest = [x for x in LABELS if x != label]
    scores = (conf, (1 - conf) * 0.7, (1 - conf) * 0.3)
    probs = np.array([dict(zip((label, *rest[:2]), scores, strict=True)).get(x, 0.0)
                      for x in LABELS], dtype=np.float32)
    pred = Prediction((label, *rest[:2]), scores, probs)
    return ClassifiedFrame(visit, seq, seq / 4, time.time(), pred, None, crop,
                           label not in NEGATIVE)


def candidate(visit: str, seq: int, crop: np.ndarray, rng: np.random.Generator) -> Candidate:
    f = frame(visit, seq, crop, "crow", 0.55)
    return Candidate(f, ("low_margin",), None, None, 0.3, int(rng.integers(0, 2**63)))


# ---- 1. write amplification --------------------------------------------------------------

def writer_worker(directory: str, page_size: int, batch: int, count: int, side: int) -> None:
    """Subprocess body: spool ``count`` samples in batches, print bytes written as JSON."""
    spool_module.PAGE_SIZE = page_size
    rng = np.random.default_rng(1)
    jpegs = [cv2.imencode(".jpg", c, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
             for c in crops(count, (side, side))]
    cands = [candidate(f"v{i // 8}", i, np.zeros((1, 1, 3), np.uint8), rng)
             for i in range(count)]
    before = _io()
    spool = Spool(Path(directory), SpoolConfig(max_count=10 * count, max_bytes=2**40),
                  dedup_distance=0)
    for start in range(0, count, batch):
        for i in range(start, min(start + batch, count)):
            spool.put(cands[i], jpegs[i], "bench-1")
        spool.flush()
    spool.close()
    after = _io()
    written = (after["write_bytes"] - after["cancelled_write_bytes"]) - \
        (before["write_bytes"] - before["cancelled_write_bytes"])
    print(json.dumps({"written": written, "jpeg_bytes": sum(map(len, jpegs)),
                      "samples": count}))


def _io() -> dict[str, int]:
    text = Path(f"/proc/{os.getpid()}/io").read_text()
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines())}


def run_writer(base: Path, page_size: int, batch: int, count: int, side: int) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="spoolbench-", dir=base))
    trace = directory.with_suffix(".strace")
    cmd = [sys.executable, __file__, "--worker", str(directory), str(page_size), str(batch),
           str(count), str(side)]
    if shutil.which("strace"):
        cmd = ["strace", "-f", "-qq", "-c", "-e", "trace=fsync,fdatasync", "-o", str(trace),
               *cmd]
    try:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        result["fsyncs"] = _strace_calls(trace) if trace.exists() else None
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        trace.unlink(missing_ok=True)
    return result


def _strace_calls(path: Path) -> int:
    total = 0
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync"):
            total += int(parts[3])
    return total


def bench_writes(base: Path, quick: bool) -> None:
    count = 160 if quick else 600
    print(f"\n1. bytes written per stored sample ({count} samples, q90 JPEG crops, close and "
          "checkpoint included)")
    print(f"{'crop':>8} {'page':>5} {'batch':>5} {'JPEG KiB':>9} {'written/JPEG':>13} "
          f"{'overhead KiB':>13} {'fsyncs/sample':>14}")
    for side in (160, 300):
        for page_size in (1024, 4096):
            for batch in (1, 4, 8):
                r = run_writer(base, page_size, batch, count, side)
                jpeg = r["jpeg_bytes"] / r["samples"]
                fs = f"{r['fsyncs'] / r['samples']:.2f}" if r["fsyncs"] is not None else "n/a"
                print(f"{side:>5}px {page_size:>5} {batch:>5} {jpeg / 1024:>9.1f} "
                      f"{r['written'] / r['jpeg_bytes']:>12.3f}x "
                      f"{(r['written'] / r['samples'] - jpeg) / 1024:>13.1f} {fs:>14}")


# ---- 2. mining cost ----------------------------------------------------------------------

def classifiers() -> list[tuple[str, Callable[[np.ndarray], object]]]:
    """Per-frame classification steps to compare with: crop + preprocess + inference."""
    import onnxruntime as ort

    from feederd.classifier import Classifier

    found: list[tuple[str, Callable[[np.ndarray], object]]] = []
    box = Box(560, 280, 160, 160)
    demo = REPO / "models" / "demo.onnx"
    if demo.exists():
        model = Classifier(demo, threads=2)
        found.append(("models/demo.onnx (Classifier.classify)",
                      lambda image: model.classify(image, box)))
    if SQUEEZENET.exists():
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(str(SQUEEZENET), options,
                                       providers=["CPUExecutionProvider"])
        mean = np.array([104, 117, 123], np.float32).reshape(3, 1, 1)

        def squeezenet(image: np.ndarray) -> object:
            crop = image[box.y - 48:box.y + box.h + 48, box.x - 48:box.x + box.w + 48]
            x = cv2.resize(crop, (224, 224)).transpose(2, 0, 1).astype(np.float32) - mean
            return session.run(None, {"data_0": x[None]})

        found.append(("SqueezeNet 1.1 fp32 224x224 (the real-data bundle's backbone)",
                      squeezenet))
    if not found:
        raise SystemExit("no model to time: neither models/demo.onnx nor shared SqueezeNet")
    for _, classify in found:  # warm-up: the first runs allocate arenas
        for _ in range(5):
            classify(np.zeros((720, 1280, 3), np.uint8))
    return found


def visit_frames(visit: str, images: list[np.ndarray]) -> list[ClassifiedFrame]:
    """A crow visit with an unsure stretch and one flicker each way."""
    out = []
    for i, crop in enumerate(images):
        label, conf = ("background", 0.9) if i < 4 or i >= len(images) - 4 else ("crow", 0.8)
        if i == len(images) // 2:
            label, conf = "background", 0.7  # flicker_positive
        if i == 1:
            label, conf = "hummingbird", 0.75  # flicker_negative
        if 10 <= i < 14:
            conf = 0.45  # low margin
        out.append(frame(visit, i, crop, label, conf))
    return out


def mine_one_visit(frames: list[ClassifiedFrame], spool: Spool, eager: bool) -> None:
    """What the daemon does per visit, apart from classifying."""
    cfg = MiningConfig()
    recent = RecentVisits(cfg.recent_max_bytes, cfg.recent_max_age_s, cfg.jpeg_quality)
    for f in frames:
        recent.add(f)
        if eager:
            recent.jpeg(f.visit_id, f.seq)
    hashes: dict[int, int] = {}
    cands = mine_visit(frames, cfg, NEGATIVE, hashes=hashes)
    keep = {c.frame.seq for c in cands} | set(feedback_frames(frames, cfg, hashes=hashes))
    recent.close(frames[0].visit_id, keep)
    for c in cands:
        jpeg = recent.jpeg(c.frame.visit_id, c.frame.seq)
        if jpeg is not None:
            spool.put(c, jpeg, "bench-1")


def bench_mining(base: Path, quick: bool) -> None:
    """Classification and mining timed visit by visit, interleaved, so load hits both alike."""
    models = classifiers()
    n_frames, visits = 40, 5 if quick else 20
    images = crops(n_frames, (224, 224))
    scene = cv2.resize(crops(1, (320, 180), seed=5)[0], (1280, 720))
    directory = Path(tempfile.mkdtemp(prefix="spoolbench-", dir=base))
    spent = dict.fromkeys([name for name, _ in models] + [
        f"{v}{part}" for v in ("lazy", "eager")
        for part in ("", " writer cpu", " writer wall")], 0.0)
    try:
        spool = Spool(directory, SpoolConfig(max_count=100_000, max_bytes=2**40))
        rng = np.random.default_rng(2)
        with spool._state:  # a spool already holding 10,000 hashes, for the dedup scan
            for i in range(10_000):
                spool._hashes.add(-1 - i, int(rng.integers(0, 2**63)), 0)
        for v in range(visits):
            for name, classify in models:
                start = time.perf_counter()
                for _ in range(n_frames):
                    classify(scene)
                spent[name] += time.perf_counter() - start
            for variant in ("lazy", "eager"):
                frames = visit_frames(f"v{v}-{variant}", images)
                start = time.perf_counter()
                mine_one_visit(frames, spool, variant == "eager")
                spent[variant] += time.perf_counter() - start
                # The writer's share, on its own clock: in the daemon this runs on the spool's
                # writer thread (JPEG files, fsyncs, one SQLite commit), so it is CPU the
                # device spends on mining even though the frame loop never waits for it.
                cpu, wall = time.thread_time(), time.perf_counter()
                spool.flush()  # write the batch now, as the writer thread would
                spent[f"{variant} writer cpu"] += time.thread_time() - cpu
                spent[f"{variant} writer wall"] += time.perf_counter() - wall
        spool.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    per = {k: v / (visits * n_frames) for k, v in spent.items()}
    print(f"\n2. mining cost per classified frame ({visits} visits x {n_frames} frames, "
          "224x224 crops; a spool holding 10,000 hashes)")
    lazy = per["lazy"] + per["lazy writer cpu"]
    eager = per["eager"] + per["eager writer cpu"]
    print(f"   mining, JPEG only for kept frames (the design): {per['lazy'] * 1e3:.3f} ms in the "
          f"events thread + {per['lazy writer cpu'] * 1e3:.3f} ms CPU on the writer thread "
          f"({per['lazy writer wall'] * 1e3:.3f} ms wall, fsync waits included)")
    print(f"   mining, JPEG of every frame (for comparison):    {per['eager'] * 1e3:.3f} ms + "
          f"{per['eager writer cpu'] * 1e3:.3f} ms writer CPU")
    for name, _ in models:
        print(f"   vs one classification, {name}: {per[name] * 1e3:.3f} ms -> mining incl. disk "
              f"writes = {lazy / per[name]:.1%} (every-frame JPEG: {eager / per[name]:.1%}; "
              "target <= 5%)")


# ---- 3. export throughput ----------------------------------------------------------------

class _Sink:
    """A write-only stream that counts bytes, standing in for ssh's stdin."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return len(data)


def build_spool(directory: Path, megabytes: int) -> Spool:
    images = crops(32, (640, 480), seed=3)
    jpegs = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
             for im in images]
    spool = Spool(directory, SpoolConfig(max_count=1_000_000, max_bytes=2**40),
                  dedup_distance=0)
    rng = np.random.default_rng(4)
    total, i = 0, 0
    while total < megabytes * 2**20:
        for _ in range(64):
            jpeg = jpegs[i % len(jpegs)]
            spool.put(candidate(f"v{i // 8}", i, images[0][:1, :1], rng), jpeg, "bench-1")
            total += len(jpeg)
            i += 1
        spool.flush()
    return spool


def evict_page_cache(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def bench_export(base: Path, megabytes: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="spoolbench-", dir=base))
    try:
        start = time.perf_counter()
        spool = build_spool(directory, megabytes)
        built = time.perf_counter() - start
        size = spool.stats()["bytes"]
        print(f"\n3. export of a {size / 2**20:.0f} MB spool ({spool.stats()['samples']} "
              f"samples; built in {built:.0f} s)")
        for label in ("cold page cache", "warm page cache"):
            if label.startswith("cold"):
                evict_page_cache(directory)
            sink = _Sink()
            start = time.perf_counter()
            spool.export(0, sink)  # type: ignore[arg-type]
            took = time.perf_counter() - start
            print(f"   {label}: {sink.bytes / 2**20 / took:.0f} MB/s "
                  f"({sink.bytes / 2**20:.0f} MB tar in {took:.1f} s)")
        spool.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        page_size, batch, count, side = map(int, sys.argv[3:7])
        writer_worker(sys.argv[2], page_size, batch, count, side)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and runs")
    parser.add_argument("--export-mb", type=int, default=500, help="spool size to export")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where temporary spools go (a real disk, not tmpfs)")
    parser.add_argument("--only", choices=("writes", "mining", "export"), help="one part")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.only in (None, "writes"):
            bench_writes(args.dir, args.quick)
        if args.only in (None, "mining"):
            bench_mining(args.dir, args.quick)
        if args.only in (None, "export"):
            bench_export(args.dir, 50 if args.quick else args.export_mb)


if __name__ == "__main__":
    main()
