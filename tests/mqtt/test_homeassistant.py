"""Home Assistant discovery messages, as values: topics, keys, and what the button sends."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from feederd.config import HomeAssistantConfig, MqttConfig
from feederd.mqtt.feedback import LATEST, RESULTS, parse_feedback
from feederd.mqtt.homeassistant import (
    BUTTON_PAYLOAD,
    Device,
    Topics,
    discovery_messages,
    entity_config_topics,
    removal_messages,
)

MQTT = MqttConfig(device_id="feeder.garden-1", prefix="feederd")
HA = HomeAssistantConfig()
SPECIES = (("blue_jay", "Blue Jay"), ("great_tit", "Great Tit"), ("great_tit_2", "Great Tit"))
DEVICE = Device("1.2.3", "Raspberry Pi 4 Model B Rev 1.4", SPECIES, stats_interval_s=60)


def configs(mqtt: MqttConfig = MQTT, ha: HomeAssistantConfig = HA,
            device: Device = DEVICE) -> dict[str, dict[str, Any]]:
    """Discovery payloads by component/key."""
    out = {}
    for topic, payload, retain in discovery_messages(mqtt, ha, device):
        assert retain
        _, component, _, key, _ = topic.split("/")
        out[f"{component}/{key}"] = json.loads(payload)
    return out


def test_topics_follow_the_contract() -> None:
    topics = Topics.of(MQTT)
    names = ("status", "alert", "snapshot", "visit", "model", "stats", "feedback", "last_alert",
             "presence", "alerts")
    assert tuple(getattr(topics, name) for name in names) == tuple(
        f"feederd/feeder.garden-1/{name}" for name in names)
    assert (topics.feedback_result, topics.alerts_set, topics.model_reload) == (
        "feederd/feeder.garden-1/feedback/result", "feederd/feeder.garden-1/alerts/set",
        "feederd/feeder.garden-1/model/reload")
    assert topics.snapshot_of("blue_jay") == "feederd/feeder.garden-1/snapshot/blue_jay"
    assert topics.snapshot_of("a/b+#") == "feederd/feeder.garden-1/snapshot/a_b__"


def test_every_entity_is_announced_under_the_discovery_prefix() -> None:
    topics = [topic for topic, _, _ in discovery_messages(MQTT, HA, DEVICE)]
    assert len(topics) == len(set(topics)) == 19
    for topic in topics:
        assert re.fullmatch(r"homeassistant/(sensor|binary_sensor|image|button|event|switch)/"
                            r"[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config", topic), topic


def test_a_custom_discovery_prefix_is_used() -> None:
    topics = [t for t, _, _ in discovery_messages(MQTT, HomeAssistantConfig(prefix="ha"),
                                                  DEVICE)]
    assert topics and all(topic.startswith("ha/") for topic in topics)


def test_disabled_discovery_announces_nothing() -> None:
    assert discovery_messages(MQTT, HomeAssistantConfig(enabled=False), DEVICE) == []


def test_removal_covers_every_config_topic_with_an_empty_retained_message() -> None:
    announced = {topic for topic, _, _ in discovery_messages(MQTT, HA, DEVICE)}
    assert set(entity_config_topics(MQTT, HA)) == announced
    assert set(entity_config_topics(MQTT, HomeAssistantConfig(enabled=False))) == announced
    removals = removal_messages([*announced, *announced])
    assert len(removals) == len(announced)
    assert all(payload == "" and retain for _, payload, retain in removals)


def test_every_entity_has_the_device_block_and_availability_but_connectivity() -> None:
    found = configs(ha=HomeAssistantConfig(configuration_url="http://feeder.lan:8080",
                                           support_url="https://example.org/feederd"))
    for name, config in found.items():
        assert config["device"] == {
            "identifiers": ["feederd_feeder.garden-1"], "name": "Bird feeder feeder.garden-1",
            "model": "feederd", "manufacturer": "feederd", "sw_version": "1.2.3",
            "hw_version": "Raspberry Pi 4 Model B Rev 1.4",
            "configuration_url": "http://feeder.lan:8080"}
        assert config["origin"] == {"name": "feederd", "sw_version": "1.2.3",
                                    "support_url": "https://example.org/feederd"}
        if name == "binary_sensor/connectivity":
            assert "availability_topic" not in config
            assert config["state_topic"] == Topics.of(MQTT).status
            continue
        assert config["availability_topic"] == "feederd/feeder.garden-1/status"
        assert (config["payload_available"], config["payload_not_available"]) == (
            "online", "offline")


def test_unset_urls_are_left_out() -> None:
    config = configs()["sensor/last_species"]
    assert "configuration_url" not in config["device"]
    assert "support_url" not in config["origin"]


def test_unique_ids_are_unique_and_both_entity_id_keys_agree() -> None:
    found = configs()
    assert len({c["unique_id"] for c in found.values()}) == len(found)
    for name, config in found.items():
        component = name.split("/")[0]
        assert re.fullmatch(r"[a-z0-9_]+", config["object_id"])
        assert config["default_entity_id"] == f"{component}.{config['object_id']}"


def test_last_species_is_an_enum_of_display_names_read_from_the_retained_last_alert() -> None:
    sensor = configs()["sensor/last_species"]
    assert sensor["state_topic"] == sensor["json_attributes_topic"] == Topics.of(MQTT).last_alert
    assert "value_json.display_name" in sensor["value_template"]
    assert "this.attributes.options" in sensor["value_template"]  # no error for a stale name
    assert (sensor["device_class"], sensor["options"]) == ("enum", ["Blue Jay", "Great Tit"])
    for attribute in ("label", "scientific_name", "confidence", "event_id", "time"):
        assert f"value_json.{attribute}" in sensor["json_attributes_template"]


def test_without_known_species_the_sensor_is_plain_text_and_there_is_no_bird_event() -> None:
    found = configs(device=Device("1.2.3"))
    assert "device_class" not in found["sensor/last_species"]
    assert "event/bird" not in found
    assert "event/visit" in found


def test_bird_present_follows_the_retained_presence_topic() -> None:
    binary = configs()["binary_sensor/bird_present"]
    assert binary["state_topic"] == Topics.of(MQTT).presence
    assert (binary["payload_on"], binary["payload_off"]) == ("ON", "OFF")
    assert "off_delay" not in binary


def test_the_bird_event_fires_per_alert_with_the_species_as_event_type() -> None:
    event = configs()["event/bird"]
    assert event["state_topic"] == Topics.of(MQTT).alert
    assert event["event_types"] == ["blue_jay", "great_tit", "great_tit_2"]
    assert "'event_type': value_json.label" in event["value_template"]


def test_the_visit_event_fires_per_visit_alert_or_not() -> None:
    event = configs()["event/visit"]
    assert event["state_topic"] == Topics.of(MQTT).visit
    assert event["event_types"] == ["alert", "no_alert"]


def test_the_snapshot_is_an_image_entity_of_jpeg_bytes() -> None:
    image = configs()["image/snapshot"]
    assert (image["image_topic"], image["content_type"]) == (Topics.of(MQTT).snapshot,
                                                             "image/jpeg")


def test_the_button_names_the_alert_the_last_species_sensor_shows() -> None:
    found = configs()
    button = found["button/not_a_bird"]
    assert button["command_topic"] == Topics.of(MQTT).feedback
    sensor_id = found["sensor/last_species"]["default_entity_id"]
    assert f"state_attr('{sensor_id}', 'event_id')" in button["command_template"]
    assert "else 'latest'" in button["command_template"]
    feedback = parse_feedback(button["payload_press"].encode(), None, 4096)
    assert button["payload_press"] == BUTTON_PAYLOAD
    assert (feedback.event_id, feedback.verdict) == (LATEST, "not_a_bird")


def test_the_last_reply_sensor_shows_every_possible_result() -> None:
    sensor = configs()["sensor/last_reply"]
    assert sensor["state_topic"] == Topics.of(MQTT).feedback_result
    assert sensor["options"] == list(RESULTS)


def test_commands_pause_alerts_and_reload_the_model() -> None:
    found = configs()
    switch, button = found["switch/alerts"], found["button/reload_model"]
    topics = Topics.of(MQTT)
    assert (switch["command_topic"], switch["state_topic"]) == (topics.alerts_set, topics.alerts)
    assert button["command_topic"] == topics.model_reload
    assert switch["retain"] is button["retain"] is False


@pytest.mark.parametrize(("key", "field"), [("alerts_rejected", "false_alerts_rejected"),
                                            ("alerts_rejected", "mqtt.alerts_rejected"),
                                            ("visits_without_alert", "mqtt.visits_without_alert"),
                                            ("spool_size", "spool_bytes"),
                                            ("spool_usage", "spool_max_bytes"),
                                            ("fps", "fps"), ("uptime", "uptime_s"),
                                            ("last_error", "last_error")])
def test_the_counters_come_from_the_stats_topic_and_expire(key: str, field: str) -> None:
    sensor = configs()[f"sensor/{key}"]
    assert sensor["state_topic"] == Topics.of(MQTT).stats
    assert f"value_json.{field}" in sensor["value_template"]
    assert sensor["expire_after"] == 180


def test_a_964_species_model_announces_every_species_once() -> None:
    species = tuple((f"species_{i}", f"Species {i}") for i in range(964))
    found = configs(device=Device("1", species=species))
    assert len(found["sensor/last_species"]["options"]) == 964
    assert len(found["event/bird"]["event_types"]) == 964
