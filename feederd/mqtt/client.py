"""Building paho clients: protocol, credentials, TLS context, reconnect delays.

Shared by the daemon's link and the short-lived clients, as are the descriptions of failed
connection attempts, which name the setting to check.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from feederd.config import MqttConfig
from feederd.errors import MqttError

# The package's name, as before feederd.mqtt became a package: log lines and
# ``[logging] levels`` keep naming it.
logger = logging.getLogger("feederd.mqtt")
_paho_logger = logging.getLogger("feederd.mqtt.paho")
_AUTH_REFUSALS = ("Bad user name or password", "Not authorized")


def new_client(cfg: MqttConfig, password: str, client_id: str, *, reconnect: bool,
               ) -> mqtt.Client:
    v5 = cfg.protocol == "5"
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else True,
        reconnect_on_failure=reconnect,
    )
    if cfg.username:
        client.username_pw_set(cfg.username, password or None)
    if cfg.tls:
        client.tls_set_context(_tls_context(cfg))
    # paho types the delays as int, but computes with them as numbers; tests use fractions.
    client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
    client.on_log = lambda _client, _userdata, _level, text: log_paho(text)
    client.suppress_exceptions = True  # a bug in a callback must not end the network loop
    return client


def publish_properties(response_topic: str | None, correlation_data: bytes | None,
                       ) -> Properties:
    """MQTT 5 PUBLISH properties: where to answer, and what to answer with."""
    props = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation_data is not None:
        props.CorrelationData = correlation_data
    return props


def log_paho(text: str) -> None:
    """paho reports every failed attempt at ERROR; we say it once, so its lines are debug,
    except a callback of ours that raised."""
    if text.startswith("Caught exception"):
        logger.error("MQTT: %s", text)
    else:
        _paho_logger.debug("%s", text)


def _tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """Load the CA and client certificate now, so a bad file is an error naming its key."""
    for key in ("ca_file", "cert_file", "key_file"):
        _check_readable(key, getattr(cfg, key))
    try:
        context = ssl.create_default_context(cafile=cfg.ca_file or None)
    except (ssl.SSLError, OSError) as exc:
        raise MqttError(f"mqtt.ca_file: {cfg.ca_file} holds no usable PEM CA certificate "
                        f"({exc})") from exc
    if cfg.cert_file:
        try:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise MqttError(f"mqtt.cert_file / mqtt.key_file: cannot load the client "
                            f"certificate {cfg.cert_file} with key {cfg.key_file} ({exc})"
                            ) from exc
    return context


def _check_readable(key: str, path: str) -> None:
    if not path:
        return
    if not Path(path).is_file():
        raise MqttError(f"mqtt.{key}: {path} does not exist or is not a file")
    if not os.access(path, os.R_OK):
        raise MqttError(f"mqtt.{key}: {path} is not readable by this user")


def describe_failure(exc: BaseException | None) -> str:
    """One line saying why a connection attempt failed, with what to check."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS certificate check failed: {exc.verify_message} (check mqtt.ca_file "
                "and that the broker's certificate names mqtt.host)")
    if isinstance(exc, ssl.SSLError):
        return (f"TLS handshake failed: {exc.reason or exc} (check mqtt.tls, mqtt.port and "
                "the certificates)")
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and listening on that port?)"
    if isinstance(exc, ConnectionResetError):
        return "the broker hung up during set-up (check mqtt.tls and mqtt.port)"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return "connection failed"


def refusal_hint(reason: ReasonCode) -> str:
    if reason.getName() in _AUTH_REFUSALS:
        return (" (check mqtt.username and the password in FEEDERD_MQTT__PASSWORD or "
                "mqtt.password_file)")
    return ""
