"""MQTT link costs, measured side by side in one run against a local Mosquitto.

    python tools/bench/mqtt_bench.py [--alerts 200] [--dir /var/lib/feederd]

- enqueue: what ``publish_alert`` costs its caller (the event thread; the frame loop only
  hands it an event), with the outbox at ``synchronous=NORMAL`` (what feederd uses) and at
  ``FULL`` for comparison. ``--dir`` puts the outbox on the disk you care about (the SD card);
  the default is a temporary directory.
- latency: from ``publish_alert`` returning to a subscriber receiving the alert (p50/p95),
  with a 60 KB snapshot in front of each alert, as the daemon sends them.
- idle: frame-loop time per idle frame with the MQTT link wired in against without it (the
  real daemon, interleaved rounds), the messages published during idle frames, and the CPU
  the whole process spends per idle second with the link connected (paho's keepalive).

The broker is started here on a free loopback port (the ``mosquitto`` binary must exist).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutil import Spread, interleave, quantile, ratio_line

from feederd.assets import demo_model_path
from feederd.config import HomeAssistantConfig, MqttConfig, load_settings
from feederd.daemon import Daemon
from feederd.mqtt import MqttLink
from feederd.mqtt.feedback import Feedback
from feederd.mqtt.outbox import Outbox, OutMessage
from feederd.types import Alert, new_event_id

SNAPSHOT = bytes(60_000)


class _Ignore:
    def handle(self, feedback: Feedback) -> None:
        return None


def start_broker(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    conf = workdir / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""  # else it drops to 'mosquitto'
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    + user)
    process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.02)
    process.kill()
    sys.exit("mosquitto did not start (apt-get install mosquitto)")


class EnqueueSide:
    """One outbox at a given ``synchronous`` level; each call puts one alert (snapshot + JSON)."""

    def __init__(self, directory: Path, synchronous: str, capacity: int) -> None:
        self.path = directory / f"bench-{synchronous}.db"
        self.box = Outbox(self.path, capacity)
        self.box._db.execute(f"PRAGMA synchronous={synchronous}")  # bench only: compare levels
        self.n = 0

    def put(self) -> None:
        self.n += 1
        self.box.put([OutMessage("b/snapshot", SNAPSHOT, retain=True),
                      OutMessage("b/alert", b'{"n": %d}' % self.n)],
                     {"latest_alert": str(self.n)})

    def close(self) -> None:
        self.box.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def enqueue_costs(directory: Path, rounds: int) -> dict[str, list[float]]:
    """Seconds per put at NORMAL and FULL, interleaved put by put after a warm-up."""
    sides = {level: EnqueueSide(directory, level, 10 * rounds) for level in ("NORMAL", "FULL")}
    try:
        return interleave({level: side.put for level, side in sides.items()}, rounds, warmup=5)
    finally:
        for side in sides.values():
            side.close()


def latencies(port: int, directory: Path, alerts: int) -> tuple[list[float], list[float]]:
    """(publish_alert call seconds, call-return-to-receipt seconds) per alert."""
    cfg = MqttConfig(host="127.0.0.1", port=port, device_id="bench")
    received: dict[str, float] = {}
    got = threading.Condition()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", b"")
        with got:
            received[correlation.decode()] = time.perf_counter()
            got.notify_all()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("feederd/bench/alert", qos=1)
    sub.loop_start()
    link = MqttLink(cfg, HomeAssistantConfig(), "", directory / "outbox.db", _Ignore(),
                    sw_version="bench")
    link.start()
    while not link.connected:
        time.sleep(0.01)
    calls, waits = [], []
    for _ in range(alerts):
        now = time.time()
        alert = Alert(new_event_id(now), now, "great_tit", 0.9, 0.5, 5, "v1")
        start = time.perf_counter()
        link.publish_alert(alert, SNAPSHOT)
        returned = time.perf_counter()
        event_id = alert.event_id
        with got:
            got.wait_for(lambda: event_id in received, timeout=10)  # noqa: B023
        calls.append(returned - start)
        waits.append(received[alert.event_id] - returned)
        time.sleep(0.01)
    link.stop()
    sub.disconnect()
    sub.loop_stop()
    return calls, waits


def idle_daemon(port: int, state: Path, mqtt_on: bool) -> Daemon:
    """A real daemon on the demo setup, built but fed by hand (no capture thread)."""
    settings = load_settings(None, state_dir=str(state / f"mqtt-{mqtt_on}"),
                             camera={"source": "demo", "realtime": False},
                             classifier={"model": str(demo_model_path())},
                             mqtt={"enabled": mqtt_on, "host": "127.0.0.1", "port": port,
                                   "device_id": "idle"})
    daemon = Daemon(settings)
    for step in (daemon._init_classifier, daemon._init_storage, daemon._init_mqtt,
                 daemon._init_events, daemon._init_pipeline, daemon._init_jobs,
                 daemon._start):
        step()
    if daemon.mqtt is not None:
        deadline = time.monotonic() + 10
        while not daemon.mqtt.connected and time.monotonic() < deadline:
            time.sleep(0.02)
    return daemon


def idle_frames() -> list:
    """The empty feeder before the demo clip's first bird, as the daemon's source yields it."""
    from feederd.capture import open_source
    from feederd.config import CameraConfig

    clip = Path(__file__).resolve().parents[2] / "models" / "demo-clip.mp4"
    source = open_source(CameraConfig(source=str(clip), realtime=False), 100, clip)
    frames = [source.read() for _ in range(20)]
    source.close()
    return [f for f in frames if f is not None]


def idle_cost(port: int, state: Path, frames: int = 2000, rounds: int = 7
              ) -> tuple[dict[str, list[float]], int, float]:
    """Per-idle-frame seconds without/with the link (interleaved), idle publishes, CPU/s."""
    daemons = {"without MQTT": idle_daemon(port, state, False),
               "with MQTT": idle_daemon(port, state, True)}
    idle = idle_frames()
    try:
        linked = daemons["with MQTT"].mqtt
        assert linked is not None
        before = linked.counters()["published"]

        def feed(daemon: Daemon) -> Callable[[], None]:
            def run() -> None:
                for i in range(frames):
                    daemon.pipeline.process(idle[i % len(idle)])
            return run

        times = interleave({name: feed(d) for name, d in daemons.items()}, rounds)
        publishes = linked.counters()["published"] - before
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(3.0)  # both daemons idle: what keepalive and the threads cost
        cpu_per_s = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    finally:
        for daemon in daemons.values():
            daemon.stop()
    return {k: [t / frames for t in v] for k, v in times.items()}, publishes, cpu_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None, help="where the outbox lives")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or Path(tmp)
        costs = enqueue_costs(directory, args.alerts)
        print(ratio_line(f"enqueue (snapshot + alert) [{directory}]",
                         ("NORMAL", costs["NORMAL"]), ("FULL", costs["FULL"]), unit="ms"))
        broker, port = start_broker(Path(tmp))
        try:
            calls, waits = latencies(port, Path(tmp), args.alerts)
            idle, publishes, cpu_per_s = idle_cost(port, Path(tmp) / "idle")
        finally:
            broker.kill()
        print(f"publish_alert call: {Spread.of(calls).show()}; p95 "
              f"{quantile(calls, 0.95) * 1e3:.3f} ms")
        print(f"return -> subscriber receipt: {Spread.of(waits).show()}; p95 "
              f"{quantile(waits, 0.95) * 1e3:.2f} ms  ({args.alerts} alerts)")
        print(ratio_line("per idle frame (frame loop)", ("without MQTT", idle["without MQTT"]),
                         ("with MQTT", idle["with MQTT"]), scale=1e6, unit="us"))
        print(f"messages published during idle frames: {publishes}; process CPU while idle "
              f"(two daemons, one linked): {cpu_per_s * 100:.2f}% of one core")


if __name__ == "__main__":
    main()
