"""The systemd notification protocol (``sd_notify``), without a dependency.

systemd hands a ``Type=notify`` service the address of a datagram socket in ``$NOTIFY_SOCKET``;
the service reports ``READY=1`` once it really works (camera open, model warmed up), pings
``WATCHDOG=1`` from its frame loop, and says ``RELOADING=1`` / ``STOPPING=1`` around a reload
and a shutdown. Outside systemd there is no socket and every call is a cheap no-op, so the
daemon can call these methods unconditionally.

The watchdog ping is meant to be called on every frame: it sends at most one datagram per half
watchdog interval, and costs one ``time.monotonic()`` comparison otherwise. A loop that stalls
stops pinging and systemd restarts the service; that is the point, so the pings must come from
the frame loop itself, never from a helper thread.

A failing send is logged (once per kind of failure) and never raised: losing a notification must
not take down the daemon it reports on.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)


def watchdog_interval_from_env(environ: Mapping[str, str] | None = None,
                               pid: int | None = None) -> float | None:
    """Seconds of ``$WATCHDOG_USEC``, or ``None`` when the watchdog is off or not for us.

    ``$WATCHDOG_PID``, when set, names the process the watchdog applies to; a child that
    inherited the environment must not ping on its parent's behalf.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    wd_pid = env.get("WATCHDOG_PID", "")
    if wd_pid and wd_pid != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1_000_000


def _socket_address(path: str) -> str | None:
    """The ``sendto`` address for ``$NOTIFY_SOCKET``: a path, or ``@name`` for an abstract one."""
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    # systemd >= 254 may hand out "vsock:CID:PORT" (VMs); a Pi service never gets one.
    logger.warning("NOTIFY_SOCKET=%r is not a path or an abstract socket; notifications off",
                   path)
    return None


class SystemdNotifier:
    """Tells systemd about start-up, reloads, shutdown and liveness (see the module docstring)."""

    def __init__(self, socket_path: str | None = None) -> None:
        path = os.environ.get("NOTIFY_SOCKET", "") if socket_path is None else socket_path
        self._address = _socket_address(path) if path else None
        self._sock: socket.socket | None = None
        self._failures: set[str] = set()
        self.enabled: bool = self._address is not None
        self.watchdog_interval: float | None = (
            watchdog_interval_from_env() if self.enabled else None
        )
        # Next moment a watchdog ping is due; +inf makes watchdog() a single comparison.
        self._next_ping = 0.0 if self.watchdog_interval else math.inf

    def ready(self, status: str = "") -> None:
        """Start-up (or a reload) is complete; also resets the watchdog."""
        self._send("READY=1" + (f"\nSTATUS={status}" if status else ""))
        self._note_ping()

    def status(self, text: str) -> None:
        """A one-line status shown by ``systemctl status feederd``."""
        self._send(f"STATUS={text}")

    def stopping(self) -> None:
        """Shutdown has begun; systemd now waits up to ``TimeoutStopSec``."""
        self._send("STOPPING=1")

    def reloading(self) -> None:
        """A reload has begun; send :meth:`ready` when it is done.

        ``MONOTONIC_USEC`` is what ``Type=notify-reload`` (systemd >= 253) requires; older
        versions and plain ``Type=notify`` accept and ignore it.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for more start-up/shutdown time (e.g. a slow first model load on a Pi Zero)."""
        self._send(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1_000_000))}")

    def watchdog(self, healthy: Callable[[], bool] | None = None) -> None:
        """Ping the watchdog; call it every frame, it sends once per half interval.

        ``healthy`` is asked only when a ping is due; while it says no, no ping is sent (and
        it is asked again a second later), so systemd restarts a daemon whose frame loop
        runs but whose alerts cannot leave.
        """
        now = time.monotonic()
        if now < self._next_ping:
            return
        if healthy is not None and not healthy():
            self._next_ping = now + 1.0
            return
        self._send("WATCHDOG=1")
        self._note_ping()

    def close(self) -> None:
        """Release the socket; later calls reopen it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _note_ping(self) -> None:
        if self.watchdog_interval:
            self._next_ping = time.monotonic() + self.watchdog_interval / 2

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode("utf-8"), self._address)
        except OSError as exc:
            self._log_failure(message.split("=", 1)[0], exc)

    def _log_failure(self, kind: str, exc: OSError) -> None:
        key = f"{kind}:{exc.errno}"
        if key not in self._failures:
            self._failures.add(key)
            logger.warning("cannot send %s to systemd (%s): %s", kind, self._printable(),
                           exc.strerror or exc)

    def _printable(self) -> str:
        address = self._address or ""
        return "@" + address[1:] if address.startswith("\0") else address
