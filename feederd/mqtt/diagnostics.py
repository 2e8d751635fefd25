"""What the device says about itself in Home Assistant: hardware model and the last error.

Pure (no paho): :func:`hardware_model` reads the board name the kernel reports, and
:class:`LastError` remembers the newest ERROR record of any ``feederd`` logger, so the stats
topic can show it ("Last error" in Home Assistant) without anyone reading the journal.
"""

from __future__ import annotations

import logging
import platform
import threading
from pathlib import Path
from typing import Any

# Where Linux exposes the board name ("Raspberry Pi 4 Model B Rev 1.4\0").
_MODEL_FILES = (Path("/proc/device-tree/model"), Path("/sys/firmware/devicetree/base/model"))
_MAX_MESSAGE_CHARS = 240


def hardware_model(files: tuple[Path, ...] = _MODEL_FILES) -> str:
    """The Pi model from the device tree; elsewhere the machine type (``x86_64``)."""
    for path in files:
        try:
            text = path.read_bytes().rstrip(b"\0").decode("utf-8", "replace").strip()
        except OSError:
            continue
        if text:
            return text
    return platform.machine() or "unknown"


class LastError(logging.Handler):
    """Keeps the newest ERROR (or worse) record: time, logger and its first line."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._lock_value = threading.Lock()
        self._last: dict[str, Any] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().splitlines()[0] if record.msg else ""
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        with self._lock_value:
            self._last = {"time": round(record.created, 3), "logger": record.name,
                          "message": message[:_MAX_MESSAGE_CHARS]}

    def value(self) -> dict[str, Any] | None:
        with self._lock_value:
            return None if self._last is None else dict(self._last)

    def install(self, logger_name: str = "feederd") -> LastError:
        logging.getLogger(logger_name).addHandler(self)
        return self

    def remove(self, logger_name: str = "feederd") -> None:
        logging.getLogger(logger_name).removeHandler(self)

