"""tools/install-pi.sh: its plan in --dry-run, and a real run into a throw-away root.

The throw-away root gets real passwd/group files (changed with ``useradd --prefix``), a real
venv and a real ``pip install`` (of a small wheel built here, offline), and the unit enabled by
``systemctl --root``. apt and starting the service are what only a real Pi can check.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from prerequisites import require_root, require_tool

from feederd.config import load_settings

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "install-pi.sh"
UNIT = REPO / "systemd" / "feederd.service"


def installer(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=False)


def planned(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The system changes a --dry-run prints, one per line, without the leading '+ '."""
    assert result.returncode == 0, result.stderr
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


def snapshot(root: Path) -> dict[str, bytes | str]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() and not p.is_symlink()
            else str(p.lstat().st_mode) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def tools() -> None:
    for tool, package in (("useradd", "passwd"), ("groupadd", "passwd"),
                          ("systemctl", "systemd")):
        require_tool(tool, package)
    require_root("a real run (it sets owners with chown)")


def make_root(base: Path) -> Path:
    """A target root with what a fresh Raspberry Pi OS has that the installer touches."""
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\nvideo:x:44:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\nvideo:!::\n")
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).chmod(0o640)
    return root


def make_wheel(directory: Path) -> Path:
    """A minimal wheel whose console script is called ``feederd`` (built without setuptools)."""
    dist = "feederd_probe-1.0.dist-info"
    files = {
        "feederd_probe.py": "def main() -> None:\n    print('feederd probe')\n",
        f"{dist}/METADATA": "Metadata-Version: 2.1\nName: feederd-probe\nVersion: 1.0\n"
                            "Provides-Extra: pi\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\nfeederd = feederd_probe:main\n",
    }
    path = directory / "feederd_probe-1.0-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            data = text.encode()
            wheel.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{name},sha256={digest.decode()},{len(data)}")
        record.append(f"{dist}/RECORD,,")
        wheel.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return path


def install_args(root: Path, wheel: Path) -> list[str | Path]:
    return ["--root", root, "--python", sys.executable, "--source", wheel,
            "--pip-option=--no-index"]


