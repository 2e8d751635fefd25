"""A real ``feederd run`` process for tests: config written to disk, logs captured, signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from brokers import wait_until

ALERT_LINE = re.compile(r"alert (\S+): (\S+) \(")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, sections: dict[str, Any]) -> Path:
    lines = []
    for key, value in sections.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {toml_value(value)}")
    for section, values in sections.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in values.items())
    path.write_text("\n".join(lines) + "\n")
    return path


class DaemonProcess:
    """``python -m feederd.cli <args>`` with stderr collected line by line."""

    def __init__(self, config: Path, *args: str, command: str = "run",
                 env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "feederd.cli", command, "--config", str(config), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, text=True)
        self.lines: list[str] = []
        self.stdout: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.lines),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout),
                         daemon=True).start()

    def _pump(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._lock:
                into.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def alerts(self) -> list[tuple[str, str]]:
        """(event id, label) of every alert the daemon logged, in order."""
        return ALERT_LINE.findall(self.log)

    def wait_log(self, pattern: str, timeout: float = 30.0) -> None:
        regex = re.compile(pattern)
        wait_until(lambda: bool(regex.search(self.log)) or self.proc.poll() is not None,
                   timeout, f"log line matching {pattern!r}")
        assert regex.search(self.log), f"daemon exited ({self.proc.returncode}):\n{self.log}"

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def elapsed_stop(self) -> tuple[int, float]:
        start = time.monotonic()
        code = self.stop()
        return code, time.monotonic() - start
