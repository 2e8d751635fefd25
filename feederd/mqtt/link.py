"""The daemon's MQTT link: alerts and status out, owner replies in, Home Assistant discovery.

Threads. paho's network loop (``connect_async`` + ``loop_start``) runs every callback and
reconnects with backoff. One sender thread (:class:`~feederd.mqtt.sender.OutboxSender`) takes
the oldest message from the on-disk outbox, publishes it, and removes it only when its PUBACK
arrives; then the next. ``publish_*`` only write to the outbox (see ``feederd.mqtt.outbox`` for the
durability choice) and return.

The receiving half (replies and their results, the alerts switch, "reload model", Home
Assistant's birth message) is :class:`~feederd.mqtt.inbox.Inbox`.

Retained state, so that Home Assistant shows the truth right after it restarts: ``last_alert``
and ``presence`` (both through the outbox, in order with the alert), ``stats``, ``model`` and
``alerts`` (published directly). Discovery configs this device announced before and no longer
announces (discovery disabled, device id or prefix changed) are removed with empty retained
configs; the list of what was announced is kept with the outbox.

Locking rule: paho calls ``on_publish`` while holding its own message lock, so no paho method
is ever called while ``self._cond`` is held.
"""

from __future__ import annotations

import json
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
from feederd.errors import MqttError
from feederd.mqtt.client import describe_failure, log_paho, new_client, refusal_hint
from feederd.mqtt.diagnostics import LastError, hardware_model
from feederd.mqtt.feedback import FeedbackHandler, ReplyMemory
from feederd.mqtt.homeassistant import (
    Device,
    Topics,
    discovery_messages,
    entity_config_topics,
    removal_messages,
)
from feederd.mqtt.inbox import ALERTS_PAUSED, LATEST_ALERT, Commands, Inbox
from feederd.mqtt.messages import (
    alert_payload,
    model_payload,
    stats_payload,
    to_json,
    visit_payload,
)
from feederd.mqtt.outbox import Outbox, OutMessage
from feederd.mqtt.sender import SNAPSHOTS, OutboxSender
from feederd.types import Alert, VisitSummary

# The package's name, as before feederd.mqtt became a package: log lines and
# ``[logging] levels`` keep naming it.
logger = logging.getLogger("feederd.mqtt")

COUNTERS = (
    "published", "publish_refused", "dropped_outbox", "outbox_pending", "outbox_errors",
    "memory_pending", "dropped_memory", "sender_errors",
    "feedback_accepted", "feedback_rejected", "feedback_errors", "alerts_rejected",
    "connects", "reconnects", "connect_failures", "feedback_duplicates", "retained_ignored",
    "commands", "commands_rejected", "alerts_paused", "visits_without_alert",
)
_ANNOUNCED = "ha_discovery_topics"
_SOCKET_FAILURES = ("failed to receive on socket", "failed to send")


