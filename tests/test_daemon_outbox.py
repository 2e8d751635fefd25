"""Alerts never stop silently: the live daemon with its state on a real tmpfs that fills, a
real Mosquitto, and systemd's notify socket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import test_daemon
import test_daemon_spool
from brokers import Mosquitto, Probe, wait_until
from daemonproc import DaemonProcess, write_config
from test_daemon import NotifySocket
from test_daemon_spool import fill_disk

from feederd.assets import demo_model_path

# Fixtures shared with the daemon's and the spool's tests.
notify_socket, tiny_disk = test_daemon.notify_socket, test_daemon_spool.tiny_disk

DEVICE = "feeder1"
TOPIC = f"feederd/{DEVICE}"
CLI = [sys.executable, "-m", "feederd.cli"]


def daemon_config(tmp_path: Path, state: Path, broker: Mosquitto, **mqtt: Any) -> Path:
    """The demo clip in a loop as fast as possible, dedup off, state (outbox and spool) in
    ``state``."""
    return write_config(tmp_path / "feederd.toml", {
        "state_dir": str(state),
        "camera": {"source": "demo", "realtime": False, "loop": True},
        # the cartoon clip needs the cartoon model (run's default is AIY Birds V1)
        "classifier": {"model": str(demo_model_path())},
        "mining": {"dedup_distance": 0},
        "spool": {"commit_interval_s": 0.05, "min_free_bytes": 256 * 1024},
        "mqtt": {"host": broker.host, "port": broker.port, "device_id": DEVICE,
                 "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, **mqtt},
        "jobs": {"stats_interval_s": 1.0},
    })


def alert_ids(probe: Probe) -> list[str]:
    return [json.loads(m.payload)["event_id"] for m in probe.on(f"{TOPIC}/alert")]


def last_stats(probe: Probe) -> dict[str, Any]:
    messages = probe.on(f"{TOPIC}/stats")
    return json.loads(messages[-1].payload) if messages else {}


def doctor(config: Path) -> dict[str, dict[str, Any]]:
    done = subprocess.run([*CLI, "doctor", "--json", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    return {check["name"]: check for check in json.loads(done.stdout)}


@pytest.mark.timeout(240)
def test_a_state_disk_full_for_a_while_neither_stops_nor_loses_the_alerts(
        tmp_path: Path, tiny_disk: Path, broker: Mosquitto) -> None:
    config = daemon_config(tmp_path, tiny_disk / "state", broker)
    probe = Probe(broker, f"{TOPIC}/alert", f"{TOPIC}/stats")
    daemon = DaemonProcess(config)
    filler = tiny_disk / "filler"
    try:
        probe.wait_for(f"{TOPIC}/alert", 3, 90)
        fill_disk(filler)
        daemon.wait_log(r"spool paused: .*\(alerts are not affected\)", 60)
        wait_until(lambda: last_stats(probe).get("mqtt", {}).get("outbox_errors", 0) >= 1, 60,
                   "an alert the outbox could not store")
        during = len(alert_ids(probe))
        probe.wait_for(f"{TOPIC}/alert", during + 5, 60)  # five more while the disk is full
        filler.unlink()
        after = len(alert_ids(probe))
        probe.wait_for(f"{TOPIC}/alert", after + 5, 60)  # and five more once it has room
        raised = [event_id for event_id, _ in daemon.alerts()]
        received = alert_ids(probe)
        assert received == raised[:len(received)], "alerts arrive once each, in order"
        stats = last_stats(probe)
        assert stats["alerts_blocked"] == "" and stats["mqtt"]["sender_errors"] == 0
        assert doctor(config)["daemon"]["ok"]
    finally:
        assert daemon.stop() == 0, daemon.log
        probe.close()
    assert "Traceback" not in daemon.log


@pytest.mark.timeout(180)
def test_a_stuck_sender_with_the_broker_connected_starves_the_watchdog_and_doctor_says_so(
        tmp_path: Path, broker: Mosquitto, notify_socket: NotifySocket) -> None:
    config = daemon_config(tmp_path, tmp_path / "state", broker, sender_stuck_s=2.0)
    probe = Probe(broker, f"{TOPIC}/alert", f"{TOPIC}/stats")
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": str(notify_socket.path),
                                        "WATCHDOG_USEC": "400000",
                                        "FEEDERD_FAULT_SENDER_HANG_AFTER": "3"})
    try:
        daemon.wait_log(r"no longer feeding the systemd watchdog", 120)
        pings = len(notify_socket.times("WATCHDOG=1"))
        assert pings >= 2, "the watchdog was fed while alerts left"
        wait_until(lambda: "has sent nothing" in last_stats(probe).get("alerts_blocked", ""),
                   30, "the blocked sender in stats")
        check = doctor(config)["daemon"]
        assert not check["ok"] and "has sent nothing" in check["detail"] and check["fix"]
        assert len(notify_socket.times("WATCHDOG=1")) == pings, "no ping since"
        assert daemon.proc.poll() is None  # the frame loop runs: only the watchdog tells
    finally:
        daemon.kill()
        probe.close()
