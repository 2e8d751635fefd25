"""``feederd doctor``: a good setup passes every check; each broken part fails with a fix.

Every test runs the real command (``python -m feederd.cli doctor --json``) against real parts:
the bundled demo clip and model, a real Mosquitto with a password file, real SQLite spools and,
for the disk, a real 4 MiB tmpfs mounted in a private mount namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from brokers import Mosquitto, free_port
from daemonproc import write_config
from prerequisites import require_tool, skip_or_fail

from feederd.assets import demo_model_path
from feederd.config import SpoolConfig
from feederd.spool import DB_NAME, Spool

USER, PASSWORD = "feeder", "doctor-s3cret-pw"
CONTROLLED = ("model", "camera", "mqtt", "disk", "spool", "daemon")
"""The checks a test controls; the others (clock, temperature, throttling) describe the host."""
HOST = ("clock", "temperature", "throttling")
TIMEOUT_S = 120


@dataclass
class Report:
    """One doctor run: exit code, the checks by name, and everything it printed."""

    returncode: int
    checks: dict[str, dict[str, Any]]
    stdout: str
    stderr: str

    def failing(self, names: Sequence[str] = CONTROLLED) -> set[str]:
        return {name for name in names if not self.checks[name]["ok"]}


@dataclass
class Feeder:
    """A good device set-up in a temporary folder; tests break one part of it at a time."""

    root: Path
    broker: Mosquitto
    env: dict[str, str]
    sections: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> Path:
        return Path(self.sections["state_dir"])

    def config(self, **changes: dict[str, Any] | str) -> Path:
        sections = {key: dict(value) if isinstance(value, dict) else value
                    for key, value in self.sections.items()}
        for key, value in changes.items():
            if isinstance(value, dict):
                sections.setdefault(key, {}).update(value)
            else:
                sections[key] = value
        return write_config(self.root / "feederd.toml", sections)

    def doctor(self, config: Path | None = None, *, env: dict[str, str] | None = None,
               json_output: bool = True, wrap: Sequence[str] = ()) -> Report:
        command = [sys.executable, "-m", "feederd.cli", "doctor", "--config",
                   str(config or self.config()), *(["--json"] if json_output else [])]
        proc = subprocess.run([*wrap, *command], capture_output=True, text=True,
                              env={**self.env, **(env or {})}, timeout=TIMEOUT_S)
        checks = {c["name"]: c for c in json.loads(proc.stdout)} if json_output and \
            proc.stdout.startswith("[") else {}
        return Report(proc.returncode, checks, proc.stdout, proc.stderr)


def clean_env() -> dict[str, str]:
    """This process's environment without feederd settings or systemd credentials."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("FEEDERD_") and k != "CREDENTIALS_DIRECTORY"}


@pytest.fixture
def feeder(tmp_path: Path, make_broker: Callable[..., Mosquitto]) -> Feeder:
    broker = make_broker(users={USER: PASSWORD})
    state = tmp_path / "state"
    state.mkdir()
    env = {**clean_env(), "FEEDERD_MQTT__PASSWORD": PASSWORD}
    return Feeder(tmp_path, broker, env, {
        "state_dir": str(state),
        "camera": {"source": "demo"},
        "mqtt": {"host": broker.host, "port": broker.port, "username": USER},
    })


def assert_only_failure(report: Report, name: str) -> dict[str, Any]:
    """``name`` fails with a fix, the other parts still pass, and the exit code is 1."""
    assert report.returncode == 1, report.stderr
    assert report.failing() == {name}, report.checks
    check = report.checks[name]
    assert check["fix"], f"{name} fails without saying how to fix it: {check}"
    assert "Traceback" not in report.stderr
    return check


