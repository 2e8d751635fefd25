"""The learning loop through the product: false alerts and species recall after K replies.

For each K (default 0, 10, 25, 50) a fresh device gets the baseline, a real ``feederd run``
with the default settings meets half of the shared squirrels, the owner replies "not a bird"
over a real Mosquitto to the first K alerts, and ``feeder-sync loop`` pulls, trains, evaluates
and pushes if its gate passes (see ``tests/loopscenario.py``). Then the other squirrels and
the test birds (the half of the shared photos the owner's folder lacks) are replayed through
the device pipeline with each resulting model, all in one pass over the frames: false alerts
on unseen squirrels, recall per species, for the model the device runs after the loop and for
the candidate the loop trained (which differ when the gate refused it).

``--recipe photo`` trains on raw photos (the recipe before issue 16) for comparison.

``--backbone aiy`` (the default, as ``init --data`` alone): the owner's head on the shipped
AIY Birds V1 bundle's 1,280-d embedding (``init --backbone models/aiy_birds_v1.onnx
--embedding-output embedding --preprocess pixels``); ``--backbone squeezenet``: on SqueezeNet
1.1's (the shared data), the same photos, replies and recipe, a backbone that cannot tell a black
squirrel from a crow.

``--bundle models/aiy_birds_v1.onnx``: the loop without a base dataset (``init
--from-bundle``, a reject gate learned from the replies); false alerts on unseen squirrels and
top-1 on the CUB photos of the species the bundle knows (as photos and as device frames).

Usage: ``python3 tools/bench/loop_bench.py [--shared DIR] [--ks 0 10 25 50]
[--recipe device|photo] [--backbone squeezenet|aiy] [--bird-step N] [--squirrel-step N]
[--bundle FILE.onnx]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from brokers import Mosquitto  # noqa: E402
from loopscenario import (  # noqa: E402
    AIY_BACKBONE,
    SPECIES,
    SQUEEZENET,
    Loop,
    figures,
    photos,
    top1,
)

RECIPES = {"device": "", "photo": '[training.view]\ndomain = "photo"\n'}
BACKBONES = {
    "squeezenet": lambda shared: (shared / "models/squeezenet1.1/squeezenet1.1-fp32.onnx",
                                  *SQUEEZENET),
    "aiy": lambda shared: (REPO / "models/aiy_birds_v1.onnx", *AIY_BACKBONE),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 10, 25, 50])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="device")
    parser.add_argument("--bird-step", type=int, default=1)
    parser.add_argument("--squirrel-step", type=int, default=1)
    parser.add_argument("--backbone", choices=("squeezenet", "aiy"), default="aiy",
                        help="the backbone of the owner's head: SqueezeNet 1.1 (shared data) "
                        "or the shipped AIY bundle's embedding (models/aiy_birds_v1.onnx)")
    parser.add_argument("--bundle", type=Path, help="start from this shipped bundle "
                        "(init --from-bundle, e.g. models/aiy_birds_v1.onnx) instead of "
                        "SqueezeNet and the owner's photos; reports top-1 on the CUB photos "
                        "of known species instead of the five-species recall")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loop-bench-") as tmp:
        rows = bench(Path(tmp), args)
    print(json.dumps(rows, indent=1))
    return 0


def bench(tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    started = time.monotonic()
    data = photos(args.shared, tmp, args.bird_step, args.squirrel_step)
    broker = Mosquitto(tmp / "broker").start()
    try:
        loop = Loop(tmp, args.shared, broker, data.owner, RECIPES[args.recipe])
        if args.bundle:
            loop.init_from(args.bundle.resolve())
        else:
            loop.init(*BACKBONES[args.backbone](args.shared))
        runs = {k: loop.run(f"k{k}", k, data.seen) if k else None for k in args.ks}
    finally:
        broker.stop()
    print(f"setup and loops: {time.monotonic() - started:.0f} s", file=sys.stderr)
    models = [loop.baseline]
    for run in filter(None, runs.values()):
        models += [run["device_model"], _candidate(loop, run)]
    scored = dict(zip(models, figures(models, data, tmp / "replay", not args.bundle),
                      strict=True))
    if args.bundle:
        for model, accuracy in zip(models, top1(models, args.shared), strict=True):
            scored[model]["cub_top1"] = accuracy
    rows = []
    for k, run in runs.items():
        device = loop.baseline if run is None else run["device_model"]
        row = {"k": k, "replies": len(run["replied"]) if run else 0,
               "rejected_spooled": run["rejected_spooled"] if run else 0,
               "gate": run["summary"]["gate"] if run else None,
               "pushed": bool(run and run["summary"]["pushed"]), "device": scored[device]}
        if run:
            row["candidate"] = scored[_candidate(loop, run)]
            row["reasons"] = run["summary"]["evaluation"]["reasons"]
            row["loop_s"] = round(run["loop_s"], 1)
        rows.append(row)
        _print(row, scored[loop.baseline])
    return rows


def _candidate(loop: Loop, run: dict[str, Any]) -> Path:
    trained = run["summary"]["trained"]
    return Path(trained["file"]) if trained else loop.baseline


def _print(row: dict[str, Any], base: dict[str, Any]) -> None:
    device = row["device"]
    if "cub_top1" in device:
        print(f"K={row['k']:>2} replies {row['replies']:>2} (distinct rejected frames spooled "
              f"{row['rejected_spooled']}) gate {row['gate']} pushed "
              f"{row['pushed']}: false alerts {device['false_alerts']}/{device['squirrels']} "
              f"({device['false_alert_rate']:.1%}) CUB top-1 {device['cub_top1']} (base "
              f"{base['cub_top1']})", file=sys.stderr)
        return
    lowest = min(device["recall"][s] - base["recall"][s] for s in SPECIES)
    print(f"K={row['k']:>2} replies {row['replies']:>2} gate {row['gate']} pushed "
          f"{row['pushed']}: false alerts {device['false_alerts']}/{device['squirrels']} "
          f"({device['false_alert_rate']:.1%}) mean recall {device['mean_recall']:.3f} "
          f"(worst species {lowest * 100:+.1f} points) {device['recall']}", file=sys.stderr)
    if "candidate" in row:
        cand = row["candidate"]
        print(f"      candidate: false alerts {cand['false_alert_rate']:.1%} recall "
              f"{cand['recall']}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
