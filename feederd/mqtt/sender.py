"""The outbox sender: one thread, one message in flight, removed once its PUBACK arrives.

The sender takes the oldest message from the on-disk outbox, publishes it, and removes it only
when its PUBACK arrives; then the next. One message in flight keeps the order without relying
on how paho orders resends, and on a local network a round trip is a millisecond while alerts
come a few a minute.

Exactly once, in order. A message paho has taken stays in paho's session across reconnects
and is resent by paho (DUP set), so the sender never publishes a row twice in one run; after a
restart the rows still stored are sent again. What remains is QoS 1's own window: a PUBACK lost
to a crash means that one message arrives twice.

Nothing stops the sender. A storage or broker error is logged and counted, and the sender
backs off and tries again. When the outbox cannot store (disk full), messages wait in a small
in-memory queue instead, behind the stored ones, and go out as soon as the broker is connected;
the queue is bounded (the oldest go first, counted) and is written back to the outbox once
the disk takes writes again. What is only in memory dies with the process.

A sender that has died, or has not moved a message for ``sender_stuck_s`` while the broker is
connected, is reported by :meth:`OutboxSender.sender_problem`: the daemon stops feeding the
systemd watchdog then, so systemd restarts it.

Locking rule: paho calls ``on_publish`` while holding its own message lock, so no paho method
is ever called while ``self._cond`` is held.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter, deque
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

MEMORY_MAX_MESSAGES = 200
MEMORY_MAX_BYTES = 8 * 2**20
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
SNAPSHOT_WAIT_S = 2.0  # an alert waits at most this long for its snapshots to be encoded
SNAPSHOTS = 2  # messages per alert snapshot: the latest, and the latest of its species
_MEMORY = -1  # the row id of a message taken from the in-memory queue
_REFUSED = ReasonCode(PacketTypes.PUBACK, "Unspecified error")  # paho would not send it
# Fault injection for the watchdog test: after this many deliveries the sender hangs, as a
# deadlock would, so the test can see the daemon stop feeding systemd's watchdog.
_HANG_AFTER = int(os.environ.get("FEEDERD_FAULT_SENDER_HANG_AFTER", "0"))


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
    _sender: threading.Thread | None
    _memory: deque[OutMessage]
    _memory_busy: bool  # the memory queue's head is in flight
    _beat: float  # monotonic time of the sender's last progress (or of new work arriving)
    _idle: bool  # the sender is waiting with nothing to send
    _spilling: bool  # the producer is writing the memory queue back to the outbox
    _slots: dict[str, int]  # event id -> the first row id left free for its snapshots
    _awaiting: dict[int, float]  # last free row id -> until when the sender waits for it

    # --- the producers' side (the events thread) ---

    def _enqueue(self, messages: Sequence[OutMessage], meta: Mapping[str, str] | None = None,
                 ) -> None:
        if not self._cfg.enabled:
            return
        with self._cond:  # while spilling, the sender takes nothing from memory
            spill = list(self._memory)[1 if self._memory_busy else 0:]
            self._spilling = bool(spill)
        try:
            self._outbox.put([*spill, *messages], meta)
        except MqttError as exc:
            self._count("outbox_errors")
            self._keep_in_memory(messages, exc)
            return
        finally:
            with self._cond:
                self._spilling = False
        with self._cond:
            for _ in spill:  # written back to disk: only the producer adds, at the right
                self._memory.pop()
            self._wake()
        if spill:
            logger.warning("MQTT outbox stores again: %d message(s) moved from memory to disk",
                           len(spill))

    def _enqueue_before_snapshot(self, event_id: str, messages: Sequence[OutMessage],
                                 meta: Mapping[str, str], gap: int) -> None:
        """Store an alert's messages now, leaving ``gap`` row ids before them for its
        snapshots."""
        with self._cond:
            plain = bool(self._memory) or not self._cfg.enabled
        if plain:  # messages wait in memory: keep it simple, in order
            self._enqueue(messages, meta)
            return
        try:
            slot = self._outbox.put_with_gap(messages, meta, gap)
        except MqttError as exc:
            self._count("outbox_errors")
            self._keep_in_memory(messages, exc)
            return
        with self._cond:
            self._slots[event_id] = slot
            self._awaiting[slot + gap - 1] = time.monotonic() + SNAPSHOT_WAIT_S
            self._wake()

    def _enqueue_snapshot(self, event_id: str, snapshots: Sequence[OutMessage]) -> None:
        """Store snapshots in the row ids their alert left free (else as any message)."""
        with self._cond:
            slot = self._slots.pop(event_id, None)
            last = None if slot is None else slot + SNAPSHOTS - 1
            if last is not None and last not in self._awaiting:
                slot = None  # the sender stopped waiting: the alert may be out already
        if snapshots and slot is None:
            self._enqueue(snapshots)
        elif snapshots and slot is not None:
            try:
                self._outbox.put_at(snapshots, slot)
            except MqttError as exc:
                self._count("outbox_errors")
                self._keep_in_memory(snapshots, exc)
        with self._cond:
            if last is not None:
                self._awaiting.pop(last, None)
            self._wake()

    def _keep_in_memory(self, messages: Sequence[OutMessage], exc: MqttError) -> None:
        """The disk refused: queue in memory (bounded, oldest dropped first, counted)."""
        with self._cond:
            first = not self._memory
            for message in messages:
                if message.retain:  # only the newest retained message per topic matters
                    self._forget_retained(message.topic)
                self._memory.append(message)
            dropped = self._trim_memory()
            self._wake()
        if dropped:
            self._count("dropped_memory", dropped)
        if first or dropped:
            logger.error("%s; keeping messages in memory (at most %d) and sending them when "
                         "connected%s", exc, MEMORY_MAX_MESSAGES,
                         f"; dropped the {dropped} oldest" if dropped else "")

    def _forget_retained(self, topic: str) -> None:
        start = 1 if self._memory_busy else 0
        for index in range(len(self._memory) - 1, start - 1, -1):
            if self._memory[index].retain and self._memory[index].topic == topic:
                del self._memory[index]

    def _trim_memory(self) -> int:
        dropped = 0
        start = 1 if self._memory_busy else 0
        while len(self._memory) > start and (
                len(self._memory) > MEMORY_MAX_MESSAGES
                or sum(len(m.payload) for m in self._memory) > MEMORY_MAX_BYTES):
            del self._memory[start]
            dropped += 1
        return dropped

    def _wake(self) -> None:
        """New work (caller holds the lock): a stuck sender's clock starts now, not when it
        went idle."""
        if self._idle:
            self._beat = time.monotonic()
        self._cond.notify_all()

    def _pending(self) -> int:
        return len(self._outbox) + len(self._memory)

    def _work_waiting(self) -> bool:
        return self._connected and (len(self._outbox) > 0
                                    or (bool(self._memory) and not self._spilling))

    # --- the sender thread ---

    def _send_loop(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._stopping:
            try:
                if (queued := self._next_to_send()) is None:
                    return
                self._deliver(queued)
                backoff = BACKOFF_MIN_S
            except Exception as exc:  # storage, broker or a bug: log, back off, try again
                self._count("sender_errors")
                logger.error("MQTT outbox sender: %s; retrying in %.1f s", exc, backoff,
                             exc_info=not isinstance(exc, MqttError))
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, timeout=backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _next_to_send(self) -> Queued | None:
        """Wait until connected with something to send; ``None`` once stopping.

        Stored messages are older than those in memory, so they go first.
        """
        while True:
            with self._cond:
                self._idle = True
                self._cond.wait_for(lambda: self._stopping or self._work_waiting())
                self._idle = False
                if self._stopping:
                    return None
            if (queued := self._outbox.head()) is not None:
                if self._waited_for_snapshot(queued.id - 1):
                    continue  # the snapshot may be the head now
                return queued
            with self._cond:
                if self._memory and not self._spilling:
                    self._memory_busy = True
                    return Queued(_MEMORY, self._memory[0])

    def _waited_for_snapshot(self, slot: int) -> bool:
        """If row ``slot`` is kept free for a snapshot being encoded, wait (briefly) for it."""
        with self._cond:
            deadline = self._awaiting.get(slot)
            if deadline is None:
                return False
            self._cond.wait_for(lambda: slot not in self._awaiting or self._stopping,
                                timeout=max(0.0, deadline - time.monotonic()))
            self._awaiting.pop(slot, None)  # late: the alert goes without waiting longer
            return True

    def _deliver(self, queued: Queued) -> None:
        """Publish one message and forget it once the broker has acknowledged it."""
        flight = _InFlight()
        with self._cond:
            self._inflight = flight
        try:
            self._publish_and_wait(queued.message, flight)
        except (ValueError, TypeError) as exc:  # paho refuses this very message: drop it
            logger.error("MQTT client refused a message on %s (%s); dropped it",
                         queued.message.topic, exc)
            self._count("publish_refused")
            flight.done, flight.reason = True, _REFUSED
        finally:
            with self._cond:
                self._inflight = None
                if flight.done:
                    self._beat = time.monotonic()
                if queued.id == _MEMORY:
                    self._memory_busy = False
                    if flight.done:
                        self._memory.popleft()
                self._cond.notify_all()
        if flight.done:  # else stopping: the row stays for the next start
            if flight.reason is not _REFUSED:
                self._count_delivery(queued.message, flight.reason)
            self._forget(queued)

    def _publish_and_wait(self, message: OutMessage, flight: _InFlight) -> None:
        assert self._client is not None  # the sender starts after the client exists
        info = self._client.publish(message.topic, message.payload, qos=message.qos,
                                    retain=message.retain, properties=self._properties(message))
        with self._cond:
            flight.mid = info.mid
            if info.mid in flight.early:
                flight.reason, flight.done = flight.early[info.mid], True
            self._cond.wait_for(lambda: flight.done or self._stopping)

    def _forget(self, queued: Queued) -> None:
        """Delete a delivered row; a disk that refuses costs a log line, not the sender."""
        if queued.id == _MEMORY:
            return
        if _HANG_AFTER and self._counts["published"] >= _HANG_AFTER:
            threading.Event().wait()
        try:
            self._outbox.remove(queued.id)
        except MqttError as exc:
            self._count("outbox_errors")
            logger.warning("%s", exc)

    def sender_problem(self) -> str | None:
        """Why alerts cannot leave although the broker is connected, or ``None``."""
        with self._cond:
            if not self._connected or self._stopping or self._sender is None:
                return None
            if not self._sender.is_alive():
                return "the MQTT outbox sender thread has died"
            pending, idle_for = self._pending(), time.monotonic() - self._beat
        if pending and idle_for > self._cfg.sender_stuck_s:
            return (f"the MQTT outbox sender has sent nothing for {idle_for:.0f} s with the "
                    f"broker connected and {pending} message(s) waiting")
        return None

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
                or (self._pending() == 0 and self._inflight is None),
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

    def _count(self, name: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] += n