class TestAGoodSetup:
    def test_passes_every_check_and_exits_0(self, feeder: Feeder) -> None:
        report = feeder.doctor()
        assert list(report.checks) == [*CONTROLLED, *HOST]
        assert report.failing() == set(), report.checks
        assert all(not c["fix"] for c in report.checks.values() if c["ok"] and not c["warn"])
        # Clock, temperature and throttling describe the machine the tests run on; where one
        # of them fails, it must still say how to fix it, and the exit code must follow it.
        host_failures = report.failing(HOST)
        assert all(report.checks[name]["fix"] for name in host_failures)
        assert report.returncode == (1 if host_failures else 0), report.checks

    def test_the_demo_clip_passes_with_a_warning_and_a_fix(self, feeder: Feeder) -> None:
        camera = feeder.doctor().checks["camera"]
        assert camera["ok"] and camera["warn"] and "[camera] source" in camera["fix"]
        assert "demo clip" in camera["detail"]

    def test_the_demo_model_passes_with_a_warning_and_the_real_one_without(
            self, feeder: Feeder) -> None:
        assert not feeder.doctor().checks["model"]["warn"]  # run's default: AIY Birds V1
        demo = feeder.config(classifier={"model": str(demo_model_path())})
        model = feeder.doctor(demo).checks["model"]
        assert model["ok"] and model["warn"] and "cartoon" in model["detail"]
        assert "feederd model install" in model["fix"]

    def test_each_check_says_what_it_found(self, feeder: Feeder) -> None:
        checks = feeder.doctor().checks
        assert "aiy-birds-v1: 965 labels" in checks["model"]["detail"]  # run's default model
        assert "480x360" in checks["camera"]["detail"]
        assert f"{feeder.broker.port}: connected as {USER}" in checks["mqtt"]["detail"]
        assert "MiB free" in checks["disk"]["detail"]
        assert "no spool yet" in checks["spool"]["detail"]

    def test_the_json_lists_name_ok_detail_fix_and_warn(self, feeder: Feeder) -> None:
        for check in feeder.doctor().checks.values():
            assert set(check) == {"name", "ok", "detail", "fix", "warn"}
            assert isinstance(check["ok"], bool) and isinstance(check["warn"], bool)

    def test_the_table_is_for_people(self, feeder: Feeder) -> None:
        out = feeder.doctor(json_output=False).stdout
        for name in (*CONTROLLED, *HOST):
            assert any(line.split()[1:2] == [name] for line in out.splitlines()), out
        assert not out.lstrip().startswith("[")

    def test_the_password_never_appears_in_the_output(self, feeder: Feeder) -> None:
        report = feeder.doctor()
        assert PASSWORD not in report.stdout + report.stderr

    def test_a_spool_in_use_by_the_daemon_is_read_without_disturbing_it(
            self, feeder: Feeder) -> None:
        with Spool(feeder.state / "spool", SpoolConfig()):  # holds the writer's lock
            report = feeder.doctor()
        assert report.checks["spool"]["ok"], report.checks["spool"]
        assert "0 samples" in report.checks["spool"]["detail"]


class TestABrokenCamera:
    def test_an_unreadable_video_file_fails_naming_the_file(self, feeder: Feeder) -> None:
        clip = feeder.root / "broken.mp4"
        clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not really a video" * 100)
        check = assert_only_failure(feeder.doctor(feeder.config(camera={"source": str(clip)})),
                                    "camera")
        assert str(clip) in check["detail"]

    def test_a_missing_video_file_fails_naming_the_file(self, feeder: Feeder) -> None:
        missing = feeder.root / "nowhere.mp4"
        check = assert_only_failure(
            feeder.doctor(feeder.config(camera={"source": str(missing), "kind": "video"})),
            "camera")
        assert str(missing) in check["detail"]

    def test_a_device_index_without_a_device_fails_at_once(self, feeder: Feeder) -> None:
        if Path("/dev/video63").exists():
            pytest.skip("this machine has a /dev/video63")
        check = assert_only_failure(feeder.doctor(feeder.config(camera={"source": "63"})),
                                    "camera")
        assert "/dev/video63" in check["detail"]
        assert "ls /dev/video*" in check["fix"]

    def test_a_stream_that_refuses_the_connection_fails_without_its_password(
            self, feeder: Feeder) -> None:
        url = f"rtsp://cam:camera-pw@127.0.0.1:{free_port()}/stream"
        report = feeder.doctor(feeder.config(camera={"source": url}))
        check = assert_only_failure(report, "camera")
        assert "rtsp://cam:***@127.0.0.1" in check["detail"]
        assert "camera-pw" not in report.stdout


