"""MQTT: alerts and status out, owner replies in, Home Assistant discovery. The only paho user.

The stage is one package with two halves:

- pure parts, free of paho, testable as values: :mod:`~feederd.mqtt.messages` (payload
  builders), :mod:`~feederd.mqtt.homeassistant` (discovery), :mod:`~feederd.mqtt.feedback`
  (reply parsing) and :mod:`~feederd.mqtt.outbox` (the durable queue of unsent alerts);
- the paho users: :mod:`~feederd.mqtt.link` (:class:`MqttLink`, the daemon's connection),
  :mod:`~feederd.mqtt.sender` (its outbox sender thread), :mod:`~feederd.mqtt.reply` (the
  short-lived clients of ``feederd reply`` and ``feederd doctor``) and
  :mod:`~feederd.mqtt.client` (client set-up, TLS, failures in plain words).

Names are resolved lazily so that importing a pure module never imports paho.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "COUNTERS": "feederd.mqtt.link",
    "MqttLink": "feederd.mqtt.link",
    "probe_broker": "feederd.mqtt.reply",
    "send_reply": "feederd.mqtt.reply",
    "Topics": "feederd.mqtt.homeassistant",
    "alert_payload": "feederd.mqtt.messages",
    "iso_time": "feederd.mqtt.messages",
    "model_payload": "feederd.mqtt.messages",
    "stats_payload": "feederd.mqtt.messages",
    "to_json": "feederd.mqtt.messages",
    "visit_payload": "feederd.mqtt.messages",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'feederd.mqtt' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
