"""A real Home Assistant core for tests: its own venv, a loopback port, set up headless.

The venv is built once by ``tools/ha-venv.sh`` (cached under ``~/.cache/feederd-tests``);
without it the tests that need it skip, and under CI (``CI=true`` or
``FEEDERD_REQUIRE_SHARED_DATA=1``) they fail, since CI builds it first. Onboarding (the first
user, then a token) and the MQTT config flow go through Home Assistant's REST API, as its
frontend would. ``hass_watch.py`` runs in Home Assistant's own Python (its aiohttp) and prints
every ``state_changed`` event of the entities of interest as a JSON line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from brokers import HOST, free_port, wait_until
from prerequisites import skip_or_fail

HA_VERSION = os.environ.get("FEEDERD_HA_VERSION", "2025.4.4")
_CACHE = Path(os.environ.get("FEEDERD_TEST_CACHE", Path.home() / ".cache" / "feederd-tests"))
_WATCHER = Path(__file__).with_name("hass_watch.py")
_CONFIG = """\
homeassistant:
  name: feederd test
  latitude: 52.0
  longitude: 0.0
  elevation: 0
  unit_system: metric
  time_zone: UTC
  country: GB
  currency: EUR
http:
  server_host: {host}
  server_port: {port}
api:
websocket_api:
onboarding:
config:
automation: !include automations.yaml
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: info
"""
_CLIENT_ID = "http://127.0.0.1/"


def ha_venv() -> Path:
    """The built venv, or a skip (a failure under CI) saying how to build it."""
    venv = _CACHE / f"ha-{HA_VERSION}"
    if (venv / ".complete").exists():
        return venv
    skip_or_fail(f"Home Assistant {HA_VERSION} venv missing at {venv}: run tools/ha-venv.sh")


class HomeAssistant:
    """One Home Assistant configuration directory, started and stopped as a process."""

    def __init__(self, venv: Path, config_dir: Path, automations: str = "[]") -> None:
        self.venv = venv
        self.config_dir = config_dir
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.token = ""
        self.proc: subprocess.Popen[bytes] | None = None
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "configuration.yaml").write_text(_CONFIG.format(host=HOST, port=self.port))
        (config_dir / "automations.yaml").write_text(automations)

    @property
    def log_path(self) -> Path:
        return self.config_dir / "home-assistant.log"

    def start(self, timeout: float = 180.0) -> HomeAssistant:
        self.proc = subprocess.Popen(
            [str(self.venv / "bin" / "hass"), "-c", str(self.config_dir), "--skip-pip",
             "--log-file", str(self.log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._up, timeout, "Home Assistant to answer on its port")
        return self

    def stop(self, timeout: float = 60.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"Home Assistant exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
        try:
            path = "/api/" if self.token else "/api/onboarding"
            return self.request("GET", path, auth=bool(self.token)) is not None
        except (OSError, urllib.error.URLError):
            return False

    # --- REST -------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True,
                form: dict[str, str] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data, headers, method=method)
        with urllib.request.urlopen(req, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    def onboard(self) -> None:
        """Create the owner and get an access token, as the onboarding screen does."""
        done = self.request("POST", "/api/onboarding/users", {
            "client_id": _CLIENT_ID, "name": "Owner", "username": "owner",
            "password": "feeder-test-password", "language": "en"}, auth=False)
        tokens = self.request("POST", "/auth/token", auth=False, form={
            "grant_type": "authorization_code", "code": done["auth_code"],
            "client_id": _CLIENT_ID})
        self.token = tokens["access_token"]
        (self.config_dir / "test-token").write_text(self.token)

    def add_mqtt(self, host: str, port: int) -> dict[str, Any]:
        """The MQTT integration's config flow: one broker step."""
        flow = self.request("POST", "/api/config/config_entries/flow",
                            {"handler": "mqtt", "show_advanced_options": False})
        assert flow.get("step_id") == "broker", flow
        result = self.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                              {"broker": host, "port": port})
        assert result.get("type") == "create_entry", result
        return dict(result)

    def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in self.request("GET", "/api/states")}

    def call(self, domain: str, service: str, entity_id: str) -> None:
        self.request("POST", f"/api/services/{domain}/{service}", {"entity_id": entity_id})

    def log(self) -> str:
        """The log of every run: Home Assistant moves the previous run's aside as ``.1``."""
        runs = [self.log_path.with_name(self.log_path.name + ".1"), self.log_path]
        return "".join(p.read_text(errors="replace") for p in runs if p.exists())

    def problems(self, *words: str) -> list[str]:
        """WARNING and worse log lines that mention any of ``words``."""
        pattern = re.compile("|".join(map(re.escape, words)))
        return [line for line in self.log().splitlines()
                if re.search(r"\] ?(WARNING|ERROR|CRITICAL)|^\S+ \S+ (WARNING|ERROR|CRITICAL)",
                             line) and pattern.search(line)]


class Watcher:
    """``state_changed`` events of entities whose id contains ``needle``, from the websocket."""

    def __init__(self, ha: HomeAssistant, needle: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [str(ha.venv / "bin" / "python"), str(_WATCHER), f"ws://{HOST}:{ha.port}",
             ha.token, needle], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(30):
            self.close()
            pytest.fail(f"the websocket watcher did not subscribe: {self._proc.stderr.read()}")

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            document = json.loads(line)
            if document.get("subscribed"):
                self._ready.set()
                continue
            with self._lock:
                self.events.append(document)

    def of(self, entity_id: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["entity_id"] == entity_id]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)


def wait_state(ha: HomeAssistant, entity_id: str, condition: Any, timeout: float = 30.0,
               ) -> dict[str, Any]:
    """Wait until ``condition(state dict)`` holds for ``entity_id``; return that state."""
    found: dict[str, Any] = {}

    def check() -> bool:
        state = ha.states().get(entity_id)
        if state is not None and condition(state):
            found.update(state)
            return True
        return False

    wait_until(check, timeout, f"{entity_id} to reach the expected state "
                               f"(now {ha.states().get(entity_id)})")
    return found


def seconds_since(start: float) -> float:
    return round(time.monotonic() - start, 1)
