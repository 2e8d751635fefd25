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
"""

from __future__ import annotations


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
