"""A real Chromium driven by Selenium through the system chromedriver, and the review page
served by the real ``feeder-sync review --web`` as a subprocess.

Debian's ``chromium`` and ``chromium-driver`` packages provide both binaries (``.ci/run``
installs them); nothing is downloaded (Selenium Manager is never asked: both paths are given).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from prerequisites import require_tool

from sync.helpers import SYNC

CHROMIUM = os.environ.get("FEEDERD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FEEDERD_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--window-size=1280,900")


def require_chromium() -> None:
    """Skip without Chromium on a developer's machine; fail where CI installs it."""
    require_tool(CHROMIUM, "chromium")
    require_tool(CHROMEDRIVER, "chromium-driver")


def chromium(profile: Path) -> Any:
    """A headless Chromium with a fresh profile in ``profile``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


class ReviewServer:
    """``feeder-sync review --web --no-browser`` as a real process; ``url`` is its link."""

    def __init__(self, config: Path, timeout: float = 60) -> None:
        self.proc = subprocess.Popen(
            [*SYNC, "review", "--config", str(config), "--web", "--no-browser"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "FEEDER_SYNC_CONFIG": ""})
        self.url = self._read_url(timeout)

    def _read_url(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if selector.select(timeout=0.5):
                line = self.proc.stdout.readline()
                if "http://127.0.0.1:" in line:
                    return line.split(": ", 1)[1].strip()
                if not line and self.proc.poll() is not None:
                    break
        self.kill()
        raise AssertionError(f"review --web printed no link:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr and self.proc.poll() is not None \
            else ""

    def kill(self) -> None:
        """SIGKILL: nothing after the last answered request may be needed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()

    def stop(self) -> int:
        """SIGTERM, as a service manager would; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(10)
        self.kill()
        return code
