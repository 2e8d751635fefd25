"""``feederd doctor``: check each part a feeder depends on and say how to fix what fails.

Each check is a small function returning a :class:`Check`; none raises, so one broken part
never hides the state of the others. Nothing here changes the device: the spool is opened
read-only (a damaged index is reported, not rebuilt, and a running daemon is not disturbed),
the camera is opened only long enough to read one frame.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from feederd.config import Settings
from feederd.errors import FeederError

if TYPE_CHECKING:
    from feederd.capture.base import FrameSource

logger = logging.getLogger(__name__)

MIN_FREE_BYTES = 200 * 2**20
HOT_CELSIUS = 80.0
CAMERA_WAIT_S = 5.0


@dataclass(frozen=True)
class Check:
    """One part's state. ``warn``: it works, but not as a feeder should (the demo clip or
    model); shown as ``warn`` with its fix, without failing the doctor's exit code."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


# --- camera -------------------------------------------------------------------------------------

def check_camera(settings: Settings) -> Check:
    from feederd.assets import demo_clip_path
    from feederd.capture import open_source

    cam = settings.camera
    if (missing := _missing_video_device(cam.source)) is not None:
        return Check("camera", False, f"camera.source = {cam.source!r}: there is no {missing}",
                     _camera_fix(cam.kind, cam.source))
    try:
        demo = demo_clip_path() if cam.source == "demo" else None
        source = open_source(cam, settings.motion.height, demo)
    except FeederError as exc:
        return Check("camera", False, str(exc), "check [camera] source and kind; on a Pi run "
                     "`rpicam-hello --list-cameras`")
    try:
        found = _first_frame(source, cam.kind, _redact(cam.source))
    finally:
        source.close()
    if found.ok and demo is not None:
        return Check("camera", True, f"{found.detail}: the bundled demo clip, not a camera",
                     "set [camera] source (and kind) to the feeder's camera", warn=True)
    return found


def _redact(source: str) -> str:
    """A camera URL without its password (rtsp://user:secret@host -> rtsp://user:***@host)."""
    parts = urllib.parse.urlsplit(source)
    if not parts.password:
        return source
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _missing_video_device(source: str) -> str | None:
    """``/dev/videoN`` for a device index whose node does not exist (Linux), else ``None``.

    OpenCV would only retry such a camera in the background; saying so at once is kinder.
    """
    source = source.strip()
    if not source.isdigit() or not sys.platform.startswith("linux"):
        return None
    node = f"/dev/video{int(source)}"
    return None if os.path.exists(node) else node


def _first_frame(source: FrameSource, kind: str, name: str) -> Check:
    """Wait up to :data:`CAMERA_WAIT_S` for one frame; a live camera whose first connection
    attempt failed is reported at once rather than after its retries."""
    deadline = time.monotonic() + CAMERA_WAIT_S
    while time.monotonic() < deadline:
        frame = source.read()
        if frame is not None:
            h, w = frame.image.shape[:2]
            return Check("camera", True, f"{kind}:{name} gives {w}x{h} frames")
        if source.finished:
            return Check("camera", False, f"{name}: ended before giving a frame",
                         "check that the video file is not empty")
        if getattr(source, "failures", 0) > 0:
            return Check("camera", False, f"{name}: cannot be opened or gives no frames",
                         _camera_fix(kind, name))
    return Check("camera", False, f"{name}: no frame within {CAMERA_WAIT_S:g} s",
                 _camera_fix(kind, name))


_RUNNING_HINT = ("; a running feederd holds the camera itself: stop it first "
                 "(`sudo systemctl stop feederd`)")


def _camera_fix(kind: str, source: str) -> str:
    if kind == "picamera2" or source == "picamera2":
        return ("check the ribbon cable and `rpicam-hello --list-cameras`" + _RUNNING_HINT)
    if source.strip().isdigit():
        return ("is the USB camera plugged in (`ls /dev/video*`) and not used by another "
                "process (`fuser /dev/video*`)? Set camera.source to its index" + _RUNNING_HINT)
    return ("is the camera powered and on the network, and is the URL right? Try it with "
            "`ffplay URL`")


# --- model --------------------------------------------------------------------------------------

