"""What only the running daemon knows, in a small JSON file that ``feederd doctor`` reads.

``doctor`` is another process (the daemon usually runs under systemd), so the daemon writes
down whether its alerts can leave and which model serves and why: ``<state_dir>/health.json``.
The file is replaced atomically (a temporary name, then a rename) and only when its content
changes, so the SD card sees a few small writes a day. There is no fsync: after a power cut
the daemon that starts again writes it anew, and ``pid`` tells a reader whether the writer
still runs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from feederd.atomic import write_bytes

logger = logging.getLogger(__name__)

HEALTH_FILE = "health.json"


class HealthFile:
    """Writes the daemon's state when it changes; a failing write is logged, never raised."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: dict[str, Any] | None = None
        self._failed = False

    def update(self, state: dict[str, Any]) -> bool:
        """Write ``state`` (with this process's pid) if it differs from the last one written."""
        state = {"pid": os.getpid(), **state}
        if state == self._last:
            return False
        data = (json.dumps(state, sort_keys=True, default=str) + "\n").encode()
        try:
            write_bytes(self.path, data, fsync=False, sync_dir=False)
        except OSError as exc:
            if not self._failed:
                logger.warning("cannot write %s (%s); `feederd doctor` will not see the "
                               "daemon's state until it can", self.path, exc)
            self._failed = True
            return False
        self._last, self._failed = state, False
        return True


def read_health(path: Path) -> dict[str, Any] | None:
    """The last state written, with ``running`` (whether its pid is alive); None if absent."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    state["running"] = _alive(state.get("pid"))
    return state


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:  # someone else's process (doctor run as another user)
        return True
    except OSError:
        return False
    return True
