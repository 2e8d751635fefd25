"""The MQTT topics of one device, and Home Assistant MQTT discovery messages, as plain values.

Nothing here talks to a broker: :func:`discovery_messages` returns ``(topic, payload, retain)``
tuples and ``feederd.mqtt`` publishes them, on every connect and whenever Home Assistant's
birth message says it (re)started. Keys follow Home Assistant's MQTT discovery documentation:
``default_entity_id`` (``<domain>.<object id>``) replaces the deprecated ``object_id``.

Entities of one feeder (one device block, all unavailable while ``status`` says offline):

- *Last species* (sensor): ``label`` of the alert topic; confidence, event id, time, frames
  and model version as attributes.
- *Bird present* (binary sensor): ON when an alert arrives, OFF ``BIRD_PRESENT_S`` seconds
  later (``off_delay``). A binary sensor reads one state topic; the visit topic only says
  that a visit ended, also for visits that never alerted, so the alert plus a delay is the
  honest "a bird was here just now".
- *Latest snapshot* (image): the retained JPEG of the snapshot topic.
- *Not a bird* (button): publishes ``BUTTON_PAYLOAD`` on the feedback topic, which rejects
  the latest alert (event id ``latest``, see ``feederd.mqtt.feedback``).
- *False alerts rejected* and *Spool size* (sensors): read from the stats topic, whose JSON
  carries the daemon's ``false_alerts_rejected``, ``spool_bytes`` and ``spool_samples``, and
  the link's own counters under ``mqtt`` (``mqtt.alerts_rejected`` stands in when the daemon
  gives no ``false_alerts_rejected``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from feederd.config import HomeAssistantConfig, MqttConfig
from feederd.mqtt.feedback import LATEST, reply_payload

BIRD_PRESENT_S = 60
BUTTON_PAYLOAD = reply_payload(LATEST, "not_a_bird")
_NOT_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


@dataclass(frozen=True, slots=True)
class Topics:
    """``<prefix>/<device_id>/...``: the topics of the MQTT contract (DESIGN.md)."""

    base: str

    @classmethod
    def of(cls, cfg: MqttConfig) -> Topics:
        return cls(f"{cfg.prefix.rstrip('/')}/{cfg.device_id}")

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def alert(self) -> str:
        return f"{self.base}/alert"

    @property
    def snapshot(self) -> str:
        return f"{self.base}/snapshot"

    @property
    def visit(self) -> str:
        return f"{self.base}/visit"

    @property
    def model(self) -> str:
        return f"{self.base}/model"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    @property
    def feedback(self) -> str:
        return f"{self.base}/feedback"


def discovery_messages(
    cfg: MqttConfig, ha: HomeAssistantConfig, sw_version: str
) -> list[tuple[str, str, bool]]:
    """Retained discovery configs for every entity of this feeder; empty when disabled."""
    if not ha.enabled:
        return []
    topics = Topics.of(cfg)
    node = "feederd_" + _NOT_ID_CHARS.sub("_", cfg.device_id)
    common = _common(cfg.device_id, topics, sw_version)
    messages = []
    for component, key, name, specific in _entities(topics):
        config = {
            "name": name,
            "unique_id": f"{node}_{key}",
            "default_entity_id": f"{component}.{node.lower().replace('-', '_')}_{key}",
            **common,
            **specific,
        }
        topic = f"{ha.prefix.rstrip('/')}/{component}/{node}/{key}/config"
        messages.append((topic, json.dumps(config, ensure_ascii=False), True))
    return messages


def _common(device_id: str, topics: Topics, sw_version: str) -> dict[str, Any]:
    return {
        "device": {
            "identifiers": [f"feederd_{device_id}"],
            "name": f"Bird feeder {device_id}",
            "model": "feederd",
            "manufacturer": "feederd",
            "sw_version": sw_version,
        },
        "origin": {"name": "feederd", "sw_version": sw_version},
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
    }


def _entities(topics: Topics) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(component, key, name, component-specific config) of each entity."""
    attributes = (
        "{{ {'confidence': value_json.confidence, 'event_id': value_json.event_id, "
        "'time': value_json.time, 'frames': value_json.frames, "
        "'model_version': value_json.model_version} | tojson }}"
    )
    return [
        ("sensor", "last_species", "Last species", {
            "state_topic": topics.alert,
            "value_template": "{{ value_json.label }}",
            "json_attributes_topic": topics.alert,
            "json_attributes_template": attributes,
            "icon": "mdi:bird",
        }),
        ("binary_sensor", "bird_present", "Bird present", {
            "state_topic": topics.alert,
            "value_template": "ON",
            "payload_on": "ON",
            "payload_off": "OFF",
            "off_delay": BIRD_PRESENT_S,
            "device_class": "occupancy",
        }),
        ("image", "snapshot", "Latest snapshot", {
            "image_topic": topics.snapshot,
            "content_type": "image/jpeg",
        }),
        ("button", "not_a_bird", "Not a bird", {
            "command_topic": topics.feedback,
            "payload_press": BUTTON_PAYLOAD,
            "retain": False,
            "icon": "mdi:close-octagon",
        }),
        ("sensor", "alerts_rejected", "False alerts rejected", {
            "state_topic": topics.stats,
            "value_template": "{{ value_json.false_alerts_rejected"
                              " | default(value_json.mqtt.alerts_rejected) }}",
            "state_class": "total_increasing",
            "icon": "mdi:thumb-down",
        }),
        ("sensor", "spool_size", "Spool size", {
            "state_topic": topics.stats,
            "value_template": "{{ value_json.spool_bytes }}",
            "json_attributes_topic": topics.stats,
            "json_attributes_template": "{{ {'samples': value_json.spool_samples} | tojson }}",
            "unit_of_measurement": "B",
            "device_class": "data_size",
            "state_class": "measurement",
            "entity_category": "diagnostic",
        }),
    ]
