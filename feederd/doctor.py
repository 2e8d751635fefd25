"""``feederd doctor``: check each part a feeder depends on and say how to fix what fails.

Each check is a small function returning a :class:`Check`; none raises, so one broken part
never hides the state of the others.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from feederd.config import Settings
from feederd.errors import FeederError

logger = logging.getLogger(__name__)

MIN_FREE_BYTES = 200 * 2**20
HOT_CELSIUS = 80.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def check_camera(settings: Settings) -> Check:
    from feederd.assets import demo_clip_path
    from feederd.capture import open_source

    cam = settings.camera
    try:
        source = open_source(cam, settings.motion.height, demo_clip_path())
    except FeederError as exc:
        return Check("camera", False, str(exc), "check [camera] source/kind and cabling; "
                     "on a Pi run `rpicam-hello --list-cameras`")
    try:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if (frame := source.read()) is not None:
                h, w = frame.image.shape[:2]
                return Check("camera", True, f"{cam.kind}:{cam.source} gives {w}x{h} frames")
            if source.finished:
                break
        return Check("camera", False, f"{cam.source}: no frame within 5 s",
                     "is another process using the camera? (`fuser /dev/video*`)")
    finally:
        source.close()


def check_model(settings: Settings) -> Check:
    from feederd.classifier import validate_bundle
    from feederd.daemon import resolve_model_path

    path = resolve_model_path(settings)
    try:
        bundle = validate_bundle(path)
    except FeederError as exc:
        return Check("model", False, str(exc), "install a good bundle: `feederd model install "
                     "FILE`, or `feederd model rollback`")
    return Check("model", True, f"{bundle.version}: {len(bundle.labels)} labels ({path})")


def check_broker(settings: Settings) -> Check:
    if not settings.mqtt.enabled:
        return Check("mqtt", True, "disabled in [mqtt]")
    from feederd.mqtt import probe_broker

    where = f"{settings.mqtt.host}:{settings.mqtt.port}"
    try:
        probe_broker(settings.mqtt, settings.mqtt_password(), timeout=5.0)
    except FeederError as exc:
        return Check("mqtt", False, f"{where}: {exc}", "check [mqtt] host/port/tls and the "
                     "password (FEEDERD_MQTT__PASSWORD or /etc/feederd/mqtt_password)")
    return Check("mqtt", True, f"{where}: connected and authenticated")


def check_disk(settings: Settings) -> Check:
    path = settings.state_dir if settings.state_dir.exists() else settings.state_dir.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return Check("disk", False, f"{path}: {exc.strerror}", "create the state directory")
    ok = free >= MIN_FREE_BYTES
    return Check("disk", ok, f"{free / 2**20:.0f} MiB free under {path}",
                 "" if ok else "free space on the SD card or lower [spool] max_bytes")


def check_spool(settings: Settings) -> Check:
    from feederd.spool import Spool

    if not settings.spool_dir.exists():
        return Check("spool", True, f"{settings.spool_dir} not created yet (first run)")
    try:
        spool = Spool(settings.spool_dir, settings.spool)
        try:
            stats = spool.stats()
        finally:
            spool.close()
    except FeederError as exc:
        return Check("spool", False, str(exc), "move the spool folder aside; feederd rebuilds it")
    return Check("spool", True, f"{stats.get('count', 0)} samples, "
                 f"{stats.get('bytes', 0) / 2**20:.1f} MiB")


def check_clock(_settings: Settings) -> Check:
    if Path("/run/systemd/timesync/synchronized").exists():
        return Check("clock", True, "synchronised (systemd-timesyncd)")
    out = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    if out is None:
        return Check("clock", True, "cannot tell (no timedatectl); event ids use this clock")
    ok = out.strip() == "yes"
    return Check("clock", ok, f"NTP synchronised: {out.strip() or 'unknown'}",
                 "" if ok else "enable time sync: `sudo timedatectl set-ntp true`")


def check_temperature(_settings: Settings) -> Check:
    zone = Path("/sys/class/thermal/thermal_zone0/temp")
    if not zone.exists():
        return Check("temperature", True, "no thermal sensor (not a Pi)")
    celsius = int(zone.read_text().strip()) / 1000
    ok = celsius < HOT_CELSIUS
    return Check("temperature", ok, f"{celsius:.1f} °C",
                 "" if ok else "add a heatsink or fan; shade the enclosure")


def check_throttling(_settings: Settings) -> Check:
    out = _run(["vcgencmd", "get_throttled"])
    if out is None:
        return Check("throttling", True, "no vcgencmd (not a Pi)")
    value = int(out.strip().split("=")[-1], 16)
    ok = value == 0
    return Check("throttling", ok, out.strip(),
                 "" if ok else "under-voltage or heat: use the official power supply")


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None


CHECKS: tuple[Callable[[Settings], Check], ...] = (
    check_model, check_camera, check_broker, check_disk, check_spool, check_clock,
    check_temperature, check_throttling,
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
    width = max(len(r.name) for r in results)
    lines = []
    for r in results:
        lines.append(f"{'ok ' if r.ok else 'FAIL'} {r.name:<{width}}  {r.detail}")
        if not r.ok and r.fix:
            lines.append(f"     {'':<{width}}  fix: {r.fix}")
    return "\n".join(lines)
