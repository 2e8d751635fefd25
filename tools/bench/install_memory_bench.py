"""Peak memory of ``feederd model install`` for a large bundle, against a tiny one.

    python3 tools/bench/install_memory_bench.py [--mb 300] [--repeat 3] [--json]

Builds, in a temporary directory, a real bundle of about ``--mb`` megabytes (one big fully
connected layer: a flattened 64x64 image times a float32 weight matrix, then a small head and
a softmax) and a tiny one with the same layout, then runs ``feederd model install`` in a
fresh subprocess for each into an empty state directory, and once more for a second big
version over the first (the current model is then read too). The peak RSS of each process
comes from ``wait4``'s ``ru_maxrss``. The bound (issue 9): peak <= file size + 200 MB.

Run it with ``PYTHONPATH`` at another checkout to measure that one's code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from feederd.bundle import InputSpec
from feederd.sync.build import write_metadata

MB = 2**20
SIDE = 64
LABELS = ["jay", "other", "robin"]


def make_bundle(out: Path, megabytes: float, version: str) -> Path:
    """A valid bundle whose weights take about ``megabytes`` (at least one hidden unit)."""
    inputs = 3 * SIDE * SIDE
    hidden = max(1, int(megabytes * MB / 4 / inputs))
    rng = np.random.default_rng(len(version))
    weights = rng.standard_normal((inputs, hidden), dtype=np.float32) * 1e-3
    head = rng.standard_normal((hidden, len(LABELS)), dtype=np.float32) * 1e-2
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "weights"], ["hidden"]),
             helper.make_node("Relu", ["hidden"], ["embedding"]),
             helper.make_node("MatMul", ["embedding", "head"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(
        nodes, "big", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                     ["N", 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(LABELS)]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", hidden])],
        [numpy_helper.from_array(weights, "weights"), numpy_helper.from_array(head, "head")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    write_metadata(model, {"labels": LABELS, "negative_labels": ["other"],
                           "input": InputSpec((SIDE, SIDE)).as_dict(), "version": version})
    onnx.save(model, str(out))
    return out


def install_peak_mb(bundle: Path, state_dir: Path) -> float:
    """Peak RSS (MB) of one ``feederd model install`` process; raises if it fails."""
    env = dict(os.environ, FEEDERD_STATE_DIR=str(state_dir))
    process = subprocess.Popen([sys.executable, "-m", "feederd.cli", "model", "install",
                                str(bundle)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    assert process.stderr is not None
    error = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"install of {bundle} failed ({process.returncode}): "
                           f"{error.decode(errors='replace')}")
    return usage.ru_maxrss / 1024


def make_in_child(out: Path, megabytes: float, version: str) -> Path:
    """:func:`make_bundle` in a child process: a forked child's ``ru_maxrss`` starts at its
    parent's RSS, so this process must never hold a big bundle itself."""
    subprocess.run([sys.executable, __file__, "--make", str(out), str(megabytes), version],
                   check=True)
    return out


def measure(megabytes: float, repeat: int, root: Path) -> dict[str, object]:
    tiny = make_in_child(root / "tiny.onnx", 0.01, "tiny-1")
    big = make_in_child(root / "big.onnx", megabytes, "big-1")
    big2 = make_in_child(root / "big2.onnx", megabytes, "big-2")
    runs: dict[str, list[float]] = {"tiny": [], "big": [], "big_over_big": []}
    for round_ in range(repeat):  # interleaved, each in a fresh state directory
        runs["tiny"].append(install_peak_mb(tiny, root / f"tiny-{round_}"))
        runs["big"].append(install_peak_mb(big, root / f"big-{round_}"))
        runs["big_over_big"].append(install_peak_mb(big2, root / f"big-{round_}"))
    size = big.stat().st_size / MB
    worst = max(runs["big"] + runs["big_over_big"])
    return {"file_mb": round(size, 1), "bound_mb": round(size + 200, 1),
            "peak_mb": {name: [round(min(v)), round(statistics.median(v)), round(max(v))]
                        for name, v in runs.items()},
            "over_tiny_per_file_mb": round((worst - statistics.median(runs["tiny"])) / size, 2),
            "within_bound": worst <= size + 200}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=300.0, help="size of the big bundle")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    parser.add_argument("--make", nargs=3, metavar=("OUT", "MB", "VERSION"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        make_bundle(Path(args.make[0]), float(args.make[1]), args.make[2])
        return 0
    with tempfile.TemporaryDirectory(prefix="install-bench-") as tmp:
        result = measure(args.mb, args.repeat, Path(tmp))
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"bundle {result['file_mb']} MB; bound (file + 200 MB): {result['bound_mb']} MB")
    peaks = result["peak_mb"]
    assert isinstance(peaks, dict)
    for name, (low, mid, high) in peaks.items():
        print(f"  peak RSS {name:13s} min {low:6d}  median {mid:6d}  max {high:6d} MB")
    print(f"  (worst big - median tiny) / file size: {result['over_tiny_per_file_mb']}")
    print("  within bound" if result["within_bound"] else "  OVER THE BOUND")
    return 0


if __name__ == "__main__":
    sys.exit(main())
