"""feederd as Home Assistant sees it: a real Home Assistant core, a real broker, the real daemon.

One Home Assistant start and one restart for the whole module (it takes ~10 s to start once
its venv is built by tools/ha-venv.sh). The daemon replays the demo clip at 4x, so alerts and
visits come every few seconds; the tests pause alerts through Home Assistant's switch to get
a state that stands still, then check it before and after Home Assistant restarts.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from brokers import Mosquitto, Probe, find_mosquitto, wait_until
from daemonproc import DaemonProcess
from hass import HomeAssistant, Watcher, ha_venv, seconds_since, wait_state
from test_daemon_mqtt import daemon_config, fast_clip  # noqa: F401  (a fixture)

from feederd.assets import demo_model_path
from feederd.bundle import read_bundle
from feederd.config import HomeAssistantConfig, MqttConfig
from feederd.mqtt.homeassistant import Device, discovery_messages

# The first test also starts Home Assistant (~70 s on a cold, loaded 2-core machine).
pytestmark = [pytest.mark.homeassistant, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
DEVICE = "feeder1"
TOPIC = f"feederd/{DEVICE}"
NODE = f"feederd_{DEVICE}"
ENTITIES = {
    "sensor": ["last_species", "last_reply", "alerts_rejected", "visits_without_alert",
               "false_alert_rate", "fps", "uptime", "spool_size", "spool_usage", "last_error",
               "model_version"],
    "binary_sensor": ["bird_present", "connectivity"],
    "event": ["bird", "visit"],
    "image": ["snapshot"],
    "button": ["not_a_bird", "reload_model"],
    "switch": ["alerts"],
}
ALL = [f"{domain}.{NODE}_{key}" for domain, keys in ENTITIES.items() for key in keys]
FEEDERD_WORDS = ("feederd", NODE, "value_json", "homeassistant.helpers.template")


@dataclass
class Scene:
    ha: HomeAssistant
    broker: Mosquitto
    daemon: DaemonProcess
    probe: Probe
    watcher: Watcher
    timings: dict[str, float]

    def state(self, entity: str) -> dict[str, Any]:
        return self.ha.states()[entity]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory, fast_clip: Path,  # noqa: F811
          ) -> Iterator[Scene]:
    venv = ha_venv()
    root = tmp_path_factory.mktemp("ha")
    find_mosquitto()
    broker = Mosquitto(root / "broker").start()
    ha = HomeAssistant(venv, root / "config", documented_automations())
    timings: dict[str, float] = {}
    daemon = probe = watcher = None
    try:
        started = time.monotonic()
        ha.start()
        timings["first_start_s"] = seconds_since(started)
        ha.onboard()
        ha.add_mqtt(broker.host, broker.port)
        watcher = Watcher(ha, NODE)
        probe = Probe(broker, f"{TOPIC}/alert", f"{TOPIC}/visit")
        daemon = DaemonProcess(daemon_config(root, fast_clip, broker.port))
        yield Scene(ha, broker, daemon, probe, watcher, timings)
    finally:
        for part in (watcher, probe):
            if part is not None:
                part.close()
        if daemon is not None:
            daemon.stop()
        ha.stop()
        broker.kill()
        print(f"Home Assistant timings: {timings}")


def documented_automations() -> str:
    """The YAML of docs/home-assistant.md's phone recipe, as the owner would paste it."""
    text = (REPO / "docs" / "home-assistant.md").read_text()
    [block] = re.findall(r"```yaml\n(.*?)```", text, re.S)
    return block


def alert_ids(scene: Scene) -> list[str]:
    return [json.loads(m.payload)["event_id"] for m in scene.probe.on(f"{TOPIC}/alert")]


def fired(scene: Scene, key: str) -> list[str]:
    """The event ids carried by the Home Assistant events of one event entity, in order."""
    return [e["attributes"].get("event_id") for e in scene.watcher.of(f"event.{NODE}_{key}")
            if e["new"] not in (None, "unknown", "unavailable")]


