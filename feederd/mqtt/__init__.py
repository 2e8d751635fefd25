"""MQTT: alerts and status out, owner replies in, Home Assistant discovery. The only paho user.

Only the modules of this package import paho: :mod:`~feederd.mqtt.link` (:class:`MqttLink`,
the daemon's connection), :mod:`~feederd.mqtt.sender` (its outbox sender thread),
:mod:`~feederd.mqtt.reply` (the short-lived clients of ``feederd reply`` and ``feederd
doctor``) and :mod:`~feederd.mqtt.client` (client set-up, TLS, failures in plain words).
The message builders are re-exported from :mod:`feederd.messages` for older imports.
"""

from feederd.homeassistant import Topics
from feederd.messages import (
    alert_payload,
    iso_time,
    model_payload,
    stats_payload,
    to_json,
    visit_payload,
)
from feederd.mqtt.link import COUNTERS, MqttLink
from feederd.mqtt.reply import probe_broker, send_reply

__all__ = [
    "COUNTERS", "MqttLink", "Topics", "alert_payload", "iso_time", "model_payload",
    "probe_broker", "send_reply", "stats_payload", "to_json", "visit_payload",
]
