"""Logging for a daemon that runs for months under journald.

- **One line per event.** A traceback or a multi-line message is folded into one line (lines
  joined by ``" | "``), so journald keeps one entry per event and ``grep`` finds all of it.
- **No timestamps under journald**, which stamps every line itself. journald is recognised the
  way systemd documents it: ``$JOURNAL_STREAM`` names the device and inode of the stream it
  connected to our stderr. Lines sent there start with a ``<N>`` syslog priority prefix, so
  ``journalctl -p warning`` works. A service whose output goes elsewhere but still runs under
  systemd (``$INVOCATION_ID`` set, stderr not a terminal) gets no timestamps either.
  ``[logging] timestamps = "yes"``/``"no"`` overrides the guess.
- **Levels per module** from ``[logging] levels`` (``{"feederd.mqtt" = "DEBUG"}``).
- **No secrets.** Every value given to :func:`register_secret` (the MQTT password, as soon as it
  is read) is replaced by ``***`` in each record's message, arguments and traceback as the
  record is made, so no handler, ours or another's, ever sees it.

:func:`setup_logging` may be called again (SIGHUP reload): it replaces its own handler and the
per-module levels it set before, and leaves handlers that others installed alone.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any, TextIO

from feederd.config import LoggingConfig

logger = logging.getLogger(__name__)

REDACTED = "***"
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                    logging.CRITICAL: 2}


class _SecretRegistry:
    """The set of strings that must never reach a log line, as one compiled pattern."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        forms = {value, repr(value)[1:-1], urllib.parse.quote(value, safe="")} - {""}
        with self._lock:
            self._values |= forms
            # Longest first, so a secret that contains another is replaced whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self.pattern = re.compile("|".join(map(re.escape, ordered)))

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self.pattern = None


_SECRETS = _SecretRegistry()


def register_secret(value: str) -> None:
    """Never log ``value`` (nor its ``repr``- or URL-escaped form) from now on."""
    if value:
        _SECRETS.add(value)


def forget_secrets() -> None:
    """Drop every registered secret (tests use this to start clean)."""
    _SECRETS.clear()


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    pattern = _SECRETS.pattern
    return pattern.sub(REDACTED, text) if pattern is not None else text


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Render ``record``'s message and traceback once, with the secrets replaced."""
    if _SECRETS.pattern is None or getattr(record, "_redacted", False):
        return record
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must not raise in the caller: keep the pieces
        message = f"{record.msg} % {record.args!r}"
    record.msg = redact(message)
    record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    record._redacted = True
    return record


class RedactSecrets(logging.Filter):
    """A filter that redacts a record before a handler (or logger) passes it on.

    :func:`setup_logging` also redacts every record as it is created (a record factory), so
    that handlers installed by others, in any order, never see a secret either; the filter
    stays on our own handler for records made before that, or by a foreign factory.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


class OneLineFormatter(logging.Formatter):
    """A formatter whose output never spans lines; optionally with a syslog priority prefix."""

    def __init__(self, fmt: str, datefmt: str | None = None, priority_prefix: bool = False):
        super().__init__(fmt, datefmt)
        self.priority_prefix = priority_prefix

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\r\n", "\n").replace("\r", "\n")
        text = " | ".join(line for line in text.split("\n") if line.strip())
        if self.priority_prefix:
            return f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{text}"
        return text


def journald_stream(stream: TextIO) -> bool:
    """Whether ``stream`` is the journald connection named by ``$JOURNAL_STREAM``."""
    dev, _, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or no file descriptor (StringIO)
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError, AttributeError):
        return False


def want_timestamps(cfg: LoggingConfig, stream: TextIO) -> bool:
    """``[logging] timestamps``; ``auto`` means none where systemd stamps the lines itself."""
    if cfg.timestamps != "auto":
        return cfg.timestamps == "yes"
    if journald_stream(stream):
        return False
    return not (os.environ.get("INVOCATION_ID") and not _isatty(stream))


def make_formatter(cfg: LoggingConfig, stream: TextIO) -> OneLineFormatter:
    """The formatter :func:`setup_logging` would install for ``stream``."""
    base = "%(levelname)s %(name)s: %(message)s"
    prefix = journald_stream(stream)
    if want_timestamps(cfg, stream):
        return OneLineFormatter("%(asctime)s.%(msecs)03d " + base, "%Y-%m-%dT%H:%M:%S", prefix)
    return OneLineFormatter(base, None, prefix)


class _Installed:
    """What the last :func:`setup_logging` call changed, so that the next one can undo it."""

    handler: logging.Handler | None = None
    levels: tuple[str, ...] = ()
    factory: Callable[..., logging.LogRecord] | None = None


def _redacting_factory(inner: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(inner(*args, **kwargs))

    return factory


def setup_logging(cfg: LoggingConfig, stream: TextIO | None = None) -> None:
    """Send every log record to ``stream`` (default: stderr), one line each, per ``cfg``."""
    teardown_logging()
    out = stream if stream is not None else sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(make_formatter(cfg, out))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(cfg.level)
    for name, level in cfg.levels.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(True)
    _Installed.factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(_redacting_factory(_Installed.factory))
    _Installed.handler, _Installed.levels = handler, tuple(cfg.levels)


def teardown_logging() -> None:
    """Remove what :func:`setup_logging` installed (its handler and per-module levels)."""
    if _Installed.handler is not None:
        logging.getLogger().removeHandler(_Installed.handler)
    for name in _Installed.levels:
        logging.getLogger(name).setLevel(logging.NOTSET)
    if _Installed.handler is not None:
        logging.captureWarnings(False)
    if _Installed.factory is not None:
        logging.setLogRecordFactory(_Installed.factory)
    _Installed.handler, _Installed.levels, _Installed.factory = None, (), None