@pytest.fixture(scope="module")
def paused(scene: Scene) -> dict[str, Any]:
    """Two alerts in Home Assistant, then alerts paused from Home Assistant: the last alert."""
    wait_until(lambda: len(fired(scene, "bird")) >= 2, 90, "two bird events in Home Assistant")
    scene.ha.call("switch", "turn_off", f"switch.{NODE}_alerts")
    scene.daemon.wait_log(r"alerts paused by command")
    time.sleep(2)  # an alert the daemon queued just before pausing
    last = json.loads(scene.probe.on(f"{TOPIC}/alert")[-1].payload)
    wait_state(scene.ha, f"sensor.{NODE}_last_species",
               lambda s: s["attributes"].get("event_id") == last["event_id"])
    return dict(last)


def test_every_entity_exists_with_the_last_alert_shown_by_its_display_name(
        scene: Scene, paused: dict[str, Any]) -> None:
    states = scene.ha.states()
    assert sorted(e for e in states if NODE in e) == sorted(ALL)
    sensor = states[f"sensor.{NODE}_last_species"]
    bundle = read_bundle(demo_model_path())
    assert sensor["state"] == bundle.display_name(paused["label"]) == paused["display_name"]
    assert sensor["attributes"]["label"] == paused["label"]
    assert sensor["attributes"]["options"] == [
        bundle.display_name(label) for label in bundle.labels if not bundle.is_negative(label)]
    assert states[f"switch.{NODE}_alerts"]["state"] == "off"
    assert states[f"binary_sensor.{NODE}_connectivity"]["state"] == "on"
    assert states[f"sensor.{NODE}_model_version"]["state"] == bundle.version
    assert states[f"sensor.{NODE}_last_error"]["state"] == "none"
    assert float(states[f"sensor.{NODE}_fps"]["state"]) > 0


def test_the_bird_event_fires_once_per_alert_and_the_visit_event_once_per_visit(
        scene: Scene, paused: dict[str, Any]) -> None:
    wait_until(lambda: fired(scene, "bird") == alert_ids(scene), 15,
               "one bird event per alert")
    sent_visits = scene.probe.wait_for(f"{TOPIC}/visit", 2, 60)
    sent = [json.loads(m.payload)["event_id"] for m in sent_visits]
    wait_until(lambda: fired(scene, "visit")[:len(sent)] == sent, 15,
               "one visit event per visit")
    visits = fired(scene, "visit")
    assert len(visits) == len(set(visits)) >= 2


def test_the_button_rejects_the_alert_shown_once_and_answers_in_home_assistant(
        scene: Scene, paused: dict[str, Any]) -> None:
    shown = scene.state(f"sensor.{NODE}_last_species")["attributes"]["event_id"]
    reply = f"sensor.{NODE}_last_reply"
    for expected in ("accepted", "duplicate"):
        scene.ha.call("button", "press", f"button.{NODE}_not_a_bird")
        state = wait_state(scene.ha, reply, lambda s, e=expected: s["state"] == e)
        assert state["attributes"]["event_id"] == shown
    assert scene.daemon.log.count(f"MQTT feedback accepted: {shown} not_a_bird") == 1
    wait_state(scene.ha, f"sensor.{NODE}_alerts_rejected", lambda s: s["state"] == "1")


def test_the_reload_model_button_makes_the_daemon_load_its_model_again(scene: Scene) -> None:
    before = scene.daemon.log.count("now classifying with model")
    scene.ha.call("button", "press", f"button.{NODE}_reload_model")
    wait_until(lambda: scene.daemon.log.count("now classifying with model") > before, 60,
               "the daemon to reload its model")
    assert scene.daemon.log.count("now classifying with model") == before + 1  # once per press


def test_the_documented_phone_action_rejects_the_event_it_names(
        scene: Scene, paused: dict[str, Any]) -> None:
    first = alert_ids(scene)[0]
    assert first != paused["event_id"]
    scene.ha.request("POST", "/api/events/mobile_app_notification_action",
                     {"action": f"FEEDER_NOT_A_BIRD_{first}"})
    state = wait_state(scene.ha, f"sensor.{NODE}_last_reply",
                       lambda s: s["attributes"].get("event_id") == first)
    assert (state["state"], state["attributes"]["verdict"]) == ("accepted", "not_a_bird")
    wait_state(scene.ha, f"sensor.{NODE}_alerts_rejected", lambda s: s["state"] == "2")


