"""End-to-end alert latency of the live daemon on replay, against a local Mosquitto.

    python tools/bench/alert_latency_bench.py [--loops 3]

The daemon runs in this process (the real composition root: frame loop, event queue, outbox,
paho) replaying the demo clip at its native speed; a subscriber records when each alert
arrives. Printed side by side:

- decision -> receipt: from the frame loop deciding the alert to the subscriber's receipt;
- first motion -> receipt: the media time from the visit's first motion frame to the deciding
  frame (the replay runs in real time, so it is wall time) plus decision -> receipt;
- idle frames: frame-loop time per idle frame with the MQTT link wired in against without it,
  in interleaved rounds after a warm-up (what publishing costs when nothing happens: the
  ratio should be ~1.0, the calls 0).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import Spread, quantile, ratio_line
from mqtt_bench import idle_cost, start_broker

from feederd.assets import demo_model_path
from feederd.config import load_settings
from feederd.daemon import Daemon
from feederd.types import Alert, ClassifiedFrame, VisitSummary


class AlertClock:
    """An extra event handler: when the frame loop decided each alert."""

    def __init__(self) -> None:
        self.decided: dict[str, tuple[float, float]] = {}

    def on_classified(self, frame: ClassifiedFrame) -> None:
        return None

    def on_alert(self, alert: Alert) -> None:
        # The replay runs at native speed, so frame-clock seconds are wall seconds.
        self.decided[alert.event_id] = (alert.decided_mono, alert.since_motion_s)

    def on_visit_closed(self, summary: VisitSummary, frames: Sequence[ClassifiedFrame]) -> None:
        return None


def subscribe(port: int, received: dict[str, float]) -> mqtt.Client:
    import json

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        received[json.loads(message.payload)["event_id"]] = time.monotonic()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("feederd/bench/alert", qos=1)
    client.loop_start()
    return client


def run_daemon(port: int, state: Path, loops: int) -> AlertClock:
    settings = load_settings(None, state_dir=str(state),
                             camera={"source": "demo", "realtime": True, "loop": True},
                             classifier={"model": str(demo_model_path())},
                             mqtt={"host": "127.0.0.1", "port": port, "device_id": "bench"})
    daemon = Daemon(settings)
    clock = AlertClock()
    original = daemon._init_pipeline

    def init_pipeline() -> None:
        original()
        daemon.events.add_handler(clock)

    daemon._init_pipeline = init_pipeline  # type: ignore[method-assign]
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 56 * loops
    while time.monotonic() < deadline:
        time.sleep(0.5)
    daemon.request_stop()
    thread.join(30)
    return clock


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=2, help="passes over the 55 s demo clip")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "broker").mkdir()
        broker, port = start_broker(Path(tmp) / "broker")
        try:
            received: dict[str, float] = {}
            client = subscribe(port, received)
            clock = run_daemon(port, Path(tmp) / "state", args.loops)
            time.sleep(1.0)
            client.disconnect()
            decision = [received[e] - d for e, (d, _) in clock.decided.items() if e in received]
            print(f"alerts decided {len(clock.decided)}, received {len(received)}")
            gaps = []
            for event_id, (decided, since_motion) in clock.decided.items():
                if event_id in received:
                    gaps.append(since_motion + received[event_id] - decided)
            if decision:
                print(f"decision -> receipt     p50 {quantile(decision, 0.5) * 1e3:7.1f} ms   "
                      f"p95 {quantile(decision, 0.95) * 1e3:7.1f} ms   "
                      f"({Spread.of(decision).show()})")
            if gaps:
                print(f"first motion -> receipt p50 {quantile(gaps, 0.5):7.2f} s    "
                      f"p95 {quantile(gaps, 0.95):7.2f} s   max {max(gaps):7.2f} s")
            idle, publishes, _ = idle_cost(port, Path(tmp) / "idle")
            print(ratio_line("idle frame", ("without MQTT", idle["without MQTT"]),
                             ("with MQTT", idle["with MQTT"]), scale=1e6, unit="us",
                             target=f"{publishes} publishes on idle frames"))
        finally:
            broker.terminate()
            broker.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
