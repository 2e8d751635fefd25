"""Short-lived clients: ``feederd reply`` sends one owner reply, ``feederd doctor`` probes.

Each makes one connection attempt (no reconnecting) and says in an :class:`MqttError` why it
failed, so that the command can print it and exit.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from feederd.config import MqttConfig
from feederd.errors import MqttError
from feederd.mqtt.client import describe_failure, new_client, refusal_hint
from feederd.mqtt.feedback import Verdict, reply_payload
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
