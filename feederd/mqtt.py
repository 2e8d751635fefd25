"""MQTT: alerts and status out, owner replies in, Home Assistant discovery. The only paho user.

Threads. paho's network loop (``connect_async`` + ``loop_start``) runs every callback and
reconnects with backoff. One sender thread takes the oldest message from the on-disk outbox,
publishes it, and removes it only when its PUBACK arrives; then the next. One message in
flight keeps the order without relying on how paho orders resends, and on a local network a
round trip is a millisecond while alerts come a few a minute. ``publish_*`` only write to the
outbox (see ``feederd.outbox`` for the durability choice) and return.

Exactly once, in order. A message paho has taken stays in paho's session across reconnects
and is resent by paho (DUP set), so the sender never publishes a row twice in one run; after a
restart the rows still stored are sent again. What remains is QoS 1's own window: a PUBACK lost
to a crash means that one message arrives twice.

Locking rule: paho calls ``on_publish`` while holding its own message lock, so no paho method
is ever called while ``self._cond`` is held.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from feederd.config import HomeAssistantConfig, MqttConfig
from feederd.errors import FeedbackError, MqttError
from feederd.feedback import (
    LATEST,
    Feedback,
    FeedbackHandler,
    Verdict,
    canonical_label,
    parse_feedback,
    reply_payload,
)
from feederd.homeassistant import Topics, discovery_messages
from feederd.messages import (
    alert_payload,
    iso_time,
    model_payload,
    stats_payload,
    to_json,
    visit_payload,
)
from feederd.outbox import Outbox, OutMessage, Queued
from feederd.types import Alert, VisitSummary

__all__ = [
    "MqttLink", "Topics", "alert_payload", "iso_time", "model_payload", "probe_broker",
    "send_reply", "stats_payload", "to_json", "visit_payload",
]

logger = logging.getLogger(__name__)

COUNTERS = (
    "published", "publish_refused", "dropped_outbox", "outbox_pending", "outbox_errors",
    "feedback_accepted", "feedback_rejected", "feedback_errors", "alerts_rejected",
    "connects", "reconnects", "connect_failures",
)
_LATEST_ALERT = "latest_alert"
_AUTH_REFUSALS = ("Bad user name or password", "Not authorized")
_SOCKET_FAILURES = ("failed to receive on socket", "failed to send")
_paho_logger = logging.getLogger(f"{__name__}.paho")


# --- the link -----------------------------------------------------------------------------------

@dataclass
class _InFlight:
    """The one outbox message paho has; PUBACKs may beat ``publish()`` returning its mid."""

    mid: int | None = None
    early: dict[int, ReasonCode | None] = field(default_factory=dict)
    reason: ReasonCode | None = None
    done: bool = False


class MqttLink:
    """The daemon's MQTT connection: outbox sender, status, discovery and feedback."""

    def __init__(
        self,
        cfg: MqttConfig,
        ha: HomeAssistantConfig,
        password: str,
        outbox_path: Path,
        feedback: FeedbackHandler,
        *,
        sw_version: str,
        labels: Sequence[str] = (),
    ) -> None:
        self.topics = Topics.of(cfg)
        self._cfg, self._ha, self._password = cfg, ha, password
        self._handler = feedback
        self._sw_version = sw_version
        self._labels = tuple(labels)
        self._where = f"{cfg.host}:{cfg.port}"
        self._outbox = Outbox(outbox_path, cfg.outbox_max)
        self._client: mqtt.Client | None = None
        self._sender: threading.Thread | None = None
        self._cond = threading.Condition()
        self._connected = False
        self._stopping = False
        self._inflight: _InFlight | None = None
        self._model: bytes | None = None
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._attempt_reported = False
        self._socket_problem: str | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    def set_labels(self, labels: Sequence[str]) -> None:
        """The labels of the model now serving, to spell species replies its way."""
        self._labels = tuple(labels)

    def start(self) -> None:
        """Connect in the background; a broker that is down is retried, never raised.

        Raises :class:`MqttError` for local mistakes only (unreadable TLS files).
        """
        if self._client is not None or not self._cfg.enabled:
            return
        client = _new_client(self._cfg, self._password, f"feederd-{self._cfg.device_id}",
                             reconnect=True)
        client.will_set(self.topics.status, "offline", qos=1, retain=True)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_log = self._on_log
        self._client = client
        logger.info("MQTT connecting to %s as %s; %d message(s) waiting in the outbox",
                    self._where, self.topics.base, len(self._outbox))
        client.connect_async(self._cfg.host, self._cfg.port, self._cfg.keepalive_s)
        client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="feederd-mqtt-outbox",
                                        daemon=True)
        self._sender.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what the outbox holds (within ``timeout``), say offline, disconnect."""
        deadline = time.monotonic() + timeout
        client = self._client
        if client is not None:
            self._wait_flushed(deadline)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._sender is not None:
            self._sender.join(max(0.1, deadline - time.monotonic()))
        if client is not None:
            self._say_offline(client, deadline)
            client.disconnect()
            client.loop_stop()
        self._outbox.close()
        logger.info("MQTT stopped; %d message(s) left in the outbox", self.counters()
                    ["outbox_pending"])

    def publish_alert(self, alert: Alert, snapshot_jpeg: bytes | None) -> None:
        """Queue the snapshot (retained) and the alert (QoS 1, MQTT 5 reply properties)."""
        messages = []
        if snapshot_jpeg:
            messages.append(OutMessage(self.topics.snapshot, snapshot_jpeg, qos=1, retain=True))
        messages.append(OutMessage(
            self.topics.alert,
            to_json(alert_payload(alert, self.topics.feedback)),
            qos=1,
            response_topic=self.topics.feedback,
            correlation_data=alert.event_id.encode("utf-8"),
        ))
        self._enqueue(messages, {_LATEST_ALERT: alert.event_id})

    def publish_visit(self, summary: VisitSummary) -> None:
        self._enqueue([OutMessage(self.topics.visit, to_json(visit_payload(summary)), qos=1)])

    def publish_model(self, info: Mapping[str, Any]) -> None:
        """Retained; kept and published again on every connect."""
        self._model = to_json(model_payload(info))
        if self._client is not None and self._connected:
            self._client.publish(self.topics.model, self._model, qos=1, retain=True)

    def publish_stats(self, stats: Mapping[str, Any]) -> None:
        """Not retained and not queued: stale stats are worth nothing after an outage."""
        if self._client is not None and self._connected:
            payload = to_json(stats_payload(stats, self.counters()))
            self._client.publish(self.topics.stats, payload, qos=0)

    def counters(self) -> dict[str, int]:
        with self._counts_lock:
            counts = {name: self._counts[name] for name in COUNTERS}
        counts["dropped_outbox"] = self._outbox.dropped
        counts["outbox_pending"] = len(self._outbox)
        return counts

    # --- outbox sender thread ---

    def _enqueue(self, messages: Sequence[OutMessage], meta: Mapping[str, str] | None = None,
                 ) -> None:
        if not self._cfg.enabled:
            return
        try:
            self._outbox.put(messages, meta)
        except MqttError as exc:
            self._count("outbox_errors")
            logger.error("%s; %d message(s) lost", exc, len(messages))
            return
        with self._cond:
            self._cond.notify_all()

    def _send_loop(self) -> None:
        try:
            while (queued := self._next_to_send()) is not None:
                self._deliver(queued)
        except Exception:
            logger.exception("MQTT outbox sender stopped by a bug; messages wait in the "
                             "outbox until the next start")

    def _next_to_send(self) -> Queued | None:
        """Wait until connected with something to send; ``None`` once stopping."""
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._stopping or (self._connected and len(self._outbox) > 0))
                if self._stopping:
                    return None
            if (queued := self._outbox.head()) is not None:
                return queued

    def _deliver(self, queued: Queued) -> None:
        """Publish one stored message and remove it once the broker has acknowledged it."""
        assert self._client is not None  # the sender starts after the client exists
        flight = _InFlight()
        with self._cond:
            self._inflight = flight
        message = queued.message
        info = self._client.publish(message.topic, message.payload, qos=message.qos,
                                    retain=message.retain, properties=self._properties(message))
        with self._cond:
            flight.mid = info.mid
            if info.mid in flight.early:
                flight.reason, flight.done = flight.early[info.mid], True
            self._cond.wait_for(lambda: flight.done or self._stopping)
        if flight.done:  # else stopping: the row stays for the next start
            self._outbox.remove(queued.id)
            self._count_delivery(message, flight.reason)
        with self._cond:
            self._inflight = None
            self._cond.notify_all()

    def _count_delivery(self, message: OutMessage, reason: ReasonCode | None) -> None:
        if reason is not None and reason.is_failure:
            self._count("publish_refused")
            logger.warning("MQTT broker refused a message on %s (%s); dropped it",
                           message.topic, reason)
        else:
            self._count("published")

    def _properties(self, message: OutMessage) -> Properties | None:
        if self._cfg.protocol != "5" or (message.response_topic is None
                                         and message.correlation_data is None):
            return None
        props = Properties(PacketTypes.PUBLISH)
        if message.response_topic is not None:
            props.ResponseTopic = message.response_topic
        if message.correlation_data is not None:
            props.CorrelationData = message.correlation_data
        return props

    def _wait_flushed(self, deadline: float) -> None:
        with self._cond:
            self._cond.wait_for(
                lambda: not self._connected
                or (len(self._outbox) == 0 and self._inflight is None),
                timeout=max(0.0, deadline - time.monotonic()),
            )

    def _say_offline(self, client: mqtt.Client, deadline: float) -> None:
        """A clean disconnect suppresses the last will, so say it ourselves."""
        if not self._connected:
            return
        info = client.publish(self.topics.status, "offline", qos=1, retain=True)
        try:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        except (RuntimeError, ValueError):
            logger.debug("MQTT could not publish 'offline' before disconnecting")

    # --- paho callbacks (paho's network thread) ---

    def _on_pre_connect(self, client: mqtt.Client, userdata: Any) -> None:
        self._attempt_reported = False
        self._socket_problem = None

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        """paho's own messages: keep a socket error for our one line, the rest is debug."""
        if text.startswith(_SOCKET_FAILURES):
            self._socket_problem = text.split(": ", 1)[-1]
        _log_paho(text)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            self._report_attempt(f"the broker refused the connection: {reason}"
                                 f"{_refusal_hint(reason)}")
            return
        client.subscribe(self.topics.feedback, qos=1)
        if self._ha.enabled:
            client.subscribe(self._ha.status_topic, qos=1)
        client.publish(self.topics.status, "online", qos=1, retain=True)
        self._announce(client)
        if self._model is not None:
            client.publish(self.topics.model, self._model, qos=1, retain=True)
        self._count("reconnects" if self._counts["connects"] else "connects")
        with self._cond:
            self._connected = True
            self._cond.notify_all()
        logger.info("MQTT connected to %s", self._where)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its "except OSError" block: the exception is the reason.
        self._report_attempt(_describe_failure(sys.exc_info()[1]))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, properties: Properties | None) -> None:
        with self._cond:
            was_connected, self._connected = self._connected, False
            stopping = self._stopping
            self._cond.notify_all()
        if stopping:
            return
        if was_connected:
            logger.warning("MQTT connection to %s lost (%s); reconnecting with backoff",
                           self._where, reason)
        else:
            self._report_attempt(f"the connection closed before the broker accepted it "
                                 f"({self._socket_problem or reason})")

    def _report_attempt(self, problem: str) -> None:
        """One log line and one count per failed attempt, whichever callbacks report it."""
        if self._attempt_reported:
            return
        self._attempt_reported = True
        self._count("connect_failures")
        logger.warning("MQTT cannot connect to %s: %s; retrying with backoff (at most %g s)",
                       self._where, problem, self._cfg.reconnect_max_s)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties) -> None:
        with self._cond:
            flight = self._inflight
            if flight is None:
                return
            if flight.mid == mid:
                flight.reason, flight.done = reason, True
                self._cond.notify_all()
            elif flight.mid is None:
                flight.early[mid] = reason

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.topics.feedback:
            self._take_feedback(message)
        elif message.topic == self._ha.status_topic and message.payload.strip() == b"online":
            logger.info("Home Assistant came online; announcing the entities again")
            self._announce(client)

    def _announce(self, client: mqtt.Client) -> None:
        for topic, payload, retain in discovery_messages(self._cfg, self._ha, self._sw_version):
            client.publish(topic, payload, qos=1, retain=retain)

    # --- feedback ---

    def _take_feedback(self, message: mqtt.MQTTMessage) -> None:
        """Parse, resolve and hand on one reply; a bad one costs a log line, never the loop."""
        correlation = getattr(message.properties, "CorrelationData", None)
        try:
            feedback = self._resolve(parse_feedback(
                bytes(message.payload), None if correlation is None else bytes(correlation),
                self._cfg.feedback_max_bytes))
            self._handler.handle(feedback)
        except FeedbackError as exc:
            self._count("feedback_rejected")
            logger.warning("MQTT feedback dropped: %s", exc)
            return
        except Exception:
            self._count("feedback_errors")
            logger.exception("MQTT feedback handler failed; the reply is dropped")
            return
        self._count("feedback_accepted")
        if feedback.verdict == "not_a_bird":
            self._count("alerts_rejected")
        logger.info("MQTT feedback accepted: %s %s%s", feedback.event_id, feedback.verdict,
                    f" {feedback.label}" if feedback.label else "")

    def _resolve(self, feedback: Feedback) -> Feedback:
        """Replace ``latest`` by the newest alert's id; spell a species the model's way."""
        if feedback.event_id == LATEST:
            latest = self._outbox.meta(_LATEST_ALERT)
            if latest is None:
                raise FeedbackError("'latest' names no alert: none has been raised yet")
            feedback = replace(feedback, event_id=latest)
        if feedback.label is not None:
            feedback = replace(feedback, label=canonical_label(feedback.label, self._labels))
        return feedback

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1