def check_model(settings: Settings) -> Check:
    from feederd.assets import is_demo_model
    from feederd.classifier import validate_bundle
    from feederd.daemon import model_store_for, resolve_model_path
    from feederd.modelchain import real_frames

    fix = "install a good bundle: `feederd model install FILE`, or `feederd model rollback`"
    store = model_store_for(settings)
    if not settings.classifier.model and store.current_target() and \
            store.current_path() is None:
        return Check("model", False, f"{store.dir}/current points to "
                     f"{store.current_target()}, which is missing; {_FALLBACK}", fix)
    path = resolve_model_path(settings)
    try:
        bundle = validate_bundle(path, real_frames(settings))
    except FeederError as exc:
        return Check("model", False, str(exc) if settings.classifier.model
                     else f"{exc}; {_FALLBACK}", fix)
    detail = f"{bundle.version}: {len(bundle.labels)} labels ({path})"
    if is_demo_model(path):
        return Check("model", True, f"{detail}: the demo model knows cartoon birds only",
                     "install a real model: `feederd model install FILE` (or feeder-sync "
                     "push), or set classifier.model", warn=True)
    return Check("model", True, detail)


_FALLBACK = "the daemon serves `previous` instead, else the bundled model"


# --- broker -------------------------------------------------------------------------------------

def check_broker(settings: Settings) -> Check:
    if not settings.mqtt.enabled:
        return Check("mqtt", True, "disabled in [mqtt]")
    from feederd.mqtt import probe_broker

    where = f"{settings.mqtt.host}:{settings.mqtt.port}"
    try:
        probe_broker(settings.mqtt, settings.mqtt_password(), timeout=5.0)
    except FeederError as exc:
        return Check("mqtt", False, str(exc), _broker_fix(str(exc)))
    user = f" as {settings.mqtt.username}" if settings.mqtt.username else ""
    return Check("mqtt", True, f"{where}: connected{user}")


def _broker_fix(message: str) -> str:
    if "refused the connection" in message:
        return ("check mqtt.username and the password (FEEDERD_MQTT__PASSWORD, "
                "mqtt.password_file or the systemd credential mqtt_password) against the "
                "broker's users")
    return ("check that the broker runs and that mqtt.host, mqtt.port and mqtt.tls match its "
            "listener (`mosquitto_sub -h HOST -p PORT -t '#'` from this machine)")


# --- disk and spool -----------------------------------------------------------------------------

def check_disk(settings: Settings) -> Check:
    """Free space where the state and the spool live (the nearest existing folder)."""
    need = max(MIN_FREE_BYTES, settings.spool.min_free_bytes)
    worst: tuple[int, Path] | None = None
    for path in dict.fromkeys((_existing(settings.state_dir),
                               _existing(settings.spool_dir))):
        try:
            free = shutil.disk_usage(path).free
        except OSError as exc:
            return Check("disk", False, f"{path}: {exc.strerror}",
                         "check the state directory and its disk")
        if worst is None or free < worst[0]:
            worst = (free, path)
    assert worst is not None
    free, path = worst
    ok = free >= need
    return Check("disk", ok, f"{free / 2**20:.0f} MiB free under {path}"
                 + ("" if ok else f" (need {need / 2**20:.0f} MiB)"),
                 "" if ok else "free space on the SD card, or lower [spool] max_bytes")


def _existing(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_spool(settings: Settings) -> Check:
    from feederd.spool import DB_NAME, Spool
    from feederd.spool.quarantine import quarantined_files

    directory = settings.spool_dir
    if not (directory / DB_NAME).exists():
        return Check("spool", True, f"{directory}: no spool yet (created with the first "
                     "sample)")
    try:
        with Spool(directory, settings.spool, writer=False) as spool:
            stats = spool.stats()
        _quick_check(directory / DB_NAME)
    except (FeederError, sqlite3.Error) as exc:
        return Check("spool", False, str(exc), _spool_fix(directory / DB_NAME))
    if damaged := quarantined_files(directory):
        return Check("spool", False, f"{len(damaged)} damaged sample file(s) quarantined in "
                     f"{damaged[0].parent} (latest {damaged[-1].name}; "
                     f"{stats['quarantined']} since the spool was made)",
                     "files on the SD card changed after they were written: back it up and "
                     "check it (`dmesg | grep -i mmc`), replace it if this grows; delete "
                     "the quarantine folder to clear this")
    return Check("spool", True, f"{stats['samples']} samples, {stats['bytes'] / 2**20:.1f} "
                 f"MiB, {stats['unsynced']} not yet synced ({directory})")


def _spool_fix(db: Path) -> str:
    if not os.access(db, os.R_OK | os.W_OK):
        return ("run the doctor as the user feederd runs as (`sudo -u feederd feederd "
                f"doctor`): this user cannot read {db}")
    return ("restart feederd (`sudo systemctl restart feederd`): it moves the damaged index "
            "aside and rebuilds it from the sample files")


def _quick_check(db: Path) -> None:
    """SQLite's own consistency check, read-only; raises sqlite3.DatabaseError naming the file."""
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=10.0)
    try:
        result = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    finally:
        conn.close()
    if result != ["ok"]:
        raise sqlite3.DatabaseError(f"{db} is damaged: {'; '.join(result[:3])}")


