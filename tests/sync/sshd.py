"""A real OpenSSH server for tests: ``/usr/sbin/sshd -D`` on a free loopback port with a
temporary host key and one authorized client key, plus a matching ``ssh -F`` config.

Nothing touches the user's ``~/.ssh``: the client uses only the generated config, key and
known_hosts file.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
HOST_ALIAS = "feeder-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SshServer:
    """Start with :meth:`start`; :attr:`ssh_config` is what ``ssh -F`` needs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.user = getpass.getuser()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ssh_config = root / "ssh_config"

    def start(self, timeout: float = 15.0) -> SshServer:
        self.root.mkdir(parents=True, exist_ok=True)
        host_key, client_key = self.root / "host_key", self.root / "client_key"
        for key in (host_key, client_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True, capture_output=True)
        (self.root / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
        (self.root / "known_hosts").write_text(
            f"[127.0.0.1]:{self.port} {Path(f'{host_key}.pub').read_text()}")
        self._write_configs(host_key, client_key)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        self.log = (self.root / "sshd.log").open("wb")
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self._wait(timeout)
        return self

    def _write_configs(self, host_key: Path, client_key: Path) -> None:
        (self.root / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
            f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}", "StrictModes no",
            "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "PermitRootLogin yes",
            f"AllowUsers {self.user}", "LogLevel ERROR", "MaxStartups 50",
        ]) + "\n")
        self.ssh_config.write_text("\n".join([
            f"Host {HOST_ALIAS}", "  HostName 127.0.0.1", f"  Port {self.port}",
            f"  User {self.user}", f"  IdentityFile {client_key}", "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {self.root / 'known_hosts'}",
            "  GlobalKnownHostsFile /dev/null", "  StrictHostKeyChecking yes",
            "  BatchMode yes", "  LogLevel ERROR",
        ]) + "\n")

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited {self.proc.returncode}: {self.log_text()}")
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"sshd did not listen on port {self.port}: {self.log_text()}")

    def log_text(self) -> str:
        path = self.root / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        self.log.close()
