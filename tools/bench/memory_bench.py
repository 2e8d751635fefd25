"""Memory kept per alert: RSS after N alerts minus RSS after 100, through the real collector.

    python tools/bench/memory_bench.py [--alerts 2000] [--width 1280 --height 720] [--runs 3]

Each alert carries a fresh full-resolution snapshot, as the frame loop raises it; the alerts
go through the daemon's own event path (an :class:`~feederd.events.EventQueue` in front of the
:class:`~feederd.mining.collector.Collector`, with real recent-visit memory and a real spool),
and the snapshot goes out of scope once the handlers are done, as in the daemon. The budget
is 20 MB for 2,000 alerts at 1280x720 (the unit's ``MemoryMax=600M`` leaves no room for
frames kept per alert). Each run is a fresh process (RSS never shrinks back to the OS
reliably); min/median/max over the runs are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BUDGET_MB = 20.0
BASELINE_ALERTS = 100


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(alerts: int, width: int, height: int) -> dict[str, float]:
    """One run: raise ``alerts`` alerts; RSS after the first 100 and after all of them."""
    from feederd.assets import demo_model_path
    from feederd.bundle import read_bundle
    from feederd.config import MiningConfig, SpoolConfig
    from feederd.events import EventQueue
    from feederd.mining.collector import Collector
    from feederd.mining.recent import RecentVisits
    from feederd.spool import Spool
    from feederd.types import Alert, new_event_id

    cfg = MiningConfig()
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "spool", SpoolConfig())
        recent = RecentVisits(cfg.recent_max_bytes, cfg.recent_max_age_s, cfg.jpeg_quality)
        collector = Collector(cfg, recent, spool, read_bundle(demo_model_path()))
        events = EventQueue([collector], lossless=True)
        events.start()
        marks: dict[str, float] = {}
        for n in range(1, alerts + 1):
            now = time.time()
            snapshot = np.full((height, width, 3), n % 251, np.uint8)  # every page touched
            events.on_alert(Alert(new_event_id(now), now, "cardinal", 0.9, 0.5, 6, "demo-1",
                                  snapshot=snapshot))
            del snapshot
            if n == BASELINE_ALERTS:
                events.stop()  # wait until the collector has them all, then measure
                marks["rss_baseline_mb"] = rss_mb()
                events = EventQueue([collector], lossless=True)
                events.start()
        events.stop()
        marks["rss_end_mb"] = rss_mb()
        spool.close()
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.alerts, args.width, args.height)))
        return
    deltas = []
    for run in range(args.runs):
        out = subprocess.run([sys.executable, __file__, "--child", "--alerts", str(args.alerts),
                              "--width", str(args.width), "--height", str(args.height)],
                             capture_output=True, text=True, check=True)
        marks = json.loads(out.stdout.strip().splitlines()[-1])
        delta = marks["rss_end_mb"] - marks["rss_baseline_mb"]
        deltas.append(delta)
        print(f"run {run + 1}: RSS {marks['rss_baseline_mb']:.1f} MB after {BASELINE_ALERTS} "
              f"alerts, {marks['rss_end_mb']:.1f} MB after {args.alerts}: +{delta:.1f} MB")
    print(f"RSS({args.alerts} alerts) - RSS({BASELINE_ALERTS}) at {args.width}x{args.height}: "
          f"min {min(deltas):.1f} / median {statistics.median(deltas):.1f} / max "
          f"{max(deltas):.1f} MB (budget {BUDGET_MB:.0f} MB: "
          f"{'within' if max(deltas) <= BUDGET_MB else 'OVER'})")


if __name__ == "__main__":
    main()
