"""The exceptions feederd raises, in one place.

Every error a user can cause or fix derives from :class:`FeederError`, so the CLI can turn
any of them into one clear message and exit code 2 without a traceback::

    FeederError
    ├── ConfigError        a config file or value is wrong (names the key and the fix)
    ├── CameraError        a frame source cannot be opened or has gone away
    ├── ModelError         a model bundle is unreadable, inconsistent or fails validation
    ├── SpoolError         the negatives spool cannot be read or written
    ├── MqttError          the broker connection cannot be set up (bad TLS files, password)
    ├── FeedbackError      an incoming reply is malformed, oversized or names an unknown event
    └── SyncError          feeder-sync: a pull, train, evaluate or push step failed
        └── TransportError the device cannot be reached or a stream is corrupt

Both command lines (``feederd`` and ``feeder-sync``) turn an error into an exit code and a
message in one place, :func:`cli_failure`: 2 for bad usage or invalid config or input (what the
user fixes; the message names the key or file), 1 for anything else (a broker or device that
cannot be reached, a corrupt stream, a bug: logged with its traceback), 130 for Ctrl-C.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class FeederError(Exception):
    """Base class for errors a user can act on; the message says what to do."""


class ConfigError(FeederError):
    """The configuration is invalid; ``problems`` lists ``section.key: message`` lines."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class CameraError(FeederError):
    """A frame source cannot be opened, or it stopped delivering frames."""


class ModelError(FeederError):
    """A model bundle is unreadable, inconsistent with its metadata, or numerically broken."""


class SpoolError(FeederError):
    """The negatives spool cannot be read or written."""


class MqttError(FeederError):
    """The MQTT client cannot be configured (TLS files, credentials)."""


class FeedbackError(FeederError):
    """An owner's reply cannot be accepted; it is dropped and counted."""


class UnknownEventError(FeedbackError):
    """A reply names an event the device does not know (never raised, or expired)."""


class UnknownSpeciesError(FeedbackError):
    """A reply names a species the serving model does not know."""


class SyncError(FeederError):
    """A feeder-sync step failed; nothing partial was kept."""


class TransportError(SyncError):
    """The device is unreachable or sent a corrupt stream."""


def exit_code(exc: BaseException) -> int:
    """The exit code for ``exc`` (see the module docstring)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, MqttError | TransportError):
        return EXIT_FAIL  # the input was fine; something out there is not
    if isinstance(exc, FeederError):
        return EXIT_USAGE
    return EXIT_FAIL


def cli_failure(prog: str, command: str, exc: BaseException) -> int:
    """Say what went wrong on stderr (no traceback unless it is a bug); -> the exit code."""
    if isinstance(exc, ConfigError):
        for problem in exc.problems:
            sys.stderr.write(f"{prog}: {problem}\n")
    elif isinstance(exc, FeederError):
        sys.stderr.write(f"{prog}: {exc}\n")
    elif not isinstance(exc, KeyboardInterrupt):
        logger.exception("%s %s failed unexpectedly; please report this", prog, command,
                         exc_info=exc)
    return exit_code(exc)
