"""Home Assistant discovery messages, as values: topics, keys, and what the button sends."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from feederd.config import HomeAssistantConfig, MqttConfig
from feederd.mqtt.feedback import LATEST, parse_feedback
from feederd.mqtt.homeassistant import BUTTON_PAYLOAD, Topics, discovery_messages

MQTT = MqttConfig(device_id="feeder.garden-1", prefix="feederd")
HA = HomeAssistantConfig()


def configs(mqtt: MqttConfig = MQTT, ha: HomeAssistantConfig = HA) -> dict[str, dict[str, Any]]:
    """Discovery payloads by component/key."""
    out = {}
    for topic, payload, retain in discovery_messages(mqtt, ha, "1.2.3"):
        assert retain
        _, component, _, key, _ = topic.split("/")
        out[f"{component}/{key}"] = json.loads(payload)
    return out


def test_topics_follow_the_contract() -> None:
    topics = Topics.of(MQTT)
    assert (topics.status, topics.alert, topics.snapshot, topics.visit, topics.model,
            topics.stats, topics.feedback) == tuple(
        f"feederd/feeder.garden-1/{name}"
        for name in ("status", "alert", "snapshot", "visit", "model", "stats", "feedback"))


def test_every_entity_is_announced_under_the_discovery_prefix() -> None:
    topics = [topic for topic, _, _ in discovery_messages(MQTT, HA, "1.2.3")]
    assert len(topics) == 6
    for topic in topics:
        assert re.fullmatch(r"homeassistant/(sensor|binary_sensor|image|button)/"
                            r"[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config", topic), topic


def test_a_custom_discovery_prefix_is_used() -> None:
    topics = [t for t, _, _ in discovery_messages(MQTT, HomeAssistantConfig(prefix="ha"), "1")]
    assert all(topic.startswith("ha/") for topic in topics)


def test_disabled_discovery_announces_nothing() -> None:
    assert discovery_messages(MQTT, HomeAssistantConfig(enabled=False), "1") == []


def test_every_entity_has_the_device_block_and_availability() -> None:
    for config in configs().values():
        assert config["device"] == {
            "identifiers": ["feederd_feeder.garden-1"], "name": "Bird feeder feeder.garden-1",
            "model": "feederd", "manufacturer": "feederd", "sw_version": "1.2.3"}
        assert config["availability_topic"] == "feederd/feeder.garden-1/status"
        assert (config["payload_available"], config["payload_not_available"]) == (
            "online", "offline")


def test_unique_ids_are_unique_and_entity_ids_are_slugs() -> None:
    found = configs()
    assert len({c["unique_id"] for c in found.values()}) == len(found)
    for name, config in found.items():
        component = name.split("/")[0]
        assert re.fullmatch(rf"{component}\.[a-z0-9_]+", config["default_entity_id"])
        assert "object_id" not in config  # deprecated by Home Assistant


def test_last_species_reads_the_alert_with_attributes() -> None:
    sensor = configs()["sensor/last_species"]
    assert sensor["state_topic"] == sensor["json_attributes_topic"] == Topics.of(MQTT).alert
    assert "value_json.label" in sensor["value_template"]
    for attribute in ("confidence", "event_id", "time"):
        assert f"value_json.{attribute}" in sensor["json_attributes_template"]


def test_bird_present_turns_on_with_an_alert_and_off_after_a_delay() -> None:
    binary = configs()["binary_sensor/bird_present"]
    assert binary["state_topic"] == Topics.of(MQTT).alert
    assert binary["value_template"] == binary["payload_on"] == "ON"
    assert binary["off_delay"] > 0


def test_the_snapshot_is_an_image_entity_of_jpeg_bytes() -> None:
    image = configs()["image/snapshot"]
    assert (image["image_topic"], image["content_type"]) == (Topics.of(MQTT).snapshot,
                                                             "image/jpeg")


def test_the_button_sends_a_reply_that_rejects_the_latest_alert() -> None:
    button = configs()["button/not_a_bird"]
    assert button["command_topic"] == Topics.of(MQTT).feedback
    assert button["payload_press"] == BUTTON_PAYLOAD
    feedback = parse_feedback(BUTTON_PAYLOAD.encode(), None, 4096)
    assert (feedback.event_id, feedback.verdict) == (LATEST, "not_a_bird")


@pytest.mark.parametrize(("key", "field"), [("alerts_rejected", "false_alerts_rejected"),
                                            ("alerts_rejected", "mqtt.alerts_rejected"),
                                            ("spool_size", "spool_bytes")])
def test_the_counters_come_from_the_stats_topic(key: str, field: str) -> None:
    sensor = configs()[f"sensor/{key}"]
    assert sensor["state_topic"] == Topics.of(MQTT).stats
    assert f"value_json.{field}" in sensor["value_template"]
