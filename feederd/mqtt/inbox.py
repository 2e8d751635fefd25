"""The receiving half of the daemon's MQTT link: owner replies, commands, Home Assistant's birth.

Runs on paho's network thread. Every reply gets a result (see ``feederd.mqtt.feedback``):
published retained on ``feedback/result`` (Home Assistant's "Last reply" sensor) and, when an
MQTT 5 reply carries a response topic, sent there with the reply's correlation data, so that
``feederd reply`` reports what the device decided.

Retained deliveries on the feedback and command topics are ignored (logged once): a reply is
a fact about one visit at one moment, and a retained one would otherwise be replayed on every
reconnect, rejecting whichever alert is newest or pausing alerts again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from feederd.config import HomeAssistantConfig, MqttConfig
from feederd.errors import FeedbackError, MqttError, UnknownEventError
from feederd.mqtt.client import publish_properties
from feederd.mqtt.feedback import (
    LATEST,
    Feedback,
    FeedbackHandler,
    ReplyMemory,
    ReplyResult,
    canonical_label,
    parse_feedback,
)
from feederd.mqtt.homeassistant import ALERTS_OFF, ALERTS_ON, Topics
from feederd.mqtt.messages import to_json
from feederd.mqtt.outbox import Outbox

logger = logging.getLogger("feederd.mqtt")

LATEST_ALERT = "latest_alert"
ALERTS_PAUSED = "alerts_paused"
_MAX_RESPONSE_TOPIC = 256


class Commands(Protocol):
    """What the daemon does on a command topic."""

    def request_reload(self) -> None: ...


class Inbox:
    """Mixed into :class:`~feederd.mqtt.link.MqttLink` (set up by its ``__init__``)."""

    topics: Topics
    _cfg: MqttConfig
    _ha: HomeAssistantConfig
    _handler: FeedbackHandler
    _commands: Commands | None
    _labels: tuple[str, ...]
    _outbox: Outbox
    _latest: str | None
    _replies: ReplyMemory
    _paused: bool
    _retained_warned: set[str]
    _count: Callable[[str], None]
    _announce: Callable[[mqtt.Client], None]

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        if topic == self._ha.status_topic:
            if message.payload.strip() == b"online":
                logger.info("Home Assistant came online; announcing the entities again")
                self._announce(client)
        elif message.retain:
            self._ignore_retained(topic)
        elif topic == self.topics.feedback:
            self._take_feedback(client, message)
        elif topic == self.topics.alerts_set:
            self._take_alerts_switch(client, bytes(message.payload))
        elif topic == self.topics.model_reload:
            self._take_reload()

    def _ignore_retained(self, topic: str) -> None:
        self._count("retained_ignored")
        if topic in self._retained_warned:
            return
        self._retained_warned.add(topic)
        logger.warning("MQTT ignored a retained message on %s: replies and commands must not "
                       "be retained (clear it with: mosquitto_pub -r -n -t '%s')", topic, topic)

    # --- replies --------------------------------------------------------------------------------

    def _take_feedback(self, client: mqtt.Client, message: mqtt.MQTTMessage) -> None:
        """Parse, resolve and hand on one reply, then answer it; never raises."""
        correlation = getattr(message.properties, "CorrelationData", None)
        correlation = None if correlation is None else bytes(correlation)
        feedback: Feedback | None = None
        try:
            feedback = parse_feedback(bytes(message.payload), correlation,
                                      self._cfg.feedback_max_bytes)
            feedback = self._resolve(feedback)
            result = self._apply(feedback)
        except FeedbackError as exc:
            self._count("feedback_rejected")
            logger.warning("MQTT feedback dropped: %s", exc)
            result = ReplyResult.refused(exc, feedback)
        except Exception:
            self._count("feedback_errors")
            logger.exception("MQTT feedback handler failed; the reply is dropped")
            result = ReplyResult("error", "the device failed to handle the reply (see its log)",
                                 *_described(feedback))
        self._answer(client, result, getattr(message.properties, "ResponseTopic", None),
                     correlation)

    def _apply(self, feedback: Feedback) -> ReplyResult:
        """Hand an accepted reply to the handler once; a repeat is a ``duplicate``."""
        if self._replies.is_repeat(feedback):
            self._count("feedback_duplicates")
            logger.info("MQTT feedback repeated: %s %s (counted once)", feedback.event_id,
                        feedback.verdict)
            return ReplyResult("duplicate", "this event already has this verdict",
                               *_described(feedback))
        self._handler.handle(feedback)
        self._replies.remember(feedback)
        self._count("feedback_accepted")
        if feedback.verdict == "not_a_bird":
            self._count("alerts_rejected")
        logger.info("MQTT feedback accepted: %s %s%s", feedback.event_id, feedback.verdict,
                    f" {feedback.label}" if feedback.label else "")
        return ReplyResult("accepted", "the reply was applied", *_described(feedback))

    def _resolve(self, feedback: Feedback) -> Feedback:
        """Replace ``latest`` by the newest alert's id; spell a species the model's way."""
        if feedback.event_id == LATEST:
            latest = self._latest or self._outbox.meta(LATEST_ALERT)
            if latest is None:
                raise UnknownEventError("'latest' names no alert: none has been raised yet")
            feedback = replace(feedback, event_id=latest)
        if feedback.label is not None:
            feedback = replace(feedback, label=canonical_label(feedback.label, self._labels))
        return feedback

    def _answer(self, client: mqtt.Client, result: ReplyResult, response_topic: str | None,
                correlation: bytes | None) -> None:
        """Retained on ``feedback/result``; also to an MQTT 5 replier's response topic."""
        payload = to_json(result.payload(time.time()))
        client.publish(self.topics.feedback_result, payload, qos=1, retain=True)
        if not response_topic:
            return
        if not self._response_allowed(response_topic):
            logger.warning("MQTT reply asked for its answer on %r; not answering there",
                           response_topic[:80])
            return
        client.publish(response_topic, payload, qos=1,
                       properties=publish_properties(None, correlation))

    def _response_allowed(self, topic: str) -> bool:
        """No wildcards, and never a topic of this device or of discovery but its answers."""
        if len(topic) > _MAX_RESPONSE_TOPIC or "+" in topic or "#" in topic:
            return False
        if topic.startswith(self.topics.base + "/"):
            return topic.startswith(self.topics.base + "/feedback/response/")
        return not topic.startswith(self._ha.prefix.rstrip("/") + "/")

    # --- commands -------------------------------------------------------------------------------

    def _take_alerts_switch(self, client: mqtt.Client, payload: bytes) -> None:
        wanted = payload.strip().decode("utf-8", "replace").upper()
        if wanted not in (ALERTS_ON, ALERTS_OFF):
            self._count("commands_rejected")
            logger.warning("MQTT %s expects %s or %s, not %r", self.topics.alerts_set,
                           ALERTS_ON, ALERTS_OFF, wanted[:40])
            return
        self._count("commands")
        self._paused = wanted == ALERTS_OFF
        try:
            self._outbox.put([], {ALERTS_PAUSED: "1" if self._paused else "0"})
        except MqttError as exc:
            logger.error("%s; alerts stay %s until the next restart only", exc,
                         "paused" if self._paused else "on")
        logger.info("MQTT alerts %s by command", "paused" if self._paused else "resumed")
        self._publish_alerts_state(client)

    def _publish_alerts_state(self, client: mqtt.Client) -> None:
        client.publish(self.topics.alerts, ALERTS_OFF if self._paused else ALERTS_ON, qos=1,
                       retain=True)

    def _take_reload(self) -> None:
        self._count("commands")
        if self._commands is None:
            logger.warning("MQTT 'reload model' received, but nothing here can reload")
            return
        logger.info("MQTT 'reload model' received; reloading between frames")
        self._commands.request_reload()


def _described(feedback: Feedback | None) -> tuple[str | None, str | None, str | None]:
    if feedback is None:
        return None, None, None
    return feedback.event_id, feedback.verdict, feedback.label