@pytest.fixture(scope="module")
def restarted(scene: Scene, paused: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Home Assistant's states of our entities just before it restarts (alerts paused)."""
    wait_state(scene.ha, f"binary_sensor.{NODE}_bird_present", lambda s: s["state"] == "off",
               timeout=60)
    before = {e: s for e, s in scene.ha.states().items() if NODE in e}
    scene.ha.stop()
    started = time.monotonic()
    scene.ha.start()
    wait_until(lambda: set(ALL) <= set(scene.ha.states()), 60, "the entities after a restart")
    scene.timings["restart_s"] = seconds_since(started)
    return before


@pytest.mark.parametrize("entity", [
    f"sensor.{NODE}_last_species", f"binary_sensor.{NODE}_bird_present",
    f"switch.{NODE}_alerts", f"sensor.{NODE}_last_reply", f"sensor.{NODE}_model_version",
    f"binary_sensor.{NODE}_connectivity", f"sensor.{NODE}_alerts_rejected",
    f"sensor.{NODE}_last_error"])
def test_after_a_restart_home_assistant_shows_the_same_truth_at_once(
        scene: Scene, restarted: dict[str, dict[str, Any]], entity: str) -> None:
    after = wait_state(scene.ha, entity, lambda s: s["state"] not in ("unknown", "unavailable"),
                       timeout=15)
    assert after["state"] == restarted[entity]["state"]
    if entity.endswith("last_species"):
        assert after["attributes"]["event_id"] == restarted[entity]["attributes"]["event_id"]


def test_after_a_restart_stats_and_the_snapshot_are_there(
        scene: Scene, restarted: dict[str, dict[str, Any]]) -> None:
    for key in ("uptime", "spool_size", "spool_usage", "visits_without_alert"):
        state = wait_state(scene.ha, f"sensor.{NODE}_{key}",
                           lambda s: s["state"] not in ("unknown", "unavailable"), timeout=15)
        assert float(state["state"]) >= 0
    image = scene.ha.request("GET", f"/api/image_proxy/image.{NODE}_snapshot")
    assert image[:2] == b"\xff\xd8"


def test_a_964_species_model_is_announced_and_a_stale_species_shown_as_unknown(scene: Scene,
                                                    restarted: dict[str, Any]) -> None:
    species = tuple((f"species_{i:03d}", f"Species {i:03d}") for i in range(964))
    cfg = MqttConfig(host=scene.broker.host, port=scene.broker.port, device_id="big")
    probe = Probe(scene.broker)
    for topic, payload, retain in discovery_messages(cfg, HomeAssistantConfig(),
                                                     Device("1", species=species)):
        probe.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    probe.publish("feederd/big/status", "online", retain=True)
    probe.publish("feederd/big/last_alert", json.dumps(
        {"display_name": "Species 963", "label": "species_963", "event_id": "x"}), retain=True)
    state = wait_state(scene.ha, "sensor.feederd_big_last_species",
                       lambda s: s["state"] == "Species 963")
    assert len(state["attributes"]["options"]) == 964
    probe.publish("feederd/big/last_alert", json.dumps(
        {"display_name": "Dodo", "label": "dodo", "event_id": "y"}), retain=True)
    stale = wait_state(scene.ha, "sensor.feederd_big_last_species",
                       lambda s: s["attributes"].get("event_id") == "y")
    assert stale["state"] == "unknown"  # a species that is no longer an option: no error
    events = wait_state(scene.ha, "event.feederd_big_bird", lambda s: True)
    assert len(events["attributes"]["event_types"]) == 964
    probe.close()


def test_nothing_in_the_home_assistant_log_warns_about_feederd(
        scene: Scene, restarted: dict[str, Any]) -> None:
    assert scene.ha.problems(*FEEDERD_WORDS) == []
    assert "Template variable" not in scene.ha.log()
