"""The MQTT topics of one device, and Home Assistant MQTT discovery messages, as plain values.

Nothing here talks to a broker: :func:`discovery_messages` returns ``(topic, payload, retain)``
tuples and ``feederd.mqtt`` publishes them, on every connect and whenever Home Assistant's
birth message says it (re)started; :func:`removal_messages` are the empty retained configs
that make Home Assistant forget entities (discovery disabled, device id changed).

Each config carries ``object_id`` (what Home Assistant up to 2025.9 uses for the entity id)
and ``default_entity_id`` (``<domain>.<object id>``, which replaces it from 2025.10).

What Home Assistant shows must be true right after *it* restarts, so every state entity reads
a retained topic: ``last_alert``, ``presence`` (ON/OFF, driven by the device: ON at the alert,
OFF when the visit ends), ``stats`` (also with ``expire_after``, so stats that stop coming go
unavailable), ``model``, ``alerts`` and ``feedback/result``. The two event entities read the
non-retained ``alert`` and ``visit`` topics: one Home Assistant event per alert and per visit
(Home Assistant ignores retained deliveries for events anyway).

Species: the "Last species" sensor is an ``enum`` of display names and the "Bird" event's
types are labels, both of the species that can alert (``visits.species``, else every label
that is not negative). Home Assistant keeps enum options and event types out of its database,
but they travel with every state change, so a 964-species model is better narrowed to the
local species with ``visits.species``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from feederd.config import HomeAssistantConfig, MqttConfig
from feederd.mqtt.feedback import LATEST, RESULTS, reply_payload

BUTTON_PAYLOAD = reply_payload(LATEST, "not_a_bird")
STATS_EXPIRY_PERIODS = 3  # stats sensors go unavailable after this many missed periods
ALERTS_ON, ALERTS_OFF = "ON", "OFF"
RELOAD_PAYLOAD = "reload"
_NOT_ID_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_NOT_TOPIC_CHARS = re.compile(r"[/#+\s]")


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

    @property
    def last_alert(self) -> str:
        return f"{self.base}/last_alert"

    @property
    def presence(self) -> str:
        return f"{self.base}/presence"

    @property
    def alerts(self) -> str:
        return f"{self.base}/alerts"

    @property
    def feedback_result(self) -> str:
        return f"{self.base}/feedback/result"

    @property
    def alerts_set(self) -> str:
        return f"{self.base}/alerts/set"

    @property
    def model_reload(self) -> str:
        return f"{self.base}/model/reload"

    def snapshot_of(self, label: str) -> str:
        """The retained snapshot of the latest alert of one species."""
        return f"{self.base}/snapshot/{_NOT_TOPIC_CHARS.sub('_', label)}"

    def response(self, client_id: str) -> str:
        """Where ``feederd reply`` (MQTT 5) asks for its answer."""
        return f"{self.base}/feedback/response/{_NOT_TOPIC_CHARS.sub('_', client_id)}"


@dataclass(frozen=True, slots=True)
class Device:
    """What discovery says beyond the config: versions and the species that can alert."""

    sw_version: str
    hw_version: str = ""
    species: tuple[tuple[str, str], ...] = ()  # (label, display name), in model order
    stats_interval_s: float = 60.0


def node_id(cfg: MqttConfig) -> str:
    return "feederd_" + _NOT_ID_CHARS.sub("_", cfg.device_id)


def discovery_messages(cfg: MqttConfig, ha: HomeAssistantConfig, device: Device,
                       ) -> list[tuple[str, str, bool]]:
    """Retained discovery configs for every entity of this feeder; empty when disabled."""
    if not ha.enabled:
        return []
    topics = Topics.of(cfg)
    node = node_id(cfg)
    common = _common(cfg.device_id, ha, topics, device)
    messages = []
    for component, key, name, specific in _entities(topics, node, device):
        object_id = f"{node.lower().replace('-', '_')}_{key}"
        config = {"name": name, "unique_id": f"{node}_{key}", "object_id": object_id,
                  "default_entity_id": f"{component}.{object_id}", **common, **specific}
        if config.pop("always_available", False):
            for unused in ("availability_topic", "payload_available", "payload_not_available"):
                del config[unused]
        messages.append((config_topic(ha, component, node, key),
                         json.dumps(config, ensure_ascii=False), True))
    return messages


def config_topic(ha: HomeAssistantConfig, component: str, node: str, key: str) -> str:
    return f"{ha.prefix.rstrip('/')}/{component}/{node}/{key}/config"


def entity_config_topics(cfg: MqttConfig, ha: HomeAssistantConfig) -> list[str]:
    """Every config topic this version would announce for ``cfg`` (enabled or not)."""
    node = node_id(cfg)
    everything = Device("", species=(("any", "Any"),))
    return [config_topic(ha, component, node, key)
            for component, key, _, _ in _entities(Topics.of(cfg), node, everything)]


def removal_messages(topics: Iterable[str]) -> list[tuple[str, str, bool]]:
    """Empty retained configs: Home Assistant removes those entities (and clears the topic)."""
    return [(topic, "", True) for topic in sorted(set(topics))]


def _common(device_id: str, ha: HomeAssistantConfig, topics: Topics, device: Device,
            ) -> dict[str, Any]:
    block: dict[str, Any] = {
        "identifiers": [f"feederd_{device_id}"],
        "name": f"Bird feeder {device_id}",
        "model": "feederd",
        "manufacturer": "feederd",
        "sw_version": device.sw_version,
    }
    if device.hw_version:
        block["hw_version"] = device.hw_version
    if ha.configuration_url:
        block["configuration_url"] = ha.configuration_url
    origin: dict[str, Any] = {"name": "feederd", "sw_version": device.sw_version}
    if ha.support_url:
        origin["support_url"] = ha.support_url
    return {
        "device": block,
        "origin": origin,
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
    }


def _entities(topics: Topics, node: str, device: Device,
              ) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(component, key, name, component-specific config) of each entity."""
    return [*_bird_entities(topics, node, device), *_command_entities(topics),
            *_stats_entities(topics, device), *_diagnostic_entities(topics)]


