"""The window in which a killed daemon loses an alert it has decided, measured two ways.

    python tools/bench/alert_window_bench.py [--rounds 5] [--delays 0,2,5,10,20] [--alerts 8]

- kill -9: ``feederd run`` replays the demo clip (scaled to 1280x720, 2x speed) in real time
  with its broker
  away; when the frame loop logs an alert decision this script waits ``d`` ms, sends SIGKILL
  and looks for the alert in the outbox (``outbox.db``) afterwards. Printed: alerts kept per
  delay. The log line is written just before the alert is handed on, so "0 ms" is as early as
  an outside observer can kill.
- in process: the same replay inside this process, timing decision -> outbox commit for each
  alert, "stored first" (the worker stores a new alert before its queued events and before
  the snapshot is encoded) against "queue only" (the alert stored after its snapshot, behind
  queued events: feederd before), interleaved runs;
  min/median/max ms per variant. Skipped with ``--kill-only`` (e.g. against an older tree via
  PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2

ALERT_LINE = re.compile(r"alert (\S+): ")


def fast_clip(out: Path, speed: float, size: tuple[int, int]) -> Path:
    """The demo clip sped up and scaled to a camera's size (alerts every few seconds, and a
    snapshot as large as a real one to encode)."""
    from feederd.assets import demo_clip_path

    capture = cv2.VideoCapture(str(demo_clip_path()))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"),
                             capture.get(cv2.CAP_PROP_FPS) * speed, size)
    try:
        while (frame := capture.read()[1]) is not None:
            writer.write(cv2.resize(frame, size, interpolation=cv2.INTER_LINEAR))
    finally:
        writer.release()
        capture.release()
    return out


def write_config(path: Path, state: Path, clip: Path) -> Path:
    path.write_text(f'state_dir = "{state}"\n[camera]\nsource = "{clip}"\nrealtime = true\n'
                    'loop = true\n[motion]\nclose_after_s = 0.75\n[visits]\nclassify_fps = 16.0\n'
                    '[mqtt]\nhost = "127.0.0.1"\nport = 9\ndevice_id = "bench"\n'
                    'reconnect_min_s = 5.0\n')
    return path


def kill_round(tmp: Path, clip: Path, delay_s: float, n: int) -> bool:
    """One daemon, killed ``delay_s`` after its first alert decision: was the alert kept?"""
    state = tmp / f"kill-{n}"
    config = write_config(tmp / f"kill-{n}.toml", state, clip)
    proc = subprocess.Popen([sys.executable, "-m", "feederd.cli", "run", "--config",
                             str(config)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    event_id = None
    for line in proc.stderr:
        if (match := ALERT_LINE.search(line)) is not None:
            event_id = match.group(1)
            if delay_s:
                time.sleep(delay_s)
            proc.send_signal(signal.SIGKILL)
            break
    proc.kill()
    proc.wait()
    if event_id is None:
        raise RuntimeError("the daemon raised no alert")
    db = sqlite3.connect(state / "outbox.db")
    try:
        rows = db.execute("SELECT payload FROM outbox WHERE topic LIKE '%/alert'").fetchall()
    finally:
        db.close()
    return any(json.loads(bytes(p))["event_id"] == event_id for (p,) in rows)


def kill_table(tmp: Path, clip: Path, delays_ms: list[float], rounds: int) -> None:
    kept: dict[float, int] = dict.fromkeys(delays_ms, 0)
    n = 0
    for _ in range(rounds):  # interleaved: every delay once per round
        for delay in delays_ms:
            n += 1
            kept[delay] += kill_round(tmp, clip, delay / 1000, n)
    for delay in delays_ms:
        print(f"kill -9 {delay:5.1f} ms after the decision: alert kept {kept[delay]} of "
              f"{rounds}")


def in_process(tmp: Path, clip: Path, lane: bool, alerts: int, n: int) -> list[float]:
    """decision -> outbox commit (ms) for ``alerts`` alerts of one in-process replay."""
    from feederd.config import load_settings
    from feederd.daemon import Daemon
    from feederd.mqtt.outbox import Outbox

    settings = load_settings(write_config(tmp / f"proc-{n}.toml", tmp / f"proc-{n}", clip))
    daemon = Daemon(settings)
    decided: dict[str, float] = {}
    stored: dict[str, float] = {}
    original_put = Outbox.put

    def put(self: Outbox, messages: Any, meta: Any = None, **kw: Any) -> int:
        result = original_put(self, messages, meta, **kw)
        for m in messages:
            if m.topic.endswith("/alert"):
                stored.setdefault(json.loads(m.payload)["event_id"], time.monotonic())
        return result

    init_events = daemon._init_events

    def wired() -> None:
        init_events()
        if not lane:  # the alert goes through the ordered queue only, as before
            daemon.events._first = []  # type: ignore[attr-defined]
        daemon.events.add_handler(Clock(decided))

    daemon._init_events = wired  # type: ignore[method-assign]
    Outbox.put = put  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30 * alerts
        while len(decided) < alerts and time.monotonic() < deadline:
            time.sleep(0.2)
        daemon.request_stop()
        thread.join(60)
    finally:
        Outbox.put = original_put  # type: ignore[method-assign]
    return [(stored[e] - d) * 1000 for e, d in decided.items() if e in stored]


class Clock:
    """An extra (last) handler: when the frame loop decided each alert."""

    def __init__(self, decided: dict[str, float]) -> None:
        self._decided = decided

    def on_classified(self, frame: Any) -> None:
        return None

    def on_alert(self, alert: Any) -> None:
        self._decided[alert.event_id] = alert.decided_mono

    def on_visit_closed(self, summary: Any, frames: Any) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--delays", default="0,2,5,10,20", help="ms after the decision")
    parser.add_argument("--alerts", type=int, default=8, help="per in-process run")
    parser.add_argument("--kill-only", action="store_true")
    parser.add_argument("--speed", type=float, default=2.0, help="replay speed-up")
    parser.add_argument("--size", default="1280x720", help="frame size, WxH")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        width, height = (int(v) for v in args.size.split("x"))
        clip = fast_clip(tmp / "fast.mp4", args.speed, (width, height))
        kill_table(tmp, clip, [float(d) for d in args.delays.split(",")], args.rounds)
        if args.kill_only:
            return
        runs: dict[bool, list[float]] = {True: [], False: []}
        for n in range(2):
            for lane in (True, False):
                runs[lane].extend(in_process(tmp, clip, lane, args.alerts, 2 * n + lane))
        for lane, label in ((True, "stored first"), (False, "queue only")):
            ms = runs[lane]
            print(f"decision -> outbox, {label:12}: min {min(ms):5.1f} / median "
                  f"{statistics.median(ms):5.1f} / max {max(ms):5.1f} ms over {len(ms)} alerts")


if __name__ == "__main__":
    main()
