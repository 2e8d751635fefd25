#!/usr/bin/env python3
"""Install and run feederd as a systemd service in Debian 12 and 13 roots (systemd-nspawn).

    sudo python3 tools/pi-emulation/run.py                    # bookworm and trixie
    sudo python3 tools/pi-emulation/run.py --suite trixie --keep

As close to a Raspberry Pi as an x86-64 machine allows (see docs/raspberry-pi.md): a Debian
root (built once by roots.sh and cached as a tarball) boots real systemd as PID 1;
tools/install-pi.sh --no-apt --no-pi --no-start installs the venv, user and unit from this
checkout; the unit then runs on the bundled clip and each check below must pass:

    installed, default config is no demo, active (running) after READY, journald lines without
    a second time stamp, alerts reach a broker, mining stores samples, doctor passes, the
    watchdog restarts a stopped (SIGSTOP) daemon, --uninstall --purge leaves nothing behind

Prints one line per check with its time and a JSON summary last; exits 0 only if all passed.
Needs root, systemd-nspawn, debootstrap (first run only), mosquitto and network access to
deb.debian.org and PyPI (pip's downloads are cached next to the roots).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import Broker, Failed, Machine, scratch, wait_for

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("FEEDERD_PI_ROOTS", "/var/cache/feederd-pi-roots"))
SUITES = ("bookworm", "trixie")
SRC = "/root/feederd"
WHEELS = "/root/wheels"
CONFIG = "/etc/feederd/feederd.toml"
AS_FEEDERD = f"runuser -u feederd -- /usr/local/bin/feederd --config {CONFIG}"
# Folders an install touches; after --uninstall --purge they must hold what they held before.
WATCHED = "/etc /opt /usr/local /var/lib /var/cache /var/log /srv /home"
NOISE = re.compile(r"^/var/(log/journal|lib/systemd|cache/ldconfig|cache/private|lib/private"
                   r"|log/private)(/|$)|^/etc/(machine-id|\.pwd\.lock|ld\.so\.cache)$"
                   r"|^/etc/(passwd|group|shadow|gshadow|subuid|subgid)-$")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d")


def roots_tarball(suite: str) -> tuple[Path, float]:
    start = time.monotonic()
    out = subprocess.run(["bash", str(HERE / "roots.sh"), suite], check=True, text=True,
                         stdout=subprocess.PIPE).stdout.strip().splitlines()[-1]
    return Path(out), time.monotonic() - start


class Alerts:
    """Every alert the broker sees, collected by a paho subscriber on the host."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self._client.on_connect = lambda c, *_: c.subscribe("feederd/+/alert", qos=1)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append(json.loads(message.payload))

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


