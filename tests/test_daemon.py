"""The daemon as a process: the demo, start-up errors, systemd notify, signals, reloads."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from brokers import Probe, wait_until
from daemonproc import DaemonProcess, write_config

from feederd.assets import demo_model_path

CLI = [sys.executable, "-m", "feederd.cli"]


def base_config(tmp_path: Path, **sections: dict) -> dict:
    config: dict = {"state_dir": str(tmp_path / "state"),
                    "camera": {"source": "demo", "realtime": True, "loop": True},
                    # the cartoon clip needs the cartoon model (run's default is AIY Birds V1)
                    "classifier": {"model": str(demo_model_path())},
                    "mqtt": {"enabled": False},
                    "jobs": {"stats_interval_s": 1.0}}
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config


@pytest.fixture(scope="class")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """Two ``feederd demo`` runs with the same home: (home, [first, second])."""
    home = tmp_path_factory.mktemp("home")
    env = {**os.environ, "HOME": str(home), "XDG_STATE_HOME": str(home / "xdg")}
    runs = [subprocess.run([*CLI, "demo"], capture_output=True, text=True, timeout=120,
                           env=env, cwd=home) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    return home, runs


def json_lines(run: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run.stdout.splitlines()]


class TestDemo:
    def test_the_demo_prints_one_json_line_per_alert_and_exits_0(self, demo_runs):
        lines = json_lines(demo_runs[1][0])
        alerts = [line for line in lines if line["type"] == "alert"]
        assert len(alerts) >= 3 and len(alerts) == len(lines) - 1
        for alert in alerts:
            assert {"event_id", "time", "label", "confidence", "margin", "frames",
                    "model_version", "truth", "correct"} <= alert.keys()
        assert {a["label"] for a in alerts} >= {"blue_jay", "goldfinch"}
        assert len({a["event_id"] for a in alerts}) == len(alerts)

    def test_the_squirrel_alert_is_marked_wrong_and_the_birds_right(self, demo_runs):
        alerts = [a for a in json_lines(demo_runs[1][0]) if a["type"] == "alert"]
        assert [a["truth"] for a in alerts if not a["correct"]] == ["squirrel"]
        assert all(a["truth"] == a["label"] for a in alerts if a["truth"] != "squirrel")

    def test_the_last_line_counts_the_mined_samples_kept_in_a_visible_spool(self, demo_runs):
        home, runs = demo_runs
        last = json_lines(runs[1])[-1]
        spool = home / "xdg" / "feederd-demo" / "spool"
        assert last["type"] == "summary" and last["spool"] == str(spool)
        stats = subprocess.run([*CLI, "spool", "stats", "--json"], capture_output=True,
                               text=True, timeout=60, check=True,
                               env={**os.environ, "FEEDERD_STATE_DIR": str(spool.parent)})
        assert last["mined_samples"] == json.loads(stats.stdout)["samples"] > 0
        assert f"{last['mined_samples']} samples mined" in runs[1].stderr.splitlines()[-1]

    def test_a_second_demo_starts_from_an_empty_demo_folder(self, demo_runs):
        first, second = (json_lines(run)[-1] for run in demo_runs[1])
        assert second["mined_samples"] == first["mined_samples"]


class TestStartupErrors:
    def run(self, tmp_path: Path, **sections: dict) -> subprocess.CompletedProcess[str]:
        config = write_config(tmp_path / "feederd.toml", base_config(tmp_path, **sections))
        return subprocess.run([*CLI, "run", "--config", str(config)], capture_output=True,
                              text=True, timeout=120)

    def test_a_truncated_model_is_refused_with_exit_2_naming_the_file(self, tmp_path):
        broken = tmp_path / "broken.onnx"
        data = demo_model_path().read_bytes()
        broken.write_bytes(data[: len(data) // 2])
        result = self.run(tmp_path, classifier={"model": str(broken)})
        assert result.returncode == 2
        assert "broken.onnx" in result.stderr
        assert "Traceback" not in result.stderr

    def test_a_missing_model_is_refused_with_exit_2(self, tmp_path):
        result = self.run(tmp_path, classifier={"model": str(tmp_path / "absent.onnx")})
        assert result.returncode == 2
        assert "absent.onnx" in result.stderr

    def test_an_unreadable_video_is_refused_with_exit_2(self, tmp_path):
        video = tmp_path / "clip.mp4"
        video.write_bytes(b"\x00not a video" * 100)
        result = self.run(tmp_path, camera={"source": str(video), "loop": False})
        assert result.returncode == 2
        assert "clip.mp4" in result.stderr

    def test_an_image_folder_without_images_is_refused_with_exit_2(self, tmp_path):
        folder = tmp_path / "photos"
        folder.mkdir()
        (folder / "notes.txt").write_text("no pictures here")
        result = self.run(tmp_path, camera={"source": str(folder), "loop": False})
        assert result.returncode == 2
        assert "photos" in result.stderr

    def test_an_invalid_config_value_is_named_with_exit_2(self, tmp_path):
        result = self.run(tmp_path, visits={"classify_fps": -1})
        assert result.returncode == 2
        assert "visits.classify_fps" in result.stderr


class NotifySocket:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data))

    def times(self, key: str) -> list[float]:
        return [t for t, m in list(self.messages) if key in m.split("\n")]

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


class TestSystemdNotify:
    def start(self, tmp_path: Path, notify: NotifySocket, watchdog_s: float = 0.4,
              **env: str) -> DaemonProcess:
        config = write_config(tmp_path / "feederd.toml", base_config(tmp_path))
        return DaemonProcess(config, env={"NOTIFY_SOCKET": str(notify.path),
                                          "WATCHDOG_USEC": str(int(watchdog_s * 1e6)), **env})

    def test_ready_is_sent_once_camera_and_model_are_up(self, tmp_path, notify_socket):
        daemon = self.start(tmp_path, notify_socket)
        try:
            wait_until(lambda: notify_socket.times("READY=1"), 60, "READY=1")
        finally:
            assert daemon.stop() == 0
        assert len(notify_socket.times("READY=1")) == 1
        assert notify_socket.times("STOPPING=1")

    def test_the_frame_loop_pings_the_watchdog_at_half_the_interval(self, tmp_path,
                                                                     notify_socket):
        # A 2 s interval (pings due every second) leaves a loaded 2-core machine room to
        # schedule the loop; the frame loop runs at 10 fps, so one ping per frame would show.
        daemon = self.start(tmp_path, notify_socket, watchdog_s=2.0)
        try:
            wait_until(lambda: len(notify_socket.times("WATCHDOG=1")) >= 6, 60, "6 pings")
        finally:
            daemon.stop()
        pings = notify_socket.times("WATCHDOG=1")
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps[1:]) < 2.0, gaps  # never past the watchdog interval
        assert min(gaps) > 0.5, gaps       # rate-limited, not one per frame

    def test_a_stalled_frame_loop_stops_pinging(self, tmp_path, notify_socket):
        daemon = self.start(tmp_path, notify_socket, FEEDERD_FAULT_STALL_AFTER_FRAMES="20")
        try:
            wait_until(lambda: notify_socket.times("READY=1"), 60, "READY=1")
            time.sleep(3.0)  # 20 frames at 10 fps is 2 s; then the loop hangs
            count = len(notify_socket.times("WATCHDOG=1"))
            time.sleep(1.5)
            assert len(notify_socket.times("WATCHDOG=1")) == count
            assert daemon.proc.poll() is None  # alive but silent: systemd would restart it
        finally:
            daemon.kill()


class TestSignals:
    def test_sigterm_finishes_and_says_offline_then_exits_0_quickly(self, tmp_path, broker):
        config = write_config(tmp_path / "feederd.toml", base_config(
            tmp_path, mqtt={"enabled": True, "host": broker.host, "port": broker.port,
                            "device_id": "feeder1"}))
        probe = Probe(broker, "feederd/feeder1/status")
        daemon = DaemonProcess(config)
        try:
            wait_until(lambda: any(m.payload == b"online"
                                   for m in probe.on("feederd/feeder1/status")), 60, "online")
            code, seconds = daemon.elapsed_stop()
            assert code == 0, daemon.log
            assert seconds < 8
            wait_until(lambda: probe.on("feederd/feeder1/status")[-1].payload == b"offline",
                       10, "offline")
            assert "stopped after" in daemon.log
        finally:
            daemon.kill()
            probe.close()

    def test_sighup_reloads_the_model_without_dropping_the_mqtt_session(self, tmp_path,
                                                                         broker):
        config = write_config(tmp_path / "feederd.toml", base_config(
            tmp_path, mqtt={"enabled": True, "host": broker.host, "port": broker.port,
                            "device_id": "feeder1"}))
        probe = Probe(broker, "feederd/feeder1/status", "feederd/feeder1/model")
        daemon = DaemonProcess(config)
        try:
            probe.wait_for("feederd/feeder1/model", 1, 60)
            daemon.signal(signal.SIGHUP)
            probe.wait_for("feederd/feeder1/model", 2, 30)
            assert daemon.proc.poll() is None
            statuses = [m.payload for m in probe.on("feederd/feeder1/status")]
            assert b"offline" not in statuses
            assert daemon.stop() == 0
        finally:
            daemon.kill()
            probe.close()
