"""Short-lived clients: ``feederd reply`` sends one owner reply, ``feederd doctor`` probes.

Each makes one connection attempt (no reconnecting) and says in an :class:`MqttError` why it
failed, so that the command can print it and exit.

A reply is only done when the device has answered it: over MQTT 5 the reply names a response
topic of its own (``feedback/response/<client id>``) and the device answers there with the
reply's correlation data; over MQTT 3.1.1 the command watches ``feedback/result`` for the
device's next (live, not retained) result for that event.
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from feederd.config import MqttConfig
from feederd.errors import FeedbackError, MqttError
from feederd.mqtt.client import describe_failure, new_client, publish_properties, refusal_hint
from feederd.mqtt.feedback import LATEST, ReplyResult, Verdict, parse_result, reply_payload
from feederd.mqtt.homeassistant import Topics


class _ConnectWait:
    """The outcome of one connection attempt of a short-lived client."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: str | None = None

    def on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                   reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            self.error = f"the broker refused the connection: {reason}{refusal_hint(reason)}"
        self.done.set()

    def on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.error = describe_failure(sys.exc_info()[1])
        self.done.set()

    def on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                      reason: ReasonCode, properties: Properties | None) -> None:
        if not self.done.is_set():
            self.error = f"the connection closed before the broker accepted it ({reason})"
            self.done.set()


class _Answer:
    """Waits for the device's result for one reply."""

    def __init__(self, event_id: str) -> None:
        self._event_id = event_id
        self.subscribed = threading.Event()
        self.done = threading.Event()
        self.result: ReplyResult | None = None

    def on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                     properties: Properties | None) -> None:
        self.subscribed.set()

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain:  # an earlier reply's result
            return
        try:
            result = parse_result(bytes(message.payload))
        except FeedbackError:
            return
        if self._event_id not in (LATEST, result.event_id) and result.event_id is not None:
            return  # a result for somebody else's reply (MQTT 3.1.1 shares the topic)
        self.result = result
        self.done.set()


def send_reply(cfg: MqttConfig, password: str, event_id: str, verdict: Verdict,
               label: str | None, timeout: float = 10.0) -> ReplyResult:
    """Publish one JSON reply (QoS 1) and return the device's result for it.

    Raises :class:`FeedbackError` for a malformed reply and :class:`MqttError` when the broker
    cannot be reached, refuses us, does not acknowledge, or the device does not answer within
    ``timeout`` (is it running and connected?).
    """
    payload = reply_payload(event_id, verdict, label)
    deadline = time.monotonic() + timeout
    topics = Topics.of(cfg)
    client_id = f"feederd-reply-{os.getpid()}-{secrets.token_hex(4)}"
    v5 = cfg.protocol == "5"
    listen = topics.response(client_id) if v5 else topics.feedback_result
    where = f"{cfg.host}:{cfg.port}"
    answer = _Answer(event_id)
    client = _connected_client(cfg, password, client_id, timeout)
    try:
        client.on_subscribe, client.on_message = answer.on_subscribe, answer.on_message
        client.subscribe(listen, qos=1)
        if not answer.subscribed.wait(max(0.0, deadline - time.monotonic())):
            raise MqttError(f"the broker at {where} did not confirm the subscription to {listen}")
        props = publish_properties(listen, event_id.encode("utf-8")) if v5 else None
        info = client.publish(topics.feedback, payload, qos=1, properties=props)
        _await_puback(info, deadline, where)
        if not answer.done.wait(max(0.0, deadline - time.monotonic())):
            raise MqttError(f"the broker at {where} took the reply, but the device "
                            f"{cfg.device_id} did not answer within {timeout:g} s (is feederd "
                            "running and connected?)")
    finally:
        _close(client)
    assert answer.result is not None
    return answer.result


def probe_broker(cfg: MqttConfig, password: str, timeout: float = 5.0) -> None:
    """Connect, authenticate and leave (``feederd doctor``); :class:`MqttError` says why not."""
    _close(_connected_client(cfg, password, f"feederd-doctor-{os.getpid()}", timeout))


def _connected_client(cfg: MqttConfig, password: str, client_id: str,
                      timeout: float) -> mqtt.Client:
    """A client with one connection attempt behind it: connected, or MqttError."""
    where = f"{cfg.host}:{cfg.port}"
    client = new_client(cfg, password, client_id, reconnect=False)
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
