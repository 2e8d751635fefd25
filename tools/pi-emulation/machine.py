"""One booted Debian root under systemd-nspawn, and a Mosquitto broker on the host for it.

The container shares the host's network (no --private-network), so a broker on the host's
127.0.0.1 is the container's too. Commands run inside with ``nsenter`` into the container's
namespaces: with --register=no there is no machined to ask. See ../../../shared/PI-EMULATION.md
for why the flags are what they are.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Failed(Exception):
    """A check failed; the message says what was seen."""


def wait_for(what: str, condition: object, timeout: float, every: float = 1.0) -> float:
    """Poll ``condition()`` until true; the seconds it took, or :class:`Failed`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(every)
    raise Failed(f"{what}: not within {timeout:.0f} s")


class Machine:
    """A Debian root unpacked from ``tarball``, booted with real systemd as PID 1."""

    def __init__(self, tarball: Path, name: str, workdir: Path, wheels: Path) -> None:
        self.name = name
        self.root = workdir / "root"
        self.log = workdir / "nspawn.log"
        self.root.mkdir(parents=True)
        # tar(1), not tarfile: device nodes, owners and hard links exactly as debootstrap made
        subprocess.run(["tar", "-C", str(self.root), "-xf", str(tarball)], check=True)
        wheels.mkdir(parents=True, exist_ok=True)
        self._wheels = wheels
        self._proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def copy_checkout(self, repo: Path, dest: str) -> None:
        """The files git knows (tracked and untracked, not ignored): what a clone would have."""
        listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard",
                                 "-z"], check=True, capture_output=True).stdout.split(b"\0")
        target = self.root / dest.lstrip("/")
        for name in filter(None, (n.decode() for n in listed)):
            source = repo / name
            if source.is_file() or source.is_symlink():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name, follow_symlinks=False)

    def boot(self, timeout: float = 120) -> float:
        command = ["systemd-nspawn", "--quiet", "-D", str(self.root), "-M", self.name, "-b",
                   "--register=no", "--keep-unit", "--console=passive",
                   f"--bind-ro={HOST_CA}:/etc/host-ca.crt",
                   f"--bind={self._wheels}:/root/wheels"]
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("the container's systemd", self._find_leader, 30, 0.2)
        return wait_for("systemd reaching 'running'", self._booted, timeout)

    def _find_leader(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise Failed(f"systemd-nspawn exited {self._proc.returncode}: "
                         f"{self.log.read_text(errors='replace')[-2000:]}")
        for pid in _descendants(self._proc.pid):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    self.leader = pid
                    return True
        return False

    def _booted(self) -> bool:
        state = self.run("systemctl is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")

    def run(self, script: str, *, check: bool = True, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """``bash -c script`` inside the container, as root, with a clean environment."""
        variables = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        command = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C",
                   "-r", "-w", "--", "/usr/bin/env", "-i",
                   *(f"{k}={v}" for k, v in variables.items()), "/bin/bash", "-c", script]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise Failed(f"`{script}` exited {proc.returncode}: {proc.stdout[-1500:]}"
                         f"{proc.stderr[-1500:]}")
        return proc

    def poweroff(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self.run("systemctl poweroff --no-block", check=False, timeout=30)
        try:
            self._proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, 9)
            self._proc.wait(10)


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                found.extend(map(int, children))
                todo.extend(map(int, children))
    return found


class Broker:
    """``mosquitto`` on a free 127.0.0.1 port, anonymous, for the container's alerts."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise Failed("mosquitto is not installed on the host (apt-get install mosquitto)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        "persistence false\n")
        self._proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        wait_for("mosquitto listening", self._listening, 10, 0.1)

    def _listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)


@contextlib.contextmanager
def scratch(prefix: str, keep: bool) -> Iterator[Path]:
    """A work folder on the root file system (not tmpfs: a root is ~1 GB)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