# --- short-lived clients: `feederd reply`, `feederd doctor` -------------------------------------

class _ConnectWait:
    """The outcome of one connection attempt of a short-lived client."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: str | None = None

    def on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                   reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            self.error = f"the broker refused the connection: {reason}{_refusal_hint(reason)}"
        self.done.set()

    def on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.error = _describe_failure(sys.exc_info()[1])
        self.done.set()

    def on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                      reason: ReasonCode, properties: Properties | None) -> None:
        if not self.done.is_set():
            self.error = f"the connection closed before the broker accepted it ({reason})"
            self.done.set()


def send_reply(cfg: MqttConfig, password: str, event_id: str, verdict: Verdict,
               label: str | None, timeout: float = 10.0) -> None:
    """Publish one JSON reply (QoS 1) and return once the broker has acknowledged it.

    Raises :class:`FeedbackError` for a malformed reply and :class:`MqttError` when the broker
    cannot be reached, refuses us, or does not acknowledge within ``timeout``.
    """
    payload = reply_payload(event_id, verdict, label)
    deadline = time.monotonic() + timeout
    client = _connected_client(cfg, password, f"feederd-reply-{os.getpid()}", timeout)
    try:
        info = client.publish(Topics.of(cfg).feedback, payload, qos=1)
        _await_puback(info, deadline, f"{cfg.host}:{cfg.port}")
    finally:
        _close(client)


def probe_broker(cfg: MqttConfig, password: str, timeout: float = 5.0) -> None:
    """Connect, authenticate and leave (``feederd doctor``); :class:`MqttError` says why not."""
    _close(_connected_client(cfg, password, f"feederd-doctor-{os.getpid()}", timeout))


def _connected_client(cfg: MqttConfig, password: str, client_id: str,
                      timeout: float) -> mqtt.Client:
    """A client with one connection attempt behind it: connected, or MqttError."""
    where = f"{cfg.host}:{cfg.port}"
    client = _new_client(cfg, password, client_id, reconnect=False)
    wait = _ConnectWait()
    client.on_connect, client.on_connect_fail = wait.on_connect, wait.on_connect_fail
    client.on_disconnect = wait.on_disconnect
    client.connect_async(cfg.host, cfg.port, cfg.keepalive_s)
    client.loop_start()
    if not wait.done.wait(timeout):
        _close(client)
        raise MqttError(f"cannot reach the MQTT broker at {where} within {timeout:g} s")
    if wait.error is not None:
        _close(client)
        raise MqttError(f"cannot connect to the MQTT broker at {where}: {wait.error}")
    return client


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def _await_puback(info: mqtt.MQTTMessageInfo, deadline: float, where: str) -> None:
    try:
        info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        published = info.is_published()
    except (RuntimeError, ValueError) as exc:
        raise MqttError(f"the reply to {where} was not sent: {exc}") from exc
    if not published:
        raise MqttError(f"the broker at {where} did not acknowledge the reply in time")


# --- client set-up ----------------------------------------------------------------------------

def _new_client(cfg: MqttConfig, password: str, client_id: str, *, reconnect: bool,
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
    client.on_log = lambda _client, _userdata, _level, text: _log_paho(text)
    client.suppress_exceptions = True  # a bug in a callback must not end the network loop
    return client


def _log_paho(text: str) -> None:
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


def _describe_failure(exc: BaseException | None) -> str:
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


def _refusal_hint(reason: ReasonCode) -> str:
    if reason.getName() in _AUTH_REFUSALS:
        return (" (check mqtt.username and the password in FEEDERD_MQTT__PASSWORD or "
                "mqtt.password_file)")
    return ""