@pytest.fixture(scope="module")
def installed(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One real installation into a throw-away root, shared by the read-only tests."""
    base = tmp_path_factory.mktemp("install")
    root = make_root(base)
    result = installer(*install_args(root, make_wheel(base)))
    assert result.returncode == 0, result.stdout + result.stderr
    yield root


@pytest.fixture
def own_install(installed: Path, tmp_path: Path) -> Path:
    """A private copy of the installed root, for tests that change it."""
    root = tmp_path / "root"
    shutil.copytree(installed, root, symlinks=True)
    return root


# --- dry run ----------------------------------------------------------------------------------

def test_dry_run_plans_user_venv_config_and_unit_and_changes_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    before = snapshot(root)
    steps = planned(installer("--dry-run", "--root", root, "--python", sys.executable))
    assert snapshot(root) == before
    text = "\n".join(steps)
    assert f"groupadd --prefix {root} --system feederd" in text
    assert (f"useradd --prefix {root} --system --gid feederd --groups video "
            "--home-dir /var/lib/feederd --no-create-home --shell /usr/sbin/nologin") in text
    assert f"-m venv --system-site-packages {root}/opt/feederd/venv" in text
    assert f"{root}/opt/feederd/venv/bin/python -m pip install" in text
    assert f"write {root}/etc/feederd/feederd.toml (mode 0640, root:feederd)" in text
    assert f"install -m 0644 {UNIT} {root}/etc/systemd/system/feederd.service" in text
    assert f"systemctl --root={root} enable feederd.service" in text


def test_dry_run_on_this_system_plans_apt_and_starts_nothing(tmp_path: Path) -> None:
    before = Path("/opt/feederd").exists()
    result = installer("--dry-run")
    steps = planned(result)
    assert Path("/opt/feederd").exists() == before
    assert "apt-get update" in steps
    [apt] = [s for s in steps if "apt-get install" in s]
    assert "--no-install-recommends" in apt and "python3-venv" in apt
    assert any("-m venv --system-site-packages /opt/feederd/venv" in s for s in steps)
    assert "install -m 0644 " + str(UNIT) + " /etc/systemd/system/feederd.service" in steps \
        or "unit /etc/systemd/system/feederd.service is up to date" in result.stderr


def test_a_venv_without_system_site_packages_is_recreated(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    venv = root / "opt/feederd/venv"
    venv.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\n")
    steps = planned(installer("--dry-run", "--root", root, "--python", sys.executable))
    assert f"rm -rf {venv}" in steps
    assert any(f"-m venv --system-site-packages {venv}" in s for s in steps)


def test_purge_without_uninstall_is_refused(tmp_path: Path) -> None:
    result = installer("--purge", "--dry-run", "--root", make_root(tmp_path))
    assert result.returncode != 0
    assert "--purge goes with --uninstall" in result.stderr


def test_an_unknown_option_is_refused_with_the_usage(tmp_path: Path) -> None:
    result = installer("--colour")
    assert result.returncode != 0
    assert "unknown option: --colour" in result.stderr and "Usage:" in result.stderr


# --- a real run into a throw-away root --------------------------------------------------------

def test_install_creates_the_system_user_in_the_video_group(installed: Path) -> None:
    users = {line.split(":")[0]: line.split(":") for line in
             (installed / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in
              (installed / "etc/group").read_text().splitlines()}
    assert users["feederd"][5:] == ["/var/lib/feederd", "/usr/sbin/nologin"]
    assert users["feederd"][3] == groups["feederd"][2]
    assert "feederd" in groups["video"][3].split(",")


def test_install_makes_a_venv_that_sees_system_packages_and_holds_the_program(
        installed: Path) -> None:
    venv = installed / "opt/feederd/venv"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert os.access(venv / "bin/feederd", os.X_OK)
    link = installed / "usr/local/bin/feederd"
    assert os.readlink(link) == "/opt/feederd/venv/bin/feederd"
    numpy = subprocess.run([sys.executable, "-c", "import numpy; print(numpy.__version__)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert f"numpy=={numpy}" in (installed / "opt/feederd/constraints.txt").read_text()


def test_install_writes_a_valid_private_config(installed: Path) -> None:
    gid = int(next(line.split(":")[2] for line in (installed / "etc/group").read_text()
                   .splitlines() if line.startswith("feederd:")))
    conf_dir, config = installed / "etc/feederd", installed / "etc/feederd/feederd.toml"
    assert (stat.S_IMODE(conf_dir.stat().st_mode), conf_dir.stat().st_gid) == (0o750, gid)
    assert (stat.S_IMODE(config.stat().st_mode), config.stat().st_uid, config.stat().st_gid) == (
        0o640, 0, gid)
    settings = load_settings(config)
    assert str(settings.state_dir) == "/var/lib/feederd"


def test_install_installs_and_enables_the_committed_unit(installed: Path) -> None:
    unit = installed / "etc/systemd/system/feederd.service"
    assert unit.read_bytes() == UNIT.read_bytes()
    wants = installed / "etc/systemd/system/multi-user.target.wants/feederd.service"
    assert wants.is_symlink()
    assert os.readlink(wants).endswith("/etc/systemd/system/feederd.service")
    assert (installed / "opt/feederd/docs/raspberry-pi.md").is_file()


def test_a_second_run_keeps_the_config_and_plans_no_new_user_venv_or_unit(
        own_install: Path, tmp_path: Path) -> None:
    root, wheel = own_install, make_wheel(tmp_path)
    config = root / "etc/feederd/feederd.toml"
    config.write_text(config.read_text() + "# edited by the owner\n")
    steps = planned(installer("--dry-run", *install_args(root, wheel)))
    text = "\n".join(steps)
    for absent in ("groupadd", "useradd", "usermod", "-m venv", "feederd.toml",
                   "feederd.service"):
        assert absent not in text.replace("enable feederd.service", ""), absent
    again = installer(*install_args(root, wheel))
    assert again.returncode == 0, again.stderr
    assert config.read_text().endswith("# edited by the owner\n")
    assert "left as it is" in again.stderr


def test_uninstall_removes_unit_venv_and_link_but_keeps_data_config_and_user(
        own_install: Path) -> None:
    root = own_install
    spool = root / "var/lib/feederd/spool"
    spool.mkdir(parents=True)
    (spool / "spool.db").write_bytes(b"samples")
    result = installer("--uninstall", "--root", root)
    assert result.returncode == 0, result.stderr
    assert not (root / "etc/systemd/system/feederd.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/feederd.service").is_symlink()
    assert not (root / "opt/feederd").exists()
    assert not (root / "usr/local/bin/feederd").is_symlink()
    assert (spool / "spool.db").read_bytes() == b"samples"
    assert (root / "etc/feederd/feederd.toml").exists()
    assert "feederd:" in (root / "etc/passwd").read_text()


def test_purge_also_removes_data_config_user_and_group(own_install: Path) -> None:
    root = own_install
    (root / "var/lib/feederd").mkdir(parents=True)
    result = installer("--uninstall", "--purge", "--root", root)
    assert result.returncode == 0, result.stderr
    assert not (root / "var/lib/feederd").exists()
    assert not (root / "etc/feederd").exists()
    assert "feederd:" not in (root / "etc/passwd").read_text()
    assert "feederd:" not in (root / "etc/group").read_text()
    assert "video:x:44:" in (root / "etc/group").read_text()
