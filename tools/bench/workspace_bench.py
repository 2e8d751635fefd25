"""feeder-sync as the workspace grows: pull, train and evaluate time at 1,000 to 50,000 samples.

    python tools/bench/workspace_bench.py [--sizes 1000,10000,50000] [--step 1000]

A local device (the real ``feederd`` CLI and spool) and the real ``feeder-sync`` CLI, on a
small real ONNX backbone (tests/sync/helpers.py: 32x32 input, so embedding is cheap and the
figures show the bookkeeping, not the network). At each workspace size the device mines
``--step`` new owner-labelled samples and the bench times, each as a whole process:

- ``pull`` of those ``--step`` new samples (must not grow with what the workspace holds);
- ``train`` with the embedding cache warm but for the new samples (incremental);
- ``evaluate`` of that candidate.

The first row fills the workspace to the first size (a full pull, a cold cache); later rows
fill to the next size untimed, then time the increment. Each timed command runs ``--repeat``
times on fresh increments; min/median/max are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from benchutil import Spread  # noqa: E402
from sync.conftest import COUNTS, init_args  # noqa: E402
from sync.helpers import (  # noqa: E402
    jpeg,
    make_backbone,
    make_dataset,
    photo,
    run_sync,
    spool_dir,
    sync_config,
    write_toml,
)

from feederd.config import SpoolConfig  # noqa: E402
from feederd.mining.decisions import Candidate  # noqa: E402
from feederd.spool import Spool  # noqa: E402
from feederd.types import ClassifiedFrame, Prediction  # noqa: E402

KINDS = ("robin", "jay", "other", "squirrel")


def device_config(tmp: Path) -> None:
    """A device whose spool holds everything the bench mines (the default bound is lower)."""
    write_toml(tmp / "feederd.toml", f'state_dir = "{tmp / "device"}"\n'
               "[mqtt]\nenabled = false\n[homeassistant]\nenabled = false\n"
               "[spool]\ncommit_interval_s = 0\nmax_count = 1000000\n"
               "max_bytes = 100000000000\n")


def mine(tmp: Path, start: int, count: int) -> None:
    """``count`` owner-labelled samples on the device, as replies would leave them."""
    samples = []
    for n in range(start, start + count):
        kind = KINDS[n % len(KINDS)]
        label = "other" if kind == "squirrel" else kind
        samples.append((jpeg(photo(kind, 100_000 + n)), label, "user",
                        ["rejected" if label == "other" else "confirmed"]))
    # Straight into the device's spool, bounded as the device config above says (the tests'
    # add_samples would open it with the default bound of 10,000 and evict).
    cfg = SpoolConfig(commit_interval_s=0, max_count=1_000_000, max_bytes=10**11)
    with Spool(spool_dir(tmp), cfg, dedup_distance=0) as store:
        for n, (data, label, source, reasons) in enumerate(samples, start):
            prediction = Prediction(labels=("robin", "other"), scores=(0.8, 0.2),
                                    probs=np.array([0.8, 0.2], np.float32))
            frame = ClassifiedFrame(visit_id=f"20250101T000000.000Z-{n // 8:08d}", seq=n,
                                    mono=float(n), wall=time.time(), prediction=prediction,
                                    box=None, crop=np.zeros((2, 2, 3), np.uint8),
                                    of_interest=True)
            store.put(Candidate(frame, tuple(reasons), label, source, 1.0, n + 1),  # type: ignore[arg-type]
                      data, "v0")
            if n % 1000 == 999:
                store.flush()
        store.flush()


def timed(config: Path, *args: str) -> float:
    started = time.perf_counter()
    run_sync(config, *args, timeout=3600)
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--step", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        backbone = make_backbone(tmp / "tiny.onnx")
        data = make_dataset(tmp / "data", COUNTS)
        config = sync_config(tmp)
        device_config(tmp)
        run_sync(config, *init_args(backbone, data))
        held = 0
        print(f"{'workspace':>10s}  {'pull ' + str(args.step):>34s}  {'train':>34s}  "
              f"{'evaluate':>34s}")
        for size in sizes:
            fill = time.perf_counter()
            if size - args.step * args.repeat > held:
                mine(tmp, held, size - args.step * args.repeat - held)
                held = size - args.step * args.repeat
                run_sync(config, "pull", timeout=3600)
                run_sync(config, "train", timeout=3600)
            filled = time.perf_counter() - fill
            times: dict[str, list[float]] = {"pull": [], "train": [], "evaluate": []}
            for _ in range(args.repeat):
                mine(tmp, held, args.step)
                held += args.step
                for step in times:
                    times[step].append(timed(config, step))
            row = "  ".join(f"{Spread.of(t).show(1, 's'):>34s}" for t in times.values())
            print(f"{held:>10,d}  {row}   (filled untimed in {filled:.0f} s)")
        per = {k: statistics.median(v) for k, v in times.items()}
        print(f"at {held:,} samples: pull {per['pull']:.1f} s, train {per['train']:.1f} s, "
              f"evaluate {per['evaluate']:.1f} s for {args.step:,} new samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
