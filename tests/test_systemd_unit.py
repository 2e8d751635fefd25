"""systemd/feederd.service: valid for systemd, hardened, and consistent with the installer.

``systemd-analyze`` checks the committed file byte for byte. It resolves ``ExecStart=`` and the
targets the unit names, so the file is placed in a throw-away root (``--root``) that holds the
installed program path and a copy of the system's unit directory; nothing is rewritten.
Without systemd-analyze these tests skip, except in CI (which installs systemd), where they fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prerequisites import require_tool

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "feederd.service"
INSTALLER = REPO / "tools" / "install-pi.sh"
MAX_EXPOSURE = 1.5  # `systemd-analyze security --offline=yes`, systemd 252; lower it, never raise


def directives(text: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file, keyed by name; repeated keys keep every value."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


UNIT_KEYS = directives(UNIT.read_text(encoding="utf-8"))


def one(key: str) -> str:
    [value] = UNIT_KEYS[key]
    return value


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    return require_tool("systemd-analyze", "systemd")


def make_root(tmp_path: Path, unit_text: str) -> Path:
    """A root where the unit is installed as tools/install-pi.sh installs it."""
    root = tmp_path / "root"
    exec_start = Path(one("ExecStart").split()[0])
    program = root / exec_start.relative_to("/")
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    kill = Path(one("ExecReload").split()[0])
    (root / kill.parent.relative_to("/")).mkdir(parents=True, exist_ok=True)
    shutil.copy(kill, root / kill.relative_to("/"))
    units = Path("/usr/lib/systemd/system")
    shutil.copytree(units, root / units.relative_to("/"), symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/feederd.service").write_text(unit_text, encoding="utf-8")
    return root


def verify(systemd_analyze: str, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([systemd_analyze, "verify", f"--root={root}", "feederd.service"],
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_committed_unit_passes_systemd_analyze_verify_without_warnings(
        systemd_analyze: str, tmp_path: Path) -> None:
    result = verify(systemd_analyze, make_root(tmp_path, UNIT.read_text(encoding="utf-8")))
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_the_verify_check_catches_a_broken_directive(
        systemd_analyze: str, tmp_path: Path) -> None:
    broken = UNIT.read_text(encoding="utf-8").replace("WatchdogSec=30", "WatchdogSecs=30")
    result = verify(systemd_analyze, make_root(tmp_path, broken))
    assert "Unknown key" in result.stdout + result.stderr


def test_security_exposure_stays_at_most_the_measured_level(systemd_analyze: str) -> None:
    result = subprocess.run([systemd_analyze, "security", "--offline=yes", str(UNIT)],
                            capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r"Overall exposure level for feederd\.service: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_the_service_is_type_notify_with_a_watchdog_and_bounded_restarts() -> None:
    assert one("Type") == "notify"
    assert one("WatchdogSec") == "30"
    assert one("Restart") == "on-failure"
    assert int(one("StartLimitBurst")) >= 3
    assert one("TimeoutStopSec") == "20"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"


def test_exec_start_runs_the_venv_the_installer_makes() -> None:
    script = INSTALLER.read_text(encoding="utf-8")
    prefix = re.search(r"^PREFIX=(\S+)$", script, re.M)
    config = re.search(r"^CONF_DIR=(\S+)$", script, re.M)
    assert prefix and config
    expected = f"{prefix.group(1)}/venv/bin/feederd run --config {config.group(1)}/feederd.toml"
    assert one("ExecStart") == expected


def test_the_service_runs_as_feederd_with_the_video_group_and_systemd_directories() -> None:
    assert (one("User"), one("Group"), one("SupplementaryGroups")) == (
        "feederd", "feederd", "video")
    for key in ("StateDirectory", "ConfigurationDirectory", "LogsDirectory", "CacheDirectory"):
        assert one(key) == "feederd"


def test_the_mqtt_password_credential_has_a_default_so_the_file_is_optional() -> None:
    assert one("LoadCredential") == "mqtt_password:/etc/feederd/mqtt_password"
    assert one("SetCredential").split(":", 1)[0] == "mqtt_password"


def test_devices_are_limited_to_the_camera() -> None:
    assert one("DevicePolicy") == "closed"
    allowed = {value.split()[0] for value in UNIT_KEYS["DeviceAllow"]}
    assert {"char-video4linux", "char-media", "char-dma_heap"} <= allowed
    assert all(value.endswith((" rw", " r")) for value in UNIT_KEYS["DeviceAllow"])


def test_the_core_hardening_directives_are_set() -> None:
    expected = {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
        "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes",
        "RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
        "SystemCallArchitectures": "native", "ProtectProc": "invisible",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    }
    assert {key: one(key) for key in expected} == expected
    assert "@system-service" in UNIT_KEYS["SystemCallFilter"]


def test_onnxruntime_telemetry_is_off_and_caches_go_to_the_cache_directory() -> None:
    assert {"ORT_DISABLE_TELEMETRY=1", "XDG_CACHE_HOME=%C/feederd"} <= set(UNIT_KEYS["Environment"])
