"""The live daemon with bad models installed: it starts, serves a good one, and says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from brokers import Mosquitto, Probe
from daemonproc import DaemonProcess, write_config
from faultmodels import BEYOND_CARTOON, demo_version, nan_on_texture, truncated

DEVICE = "feeder1"
TOPIC = f"feederd/{DEVICE}"
CLI = [sys.executable, "-m", "feederd.cli"]


def cli_json(config: Path, *args: str) -> Any:
    done = subprocess.run([*CLI, *args, "--json", "--config", str(config)], capture_output=True,
                          text=True, timeout=120)
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


def install(config: Path, bundle: Path) -> None:
    done = subprocess.run([*CLI, "model", "install", str(bundle), "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.timeout(180)
def test_a_damaged_current_model_falls_back_to_previous_loudly_and_alerts_flow(
        tmp_path: Path, broker: Mosquitto) -> None:
    config = write_config(tmp_path / "feederd.toml", {
        "state_dir": str(tmp_path / "state"),
        "camera": {"source": "demo", "realtime": False, "loop": True},
        "mqtt": {"host": broker.host, "port": broker.port, "device_id": DEVICE}})
    install(config, demo_version(tmp_path / "good-1.onnx", "good-1"))
    install(config, demo_version(tmp_path / "good-2.onnx", "good-2"))
    truncated(tmp_path / "state" / "models" / "good-2.onnx")  # bit rot on the SD card
    probe = Probe(broker, f"{TOPIC}/model", f"{TOPIC}/alert")
    daemon = DaemonProcess(config)
    try:
        [model] = probe.wait_for(f"{TOPIC}/model", 1, 90)[-1:]
        info = json.loads(model.payload)
        assert (info["version"], info["source"]) == ("good-1", "previous")
        assert "good-2.onnx" in info["fallback"]
        later = Probe(broker, f"{TOPIC}/model")  # a client subscribing later gets it too
        [kept] = later.wait_for(f"{TOPIC}/model", 1, 30)
        later.close()
        assert kept.retain and json.loads(kept.payload)["fallback"] == info["fallback"]
        [alert] = probe.wait_for(f"{TOPIC}/alert", 1, 90)[:1]
        assert json.loads(alert.payload)["model_version"] == "good-1"
        checks = {c["name"]: c for c in cli_json(config, "doctor")}
        assert not checks["daemon"]["ok"] and "good-2.onnx" in checks["daemon"]["detail"]
        assert checks["daemon"]["fix"]
    finally:
        assert daemon.stop() == 0, daemon.log
        probe.close()
    assert "current model" in daemon.log and "refused" in daemon.log


@pytest.mark.shared_data
@pytest.mark.timeout(300)
def test_a_model_nan_on_real_feeder_frames_is_rolled_back_after_a_few_frames(
        tmp_path: Path, shared_data: Path) -> None:
    clip = sorted((shared_data / "video").glob("bird_*.mp4"))[0]
    config = write_config(tmp_path / "feederd.toml", {
        "state_dir": str(tmp_path / "state"),
        "camera": {"source": str(clip), "realtime": False, "loop": True},
        "classifier": {"crop": "full"}, "mqtt": {"enabled": False},
        "spool": {"commit_interval_s": 0.05}})
    install(config, demo_version(tmp_path / "good-1.onnx", "good-1"))
    # Finite on the synthetic test images and on the bundled cartoon clip: a fresh device
    # with an empty spool has nothing that shows the fault before it runs.
    install(config, nan_on_texture(tmp_path / "nan.onnx", "nan-1", BEYOND_CARTOON))
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log(r"now classifying with model good-1", 240)  # at the next visit
    finally:
        assert daemon.stop() == 0, daemon.log
    assert "model nan-1 gave non-finite outputs on 3 frames" in daemon.log
    current = [m for m in cli_json(config, "model", "ls") if m["current"]]
    assert [m["version"] for m in current] == ["good-1"]
    assert "NOT NULL constraint" not in daemon.log and "Traceback" not in daemon.log