class TestABrokenModel:
    def test_a_truncated_installed_model_fails(self, feeder: Feeder) -> None:
        models = feeder.state / "models"
        models.mkdir()
        data = demo_model_path().read_bytes()
        (models / "feeder-1.onnx").write_bytes(data[: len(data) // 2])
        (models / "current").symlink_to("feeder-1.onnx")
        check = assert_only_failure(feeder.doctor(), "model")
        assert "feeder-1.onnx" in check["detail"]
        assert "feederd model install" in check["fix"]

    def test_a_truncated_configured_model_fails(self, feeder: Feeder) -> None:
        bundle = feeder.root / "cut.onnx"
        data = demo_model_path().read_bytes()
        bundle.write_bytes(data[: len(data) // 2])
        check = assert_only_failure(
            feeder.doctor(feeder.config(classifier={"model": str(bundle)})), "model")
        assert str(bundle) in check["detail"]

    def test_a_current_link_to_a_vanished_file_fails_instead_of_passing_on_the_demo(
            self, feeder: Feeder) -> None:
        models = feeder.state / "models"
        models.mkdir()
        (models / "current").symlink_to("feeder-9.onnx")
        check = assert_only_failure(feeder.doctor(), "model")
        assert "feeder-9.onnx" in check["detail"] and "missing" in check["detail"]


class TestABrokenBroker:
    def test_an_unreachable_broker_fails_with_a_connection_fix(self, feeder: Feeder) -> None:
        port = free_port()
        check = assert_only_failure(feeder.doctor(feeder.config(mqtt={"port": port})), "mqtt")
        assert f"127.0.0.1:{port}" in check["detail"]
        assert "mqtt.port" in check["fix"]

    def test_a_wrong_password_fails_with_a_credentials_fix(self, feeder: Feeder) -> None:
        report = feeder.doctor(env={"FEEDERD_MQTT__PASSWORD": "not-the-password"})
        check = assert_only_failure(report, "mqtt")
        assert "refused" in check["detail"]
        assert "password" in check["fix"]
        assert "not-the-password" not in report.stdout + report.stderr

    def test_no_password_at_all_fails(self, feeder: Feeder) -> None:
        env = {k: v for k, v in feeder.env.items() if k != "FEEDERD_MQTT__PASSWORD"}
        feeder.env = env
        assert_only_failure(feeder.doctor(), "mqtt")

    def test_the_table_prints_the_fix_under_the_failure(self, feeder: Feeder) -> None:
        report = feeder.doctor(feeder.config(mqtt={"port": free_port()}), json_output=False)
        lines = report.stdout.splitlines()
        at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["FAIL", "mqtt"])
        assert lines[at + 1].split()[0] == "fix:"
        assert report.returncode == 1


class TestABrokenDisk:
    def test_a_nearly_full_disk_fails(self, feeder: Feeder) -> None:
        small = feeder.root / "small"
        small.mkdir()
        require_tool("unshare", "util-linux")
        config = feeder.config(state_dir=str(small))
        # A 4 MiB tmpfs over the state folder, visible to the doctor only (private namespace).
        wrap = ["unshare", "--mount", "sh", "-c",
                f"mount -t tmpfs -o size=4m tmpfs {small} || exit 99; exec \"$@\"", "sh"]
        report = feeder.doctor(config, wrap=wrap)
        if report.returncode == 99:
            skip_or_fail(f"cannot mount a tmpfs here: {report.stderr.strip()}")
        check = assert_only_failure(report, "disk")
        assert str(small) in check["detail"] and "MiB free" in check["detail"]
        assert "free space" in check["fix"]


class TestABrokenSpool:
    def test_a_garbage_index_fails_and_is_left_as_it_was(self, feeder: Feeder) -> None:
        spool = feeder.state / "spool"
        (spool / "samples").mkdir(parents=True)
        garbage = b"this is not an SQLite database\n" * 200
        (spool / DB_NAME).write_bytes(garbage)
        check = assert_only_failure(feeder.doctor(), "spool")
        assert str(spool / DB_NAME) in check["detail"]
        assert "rebuild" in check["fix"]
        # The doctor reports; repairing is the daemon's job (it moves the index aside).
        assert (spool / DB_NAME).read_bytes() == garbage
        assert sorted(p.name for p in spool.iterdir()) == sorted([DB_NAME, "samples"])

    def test_a_healthy_spool_reports_its_samples(self, feeder: Feeder) -> None:
        Spool(feeder.state / "spool", SpoolConfig()).close()
        report = feeder.doctor()
        assert report.checks["spool"]["ok"]
        assert "0 samples" in report.checks["spool"]["detail"]