class MqttLink(OutboxSender, Inbox):
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
        commands: Commands | None = None,
        stats_interval_s: float = 60.0,
    ) -> None:
        self.topics = Topics.of(cfg)
        self._cfg, self._ha, self._password = cfg, ha, password
        self._handler = feedback
        self._commands = commands
        self._device = Device(sw_version, hardware_model(), stats_interval_s=stats_interval_s)
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
        self._slots = {}
        self._awaiting = {}
        self._labels_of: dict[str, str] = {}  # alerts whose snapshots are being encoded
        self._beat = time.monotonic()
        self._latest: str | None = None  # the newest alert, also when the outbox is full
        self._model: bytes | None = None
        self._counts = Counter()
        self._counts_lock = threading.Lock()
        self._attempt_reported = False
        self._socket_problem: str | None = None
        self._replies = ReplyMemory()
        self._paused = self._outbox.meta(ALERTS_PAUSED) == "1"
        self._retained_warned: set[str] = set()
        self._last_error = LastError()

    @property
    def connected(self) -> bool:
        return self._connected

    def set_labels(self, labels: Sequence[str]) -> None:
        """The labels of the model now serving, to spell species replies its way."""
        self._labels = tuple(labels)

    def set_species(self, species: Sequence[tuple[str, str]]) -> None:
        """(label, display name) of each species that can alert: the options and event types
        announced to Home Assistant (again now, if connected)."""
        self._device = replace(self._device, species=tuple(species))
        client = self._client
        if client is not None and self._connected:
            self._announce(client)

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
        self._last_error.install()
        # A visit in progress when the daemon stopped has ended.
        self._enqueue([OutMessage(self.topics.presence, b"OFF", qos=1, retain=True)])
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
        self._last_error.remove()
        self._outbox.close()
        logger.info("MQTT stopped; %d message(s) left in the outbox", self.counters()
                    ["outbox_pending"])

    def publish_alert(self, alert: Alert, snapshot_jpeg: bytes | None, *,
                      snapshot_follows: bool = False) -> None:
        """Queue the snapshots (latest and per species, retained), presence ON and the last
        alert (retained), and the alert (QoS 1, MQTT 5 reply properties); nothing while
        alerts are paused.

        ``snapshot_follows``: the alert is stored now and its snapshots come later through
        :meth:`publish_snapshot`; they still leave first.
        """
        if self._paused:
            self._count("alerts_paused")
            logger.info("alert %s (%s) not sent: alerts are paused", alert.event_id,
                        alert.label)
            return
        payload = to_json(alert_payload(alert, self.topics.feedback))
        snapshots = self._snapshot_messages(alert.label, snapshot_jpeg)
        messages = [
            OutMessage(self.topics.presence, b"ON", qos=1, retain=True),
            OutMessage(self.topics.last_alert, payload, qos=1, retain=True),
            OutMessage(self.topics.alert, payload, qos=1, response_topic=self.topics.feedback,
                       correlation_data=alert.event_id.encode("utf-8")),
        ]
        self._latest = alert.event_id
        meta = {LATEST_ALERT: alert.event_id}
        if snapshot_follows and not snapshots:
            self._labels_of[alert.event_id] = alert.label
            self._enqueue_before_snapshot(alert.event_id, messages, meta, gap=SNAPSHOTS)
        else:
            self._enqueue([*snapshots, *messages], meta)

    def publish_snapshot(self, event_id: str, snapshot_jpeg: bytes | None) -> None:
        """The snapshots of an alert stored with ``snapshot_follows`` (``None``: none come)."""
        label = self._labels_of.pop(event_id, None)
        if label is not None:  # else the alert was not sent (paused): nor are its snapshots
            self._enqueue_snapshot(event_id, self._snapshot_messages(label, snapshot_jpeg))

    def _snapshot_messages(self, label: str, jpeg: bytes | None) -> list[OutMessage]:
        if not jpeg:
            return []
        return [OutMessage(self.topics.snapshot, jpeg, qos=1, retain=True),
                OutMessage(self.topics.snapshot_of(label), jpeg, qos=1, retain=True)]

    def publish_visit(self, summary: VisitSummary) -> None:
        """Queue the visit summary and presence OFF (retained): the visit is over."""
        if not summary.alerted:
            self._count("visits_without_alert")
        self._enqueue([OutMessage(self.topics.visit, to_json(visit_payload(summary)), qos=1),
                       OutMessage(self.topics.presence, b"OFF", qos=1, retain=True)])

    def publish_model(self, info: Mapping[str, Any]) -> None:
        """Retained; kept and published again on every connect."""
        self._model = to_json(model_payload(info))
        if self._client is not None and self._connected:
            self._client.publish(self.topics.model, self._model, qos=1, retain=True)

    def publish_stats(self, stats: Mapping[str, Any]) -> None:
        """Retained (Home Assistant shows them right after it restarts) but not queued:
        stale stats are worth nothing after an outage."""
        if self._client is not None and self._connected:
            payload = to_json(stats_payload(stats, self.counters(), self._last_error.value()))
            self._client.publish(self.topics.stats, payload, qos=0, retain=True)

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
        for topic in (self.topics.feedback, self.topics.alerts_set, self.topics.model_reload):
            client.subscribe(topic, qos=1)
        if self._ha.enabled:
            client.subscribe(self._ha.status_topic, qos=1)
        client.publish(self.topics.status, "online", qos=1, retain=True)
        self._announce(client)
        if self._model is not None:
            client.publish(self.topics.model, self._model, qos=1, retain=True)
        self._publish_alerts_state(client)
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

    def _announce(self, client: mqtt.Client) -> None:
        """Discovery configs, after removing those announced before and no longer wanted."""
        messages = discovery_messages(self._cfg, self._ha, self._device)
        current = [topic for topic, _, _ in messages]
        stale = set(self._announced_before()) - set(current)
        if not self._ha.enabled:
            stale |= set(entity_config_topics(self._cfg, self._ha))
        for topic, payload, retain in removal_messages(stale) + messages:
            client.publish(topic, payload, qos=1, retain=retain)
        if stale:
            logger.info("MQTT removed %d Home Assistant discovery config(s)", len(stale))
        try:
            self._outbox.put([], {_ANNOUNCED: json.dumps(current)})
        except MqttError as exc:
            logger.warning("%s; discovery configs may need removing by hand later", exc)

    def _announced_before(self) -> list[str]:
        try:
            value = json.loads(self._outbox.meta(_ANNOUNCED) or "[]")
        except ValueError:
            return []
        return [t for t in value if isinstance(t, str)] if isinstance(value, list) else []