class Suite:
    """The checks for one Debian release, in order; each records its time and outcome."""

    def __init__(self, suite: str, machine: Machine, broker: Broker) -> None:
        self.suite = suite
        self.machine = machine
        self.broker = broker
        self.results: list[dict[str, Any]] = []
        self.before: set[str] = set()

    def check(self, name: str, step: Callable[[], str]) -> bool:
        start = time.monotonic()
        try:
            detail, ok = step(), True
        except (Failed, subprocess.SubprocessError, OSError, ValueError) as exc:
            detail, ok = str(exc), False
        seconds = round(time.monotonic() - start, 1)
        self.results.append({"check": name, "ok": ok, "seconds": seconds, "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'} {self.suite:<9} {name:<28} {seconds:6.1f} s  "
              f"{detail}", flush=True)
        return ok

    def show(self, *props: str) -> dict[str, str]:
        out = self.machine.run("systemctl show feederd " + " ".join(f"-p {p}" for p in props))
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    # --- the steps ----------------------------------------------------------------------------

    def listing(self) -> set[str]:
        out = self.machine.run(f"find {WATCHED} -xdev 2>/dev/null; getent passwd feederd; "
                               "getent group feederd; true").stdout
        return {line for line in out.splitlines() if line and not NOISE.match(line)}

    def install(self) -> str:
        self.before = self.listing()
        command = f"bash {SRC}/tools/install-pi.sh --no-apt --no-pi --no-start"
        env = {"PIP_CERT": "/etc/host-ca.crt"}
        offline = f" --pip-option=--no-index --pip-option=--find-links={WHEELS}"
        cached = self.machine.run(f"test -f {WHEELS}/complete", check=False).returncode == 0
        out = self.machine.run(command + offline, env=env, check=False, timeout=1200) \
            if cached else None
        if out is None or out.returncode != 0:  # no cache yet, or the dependencies changed
            cached = False
            out = self.machine.run(command, env=env, timeout=1200)
            self.fill_wheel_cache(env)
        version = self.machine.run("/opt/feederd/venv/bin/python -c 'import numpy, sys; "
                                   "print(sys.version.split()[0], numpy.__version__)'")
        python, numpy = version.stdout.split()
        return (f"Python {python}, numpy {numpy}, "
                f"{'wheels from the cache' if cached else 'wheels from PyPI'}; "
                f"{out.stderr.strip().splitlines()[-1]}")

    def fill_wheel_cache(self, env: dict[str, str]) -> None:
        """Keep the wheels pip fetched (PyPI's proxy here sends no-store: pip's own cache stays
        empty), so the next run installs offline from the same files."""
        pip = "/opt/feederd/venv/bin/python -m pip"
        self.machine.run(f"rm -rf {WHEELS}/* && {pip} download -q -d {WHEELS} -c "
                         f"/opt/feederd/constraints.txt {SRC} 'setuptools>=68' wheel && "
                         f"rm -f {WHEELS}/feederd-* && touch {WHEELS}/complete", env=env,
                         check=False, timeout=1200)

    def default_config(self) -> str:
        text = (self.machine.root / CONFIG.lstrip("/")).read_text()
        camera = tomllib.loads(text).get("camera", {})
        if camera.get("source", "demo") == "demo" and camera.get("kind") != "picamera2":
            raise Failed(f"the installer's config replays the demo clip: [camera] {camera}")
        self.machine.run(f"{AS_FEEDERD} check-config")
        return f"[camera] {camera}; check-config passes"

    def configure(self) -> None:
        """The clip and the cartoon model it was made for, in a loop, to the host's broker;
        owner and mode as the installer left them."""
        model = self.machine.run("/opt/feederd/venv/bin/python -c 'from feederd.assets import "
                                 "demo_model_path; print(demo_model_path())'").stdout.strip()
        path = self.machine.root / CONFIG.lstrip("/")
        stat = path.stat()
        path.write_text('state_dir = "/var/lib/feederd"\n[camera]\nsource = "demo"\n'
                        f'loop = true\n[classifier]\nmodel = "{model}"\n[mqtt]\n'
                        f'host = "127.0.0.1"\nport = {self.broker.port}\n'
                        'device_id = "pi-emulation"\n')
        os.chown(path, stat.st_uid, stat.st_gid)
        path.chmod(stat.st_mode & 0o7777)

    def start(self) -> str:
        self.configure()
        self.machine.run("systemctl start feederd", timeout=240)  # Type=notify: after READY=1
        state = self.show("ActiveState", "SubState", "StatusText", "MainPID", "WatchdogUSec")
        if (state["ActiveState"], state["SubState"]) != ("active", "running"):
            raise Failed(f"feederd is {state}")
        if not state["StatusText"]:
            raise Failed("no STATUS= text from the daemon")
        return (f"active (running), pid {state['MainPID']}, status {state['StatusText']!r}, "
                f"watchdog {state['WatchdogUSec']}")

    def journal(self) -> str:
        lines = self.machine.run("journalctl -u feederd -o cat --no-pager").stdout.splitlines()
        ours = [line for line in lines if not line.startswith(("Starting ", "Started "))]
        if not ours:
            raise Failed(f"no feederd log lines in the journal: {lines[-5:]}")
        stamped = [line for line in ours if TIMESTAMP.match(line)]
        if stamped:
            raise Failed(f"{len(stamped)} of {len(ours)} lines carry their own time: {stamped[0]}")
        said = [line for line in ours if "daemon: camera: " in line or "daemon: model" in line]
        if not any("daemon: camera: " in line for line in said):
            raise Failed(f"no line says which camera runs: {ours[:8]}")
        return f"{len(ours)} lines, none with a second time stamp; {said}"

    def alerts(self, alerts: Alerts) -> str:
        took = wait_for("an alert at the broker", lambda: alerts.count() > 0, 180)
        first = alerts.messages[0]
        return f"first alert after {took:.0f} s: {first.get('label')} {first.get('confidence')}"

    def mining(self) -> str:
        def stored() -> bool:
            out = self.machine.run(f"{AS_FEEDERD} spool stats --json", check=False)
            return out.returncode == 0 and json.loads(out.stdout).get("samples", 0) > 0
        took = wait_for("a mined sample in the spool", stored, 180, 3)
        stats = json.loads(self.machine.run(f"{AS_FEEDERD} spool stats --json").stdout)
        return f"{stats['samples']} samples ({stats['bytes']} bytes) after {took:.0f} s more"

    def doctor(self) -> str:
        # The container shares the host's (synchronised) clock but runs no timesyncd of its
        # own; its flag file is what the doctor reads first, so set it as timesyncd would.
        self.machine.run("mkdir -p /run/systemd/timesync && "
                         "touch /run/systemd/timesync/synchronized")
        out = self.machine.run(f"{AS_FEEDERD} doctor", check=False, timeout=120)
        if out.returncode != 0:
            raise Failed(f"doctor exited {out.returncode}:\n{out.stdout}{out.stderr}")
        return "exit 0: " + "; ".join(line.split("  ")[0] + " " + line.split()[1]
                                      for line in out.stdout.splitlines() if line[:1] != " ")

    def watchdog(self) -> str:
        old = self.show("MainPID")["MainPID"]
        self.machine.run(f"kill -STOP {old}")

        def restarted() -> bool:
            state = self.show("MainPID", "ActiveState", "SubState")
            return state["MainPID"] not in (old, "0") and state["ActiveState"] == "active" \
                and state["SubState"] == "running"
        took = wait_for("a new running daemon after SIGSTOP", restarted, 150, 2)
        journal = self.machine.run("journalctl -u feederd --no-pager").stdout
        if "Watchdog timeout" not in journal:
            raise Failed("restarted, but the journal has no 'Watchdog timeout' line")
        return f"pid {old} stopped; 'Watchdog timeout', then pid " \
               f"{self.show('MainPID')['MainPID']} running {took:.0f} s later"

    def uninstall(self) -> str:
        self.machine.run(f"bash {SRC}/tools/install-pi.sh --uninstall --purge", timeout=120)
        left = sorted(self.listing() - self.before)
        if left:
            raise Failed(f"{len(left)} paths left: {left[:10]}")
        gone = sorted(self.before - self.listing())
        return f"nothing left in {WATCHED}, no feederd user" + \
            (f" ({len(gone)} paths that were there are gone: {gone[:3]})" if gone else "")


def run_suite(suite: str, keep: bool) -> dict[str, Any]:
    tarball, built = roots_tarball(suite)
    print(f"---- {suite}: root {tarball} ({built:.0f} s)", flush=True)
    with scratch(f"feederd-pi-{suite}-", keep) as work:
        broker = Broker(work)
        start = time.monotonic()
        machine = Machine(tarball, f"pi-{suite}", work, CACHE / f"wheels-{suite}")
        machine.copy_checkout(REPO, SRC)
        unpacked = time.monotonic() - start
        suite_ = Suite(suite, machine, broker)
        alerts = Alerts(broker.port)
        try:
            suite_.check("boot", lambda: f"systemd up after {machine.boot():.0f} s "
                         f"(unpacked in {unpacked:.0f} s)")
            steps: list[tuple[str, Callable[[], str]]] = [
                ("install-pi.sh", suite_.install),
                ("default config is no demo", suite_.default_config),
                ("active (running), READY", suite_.start),
                ("journald lines", suite_.journal),
                ("alerts reach the broker", lambda: suite_.alerts(alerts)),
                ("mining stores samples", suite_.mining),
                ("doctor passes", suite_.doctor),
                ("watchdog restarts SIGSTOP", suite_.watchdog),
                ("--uninstall --purge", suite_.uninstall),
            ]
            for name, step in steps:
                if not suite_.check(name, step) and name in ("install-pi.sh",
                                                             "active (running), READY"):
                    break
        finally:
            alerts.stop()
            machine.poweroff()
            broker.stop()
            if keep:
                print(f"kept {work}", flush=True)
    seconds = round(time.monotonic() - start + built, 1)
    return {"suite": suite, "seconds": seconds, "root_build_seconds": round(built, 1),
            "passed": all(r["ok"] for r in suite_.results) and len(suite_.results) == 10,
            "checks": suite_.results}


def missing_requirements() -> list[str]:
    problems = [] if os.geteuid() == 0 else ["root"]
    for tool in ("systemd-nspawn", "nsenter", "tar"):
        if shutil.which(tool) is None:
            problems.append(tool)
    cached = all((CACHE / f"{s}.tar").is_file() for s in SUITES)
    if not cached and shutil.which("debootstrap") is None:
        problems.append("debootstrap")
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        problems.append("mosquitto")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=SUITES,
                        help="Debian release (repeatable; default: both)")
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    args = parser.parse_args(argv)
    if problems := missing_requirements():
        print(f"pi-emulation: needs {', '.join(problems)}", file=sys.stderr)
        return 77  # "skipped", as automake's test harness has it
    summary = [run_suite(suite, args.keep) for suite in args.suite or SUITES]
    print(json.dumps({"passed": all(s["passed"] for s in summary), "suites": summary}))
    return 0 if all(s["passed"] for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
