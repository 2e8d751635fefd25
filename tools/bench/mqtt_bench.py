"""MQTT link costs, measured side by side in one run against a local Mosquitto.

    python tools/bench/mqtt_bench.py [--alerts 200] [--dir /var/lib/feederd]

- enqueue: what ``publish_alert`` costs its caller (the event thread; the frame loop only
  hands it an event), with the outbox at ``synchronous=NORMAL`` (what feederd uses) and at
  ``FULL`` for comparison. ``--dir`` puts the outbox on the disk you care about (the SD card);
  the default is a temporary directory.
- latency: from ``publish_alert`` returning to a subscriber receiving the alert (p50/p95),
  with a 60 KB snapshot in front of each alert, as the daemon sends them.
- idle: the link does no work per frame; nothing runs between alerts but paho's keepalive.

The broker is started here on a free loopback port (the ``mosquitto`` binary must exist).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from feederd.config import HomeAssistantConfig, MqttConfig
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


def enqueue_cost(directory: Path, synchronous: str, rounds: int) -> float:
    """Median seconds of one alert's put (snapshot + alert) at the given synchronous level."""
    path = directory / f"bench-{synchronous}.db"
    box = Outbox(path, 10 * rounds)
    box._db.execute(f"PRAGMA synchronous={synchronous}")  # bench only: compare the two levels
    times = []
    for n in range(rounds):
        messages = [OutMessage("b/snapshot", SNAPSHOT, retain=True),
                    OutMessage("b/alert", b'{"n": %d}' % n)]
        start = time.perf_counter()
        box.put(messages, {"latest_alert": str(n)})
        times.append(time.perf_counter() - start)
    box.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return statistics.median(times)


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None, help="where the outbox lives")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or Path(tmp)
        normal = enqueue_cost(directory, "NORMAL", args.alerts)
        full = enqueue_cost(directory, "FULL", args.alerts)
        print(f"enqueue (snapshot + alert) median: NORMAL {normal * 1e3:.3f} ms, "
              f"FULL {full * 1e3:.3f} ms, FULL/NORMAL = {full / normal:.1f}x  [{directory}]")
        broker, port = start_broker(Path(tmp))
        try:
            calls, waits = latencies(port, Path(tmp), args.alerts)
        finally:
            broker.kill()
        print(f"publish_alert call: p50 {percentile(calls, 0.5) * 1e3:.3f} ms, "
              f"p95 {percentile(calls, 0.95) * 1e3:.3f} ms")
        print(f"return -> subscriber receipt: p50 {percentile(waits, 0.5) * 1e3:.2f} ms, "
              f"p95 {percentile(waits, 0.95) * 1e3:.2f} ms  ({args.alerts} alerts)")
        print("per idle frame: 0 (the link is only called on alerts, visits and stats)")


if __name__ == "__main__":
    main()
