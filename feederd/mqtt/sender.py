"""The outbox sender: one thread, one message in flight, removed once its PUBACK arrives.

The sender takes the oldest message from the on-disk outbox, publishes it, and removes it only
when its PUBACK arrives; then the next. One message in flight keeps the order without relying
on how paho orders resends, and on a local network a round trip is a millisecond while alerts
come a few a minute.

Exactly once, in order. A message paho has taken stays in paho's session across reconnects
and is resent by paho (DUP set), so the sender never publishes a row twice in one run; after a
restart the rows still stored are sent again. What remains is QoS 1's own window: a PUBACK lost
to a crash means that one message arrives twice.

Locking rule: paho calls ``on_publish`` while holding its own message lock, so no paho method
is ever called while ``self._cond`` is held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from feederd.config import MqttConfig
from feederd.errors import MqttError
from feederd.mqtt.outbox import Outbox, OutMessage, Queued

# The package's name, as before feederd.mqtt became a package: log lines and
# ``[logging] levels`` keep naming it.
logger = logging.getLogger("feederd.mqtt")


@dataclass
class _InFlight:
    """The one outbox message paho has; PUBACKs may beat ``publish()`` returning its mid."""

    mid: int | None = None
    early: dict[int, ReasonCode | None] = field(default_factory=dict)
    reason: ReasonCode | None = None
    done: bool = False


class OutboxSender:
    """The sending half of :class:`~feederd.mqtt.link.MqttLink` (its only subclass).

    The link's ``publish_*`` only write to the outbox (see ``feederd.mqtt.outbox`` for the
    durability choice) and return; this thread does the rest.
    """

    # Set up by MqttLink.__init__.
    _cfg: MqttConfig
    _outbox: Outbox
    _client: mqtt.Client | None
    _cond: threading.Condition
    _connected: bool
    _stopping: bool
    _inflight: _InFlight | None
    _counts: Counter[str]
    _counts_lock: threading.Lock

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

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties) -> None:
        """paho's network thread: a PUBACK, matched to the message in flight."""
        with self._cond:
            flight = self._inflight
            if flight is None:
                return
            if flight.mid == mid:
                flight.reason, flight.done = reason, True
                self._cond.notify_all()
            elif flight.mid is None:
                flight.early[mid] = reason

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1