def _bird_entities(topics: Topics, node: str, device: Device,
                   ) -> list[tuple[str, str, str, dict[str, Any]]]:
    labels = [label for label, _ in device.species]
    names = list(dict.fromkeys(name for _, name in device.species))
    species: dict[str, Any] = {"device_class": "enum", "options": names} if names else {}
    entities: list[tuple[str, str, str, dict[str, Any]]] = [
        ("sensor", "last_species", "Last species", {
            "state_topic": topics.last_alert,
            "value_template": _SHOWN_NAME if names else "{{ value_json.display_name }}",
            **species,
            "json_attributes_topic": topics.last_alert,
            "json_attributes_template": _json_of(
                "label", "scientific_name", "confidence", "event_id", "time", "frames",
                "model_version"),
            "icon": "mdi:bird",
        }),
        ("binary_sensor", "bird_present", "Bird present", {
            "state_topic": topics.presence,
            "payload_on": "ON",
            "payload_off": "OFF",
            "device_class": "occupancy",
        }),
        ("image", "snapshot", "Latest snapshot", {
            "image_topic": topics.snapshot,
            "content_type": "image/jpeg",
        }),
        ("button", "not_a_bird", "Not a bird", {
            "command_topic": topics.feedback,
            "payload_press": BUTTON_PAYLOAD,
            "command_template": _button_template(f"sensor.{node.lower().replace('-', '_')}"
                                                 "_last_species"),
            "retain": False,
            "icon": "mdi:close-octagon",
        }),
        ("event", "visit", "Visit", {
            "state_topic": topics.visit,
            "event_types": ["alert", "no_alert"],
            "value_template": "{{ {'event_type': 'alert' if value_json.alerted else "
                              "'no_alert', 'label': value_json.label, 'event_id': "
                              "value_json.event_id, 'duration_s': value_json.duration_s, "
                              "'frames_seen': value_json.frames_seen} | to_json }}",
            "icon": "mdi:motion-sensor",
        }),
        ("sensor", "last_reply", "Last reply", {
            "state_topic": topics.feedback_result,
            "value_template": "{{ value_json.result }}",
            "device_class": "enum",
            "options": list(RESULTS),
            "json_attributes_topic": topics.feedback_result,
            "json_attributes_template": _json_of("event_id", "verdict", "label", "detail",
                                                 "time"),
            "icon": "mdi:message-reply-text",
        }),
    ]
    if labels:
        entities.insert(1, ("event", "bird", "Bird", {
            "state_topic": topics.alert,
            "event_types": labels,
            "value_template": "{{ {'event_type': value_json.label, 'display_name': "
                              "value_json.display_name, 'scientific_name': "
                              "value_json.scientific_name, 'event_id': value_json.event_id, "
                              "'confidence': value_json.confidence} | to_json }}",
            "icon": "mdi:bird",
        }))
    return entities


# A retained last alert whose species is no longer an option (``visits.species`` narrowed, a
# new model) would make Home Assistant log an error at every start: show it as unknown instead.
_SHOWN_NAME = ("{% set n = value_json.display_name %}"
               "{{ n if n in (this.attributes.options | default([])) else None }}")


def _button_template(sensor_entity_id: str) -> str:
    """The reply names the alert the "Last species" sensor shows, i.e. the one the owner saw
    (``latest`` only when that sensor holds none, e.g. it was renamed)."""
    return (f"{{% set e = state_attr('{sensor_entity_id}', 'event_id') %}}"
            "{{ {'event_id': e if e else 'latest', 'verdict': 'not_a_bird'} | to_json }}")