# --- the running daemon ---------------------------------------------------------------------------

def check_daemon(settings: Settings) -> Check:
    """What the running daemon reports of itself (feederd.health): can its alerts leave?"""
    from feederd.health import HEALTH_FILE, read_health

    state = read_health(settings.state_dir / HEALTH_FILE)
    if state is None or not state["running"]:
        return Check("daemon", True, "not running (no health report from a live daemon in "
                     f"{settings.state_dir})")
    blocked = state.get("alerts_blocked") or ""
    fallback = state.get("model_fallback") or ""
    detail = f"pid {state['pid']}, serving model {state.get('model')}"
    if blocked:
        return Check("daemon", False, f"{detail}; alerts cannot leave: {blocked}",
                     "systemd restarts feederd when its watchdog is on; otherwise `sudo "
                     "systemctl restart feederd`, and see `journalctl -u feederd`")
    if fallback:
        return Check("daemon", False, f"{detail}, a fallback: {fallback}",
                     "install a good bundle: `feederd model install FILE`")
    return Check("daemon", True, f"{detail}; alerts leave")


# --- the host -----------------------------------------------------------------------------------

def check_clock(_settings: Settings) -> Check:
    if Path("/run/systemd/timesync/synchronized").exists():
        return Check("clock", True, "synchronised (systemd-timesyncd)")
    out = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    if not out:
        return Check("clock", True, "cannot tell (no systemd time service); event ids use "
                     "this clock")
    ok = out.strip() == "yes"
    return Check("clock", ok, f"NTP synchronised: {out.strip()}",
                 "" if ok else "enable time sync: `sudo timedatectl set-ntp true`")


def check_temperature(_settings: Settings) -> Check:
    zone = Path("/sys/class/thermal/thermal_zone0/temp")
    try:
        celsius = int(zone.read_text().strip()) / 1000
    except (OSError, ValueError):
        return Check("temperature", True, "no thermal sensor (not a Pi)")
    ok = celsius < HOT_CELSIUS
    return Check("temperature", ok, f"{celsius:.1f} °C",
                 "" if ok else "add a heatsink or fan; shade the enclosure")


def check_throttling(_settings: Settings) -> Check:
    out = _run(["vcgencmd", "get_throttled"])
    try:
        value = int(out.strip().split("=")[-1], 16) if out else None
    except ValueError:
        value = None
    if value is None:
        return Check("throttling", True, "cannot tell (no vcgencmd: not a Pi)")
    ok = value == 0
    return Check("throttling", ok, f"get_throttled = {value:#x}",
                 "" if ok else "under-voltage or heat: use the official power supply")


def _run(cmd: list[str]) -> str | None:
    """The command's output, or ``None`` if it is missing or fails (e.g. no systemd)."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


CHECKS: tuple[Callable[[Settings], Check], ...] = (
    check_model, check_camera, check_broker, check_disk, check_spool, check_daemon,
    check_clock, check_temperature, check_throttling,
)


def run_checks(settings: Settings) -> list[Check]:
    results = []
    for check in CHECKS:
        try:
            results.append(check(settings))
        except Exception as exc:  # a doctor must report, not crash
            logger.debug("check %s crashed", check.__name__, exc_info=True)
            results.append(Check(check.__name__.removeprefix("check_"), False,
                                 f"check failed: {exc}", "report this as a bug"))
    return results


def render(results: list[Check]) -> str:
    """A table: status, part, what was found; under each failure, how to fix it."""
    width = max(len(r.name) for r in results)
    lines = []
    for r in results:
        status = "FAIL" if not r.ok else "warn" if r.warn else "ok"
        lines.append(f"{status:<4}  {r.name:<{width}}  {r.detail}")
        if (not r.ok or r.warn) and r.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {r.fix}")
    return "\n".join(lines)
