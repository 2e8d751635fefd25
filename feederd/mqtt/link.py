"""The daemon's MQTT link: alerts and status out, owner replies in, Home Assistant discovery.

Threads. paho's network loop (``connect_async`` + ``loop_start``) runs every callback and
reconnects with backoff. One sender thread (:class:`~feederd.mqtt.sender.OutboxSender`) takes
the oldest message from the on-disk outbox, publishes it, and removes it only when its PUBACK
arrives; then the next. ``publish_*`` only write to the outbox (see ``feederd.mqtt.outbox`` for the
durability choice) and return.

Locking rule: paho calls ``on_publish`` while holding its own message lock, so no paho method
is ever called while ``self._cond`` is held.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from feederd.config import HomeAssistantConfig, MqttConfig
from feederd.errors import FeedbackError
from feederd.mqtt.client import describe_failure, log_paho, new_client, refusal_hint
from feederd.mqtt.feedback import LATEST, Feedback, FeedbackHandler, canonical_label, parse_feedback
from feederd.mqtt.homeassistant import Topics, discovery_messages
from feederd.mqtt.messages import (
    alert_payload,
    model_payload,
    stats_payload,
    to_json,
    visit_payload,
)
from feederd.mqtt.outbox import Outbox, OutMessage
from feederd.mqtt.sender import OutboxSender
from feederd.types import Alert, VisitSummary

# The package's name, as before feederd.mqtt became a package: log lines and
# ``[logging] levels`` keep naming it.
logger = logging.getLogger("feederd.mqtt")

COUNTERS = (
    "published", "publish_refused", "dropped_outbox", "outbox_pending", "outbox_errors",
    "memory_pending", "dropped_memory", "sender_errors",
    "feedback_accepted", "feedback_rejected", "feedback_errors", "alerts_rejected",
    "connects", "reconnects", "connect_failures",
)
_LATEST_ALERT = "latest_alert"
_SOCKET_FAILURES = ("failed to receive on socket", "failed to send")


class MqttLink(OutboxSender):
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
        self._client = None
        self._sender: threading.Thread | None = None
        self._cond = threading.Condition()
        self._connected = False
        self._stopping = False
        self._inflight = None
        self._memory = deque()
        self._memory_busy = self._idle = self._spilling = False
        self._beat = time.monotonic()
        self._latest: str | None = None  # the newest alert, also when the outbox is full
        self._model: bytes | None = None
        self._counts = Counter()
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
        client = new_client(self._cfg, self._password, f"feederd-{self._cfg.device_id}",
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
        self._latest = alert.event_id
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
        counts["memory_pending"] = len(self._memory)
        return counts

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
        log_paho(text)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            self._report_attempt(f"the broker refused the connection: {reason}"
                                 f"{refusal_hint(reason)}")
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
            self._beat = time.monotonic()  # a resent message gets its PUBACK from now on
            self._cond.notify_all()
        logger.info("MQTT connected to %s", self._where)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its "except OSError" block: the exception is the reason.
        self._report_attempt(describe_failure(sys.exc_info()[1]))

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
            latest = self._latest or self._outbox.meta(_LATEST_ALERT)
            if latest is None:
                raise FeedbackError("'latest' names no alert: none has been raised yet")
            feedback = replace(feedback, event_id=latest)
        if feedback.label is not None:
            feedback = replace(feedback, label=canonical_label(feedback.label, self._labels))
        return feedback