def _command_entities(topics: Topics) -> list[tuple[str, str, str, dict[str, Any]]]:
    return [
        ("switch", "alerts", "Alerts", {
            "command_topic": topics.alerts_set,
            "state_topic": topics.alerts,
            "payload_on": ALERTS_ON,
            "payload_off": ALERTS_OFF,
            "retain": False,
            "icon": "mdi:bell-ring",
        }),
        ("button", "reload_model", "Reload model", {
            "command_topic": topics.model_reload,
            "payload_press": RELOAD_PAYLOAD,
            "retain": False,
            "entity_category": "config",
            "icon": "mdi:reload",
        }),
    ]


def _stats_entities(topics: Topics, device: Device) -> list[tuple[str, str, str, dict[str, Any]]]:
    stats = {"state_topic": topics.stats,
             "expire_after": math.ceil(STATS_EXPIRY_PERIODS * device.stats_interval_s)}
    diagnostic = {**stats, "entity_category": "diagnostic"}
    return [
        ("sensor", "alerts_rejected", "False alerts rejected", {
            **stats,
            "value_template": "{{ value_json.false_alerts_rejected"
                              " | default(value_json.mqtt.alerts_rejected) }}",
            "state_class": "total_increasing",
            "icon": "mdi:thumb-down",
        }),
        ("sensor", "visits_without_alert", "Visits without alert", {
            **stats,
            "value_template": "{{ value_json.mqtt.visits_without_alert | default(0) }}",
            "state_class": "total_increasing",
            "icon": "mdi:squirrel",
        }),
        ("sensor", "false_alert_rate", "False-alert rate", {
            **diagnostic,
            "value_template": "{% set a = value_json.alerts | default(0) %}"
                              "{{ (100 * (value_json.false_alerts_rejected | default(0)) / a)"
                              " | round(1) if a else None }}",
            "unit_of_measurement": "%",
            "state_class": "measurement",
            "json_attributes_template": _json_of("model_version", "alerts",
                                                 "false_alerts_rejected"),
            "json_attributes_topic": topics.stats,
        }),
        ("sensor", "fps", "Frame rate", {
            **diagnostic,
            "value_template": "{{ value_json.fps | default(None) }}",
            "unit_of_measurement": "fps",
            "state_class": "measurement",
        }),
        ("sensor", "uptime", "Uptime", {
            **diagnostic,
            "value_template": "{{ value_json.uptime_s | default(None) }}",
            "unit_of_measurement": "s",
            "device_class": "duration",
        }),
        ("sensor", "spool_size", "Spool size", {
            **diagnostic,
            "value_template": "{{ value_json.spool_bytes | default(None) }}",
            "json_attributes_topic": topics.stats,
            "json_attributes_template": "{{ {'samples': value_json.spool_samples | default(0),"
                                        " 'max_bytes': value_json.spool_max_bytes"
                                        " | default(None)} | to_json }}",
            "unit_of_measurement": "B",
            "device_class": "data_size",
            "state_class": "measurement",
        }),
        ("sensor", "spool_usage", "Spool usage", {
            **diagnostic,
            "value_template": "{% set m = value_json.spool_max_bytes | default(0) %}"
                              "{{ (100 * (value_json.spool_bytes | default(0)) / m) | round(1)"
                              " if m else None }}",
            "unit_of_measurement": "%",
            "state_class": "measurement",
        }),
        ("sensor", "last_error", "Last error", {
            **diagnostic,
            "value_template": "{% set e = value_json.last_error | default(None) %}"
                              "{{ e.message[:250] if e else 'none' }}",
            "json_attributes_topic": topics.stats,
            "json_attributes_template": "{{ (value_json.last_error | default(None)"
                                        " or {}) | to_json }}",
            "icon": "mdi:alert-circle-outline",
        }),
    ]


def _diagnostic_entities(topics: Topics) -> list[tuple[str, str, str, dict[str, Any]]]:
    return [
        ("binary_sensor", "connectivity", "Connectivity", {
            "state_topic": topics.status,
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "always_available": True,  # shows "off", not "unavailable", while it is away
        }),
        ("sensor", "model_version", "Model version", {
            "state_topic": topics.model,
            "value_template": "{{ value_json.version }}",
            "json_attributes_topic": topics.model,
            "json_attributes_template": "{{ {'parent_version': value_json.parent_version"
                                        " | default(None), 'evaluated_false_alert_rate':"
                                        " (value_json.metrics | default({})).false_alert_rate"
                                        " | default(None)} | to_json }}",
            "entity_category": "diagnostic",
            "icon": "mdi:brain",
        }),
    ]


def _json_of(*keys: str) -> str:
    """A template making a JSON object of these keys of the payload (missing ones: null)."""
    pairs = ", ".join(f"'{key}': value_json.{key} | default(None)" for key in keys)
    return "{{ {" + pairs + "} | to_json }}"
