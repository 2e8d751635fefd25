"""What the link does with what arrives, against a real Mosquitto: replies and their results,
retained deliveries, the alerts switch and "reload model"; and the retained state it keeps."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from brokers import Mosquitto, Probe, TcpGate, wait_until

from feederd.config import HomeAssistantConfig
from feederd.errors import MqttError
from feederd.mqtt import MqttLink, send_reply
from feederd.mqtt.client import publish_properties
from feederd.mqtt.feedback import reply_payload
from feederd.mqtt.homeassistant import entity_config_topics
from feederd.types import VisitSummary, new_event_id

from .test_link import TOPICS, Recorder, config, connected, raise_alert


def results(probe: Probe) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in probe.on(TOPICS.feedback_result) if not m.retain]


def reply(probe: Probe, event_id: str, verdict: str = "not_a_bird",
          label: str | None = None) -> None:
    probe.publish(TOPICS.feedback, reply_payload(event_id, verdict, label))


# --- replies and results ------------------------------------------------------------------------

def test_an_accepted_reply_is_answered_on_the_retained_result_topic(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    link = connected(make_link(config(broker.port)))
    raised = raise_alert(link, recorder)
    probe = Probe(broker, TOPICS.feedback_result)
    reply(probe, raised.event_id)
    wait_until(lambda: results(probe), what="the result")
    assert results(probe)[0] | {"time": None} == {
        "result": "accepted", "event_id": raised.event_id, "verdict": "not_a_bird",
        "label": None, "detail": "the reply was applied", "time": None}
    [kept] = Probe(broker, TOPICS.feedback_result).wait_for(TOPICS.feedback_result)
    assert kept.retain and json.loads(kept.payload)["event_id"] == raised.event_id


def test_the_same_reply_twice_is_applied_and_counted_once(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    link = connected(make_link(config(broker.port)))
    raised = raise_alert(link, recorder)
    probe = Probe(broker, TOPICS.feedback_result)
    for _ in range(2):
        reply(probe, raised.event_id)
    wait_until(lambda: len(results(probe)) == 2, what="two results")
    assert [r["result"] for r in results(probe)] == ["accepted", "duplicate"]
    assert len(recorder.received) == 1
    counters = link.counters()
    assert (counters["feedback_accepted"], counters["alerts_rejected"],
            counters["feedback_duplicates"]) == (1, 1, 1)


def test_a_changed_verdict_for_the_same_event_is_applied(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    link = connected(make_link(config(broker.port)))
    raised = raise_alert(link, recorder)
    probe = Probe(broker, TOPICS.feedback_result)
    reply(probe, raised.event_id, "not_a_bird")
    reply(probe, raised.event_id, "correct")
    wait_until(lambda: len(results(probe)) == 2, what="two results")
    assert [r["result"] for r in results(probe)] == ["accepted", "accepted"]
    assert [f.verdict for f in recorder.received] == ["not_a_bird", "correct"]


@pytest.mark.parametrize(("event", "verdict", "label", "result"), [
    ("unknown", "not_a_bird", None, "unknown_event"),
    ("known", "species", "dodo", "unknown_species"),
])
def test_a_refused_reply_says_why(broker: Mosquitto, make_link: Callable[..., MqttLink],
                                  recorder: Recorder, event: str, verdict: str,
                                  label: str | None, result: str) -> None:
    link = connected(make_link(config(broker.port), labels=("great_tit", "blue_jay")))
    raised = raise_alert(link, recorder)
    probe = Probe(broker, TOPICS.feedback_result)
    reply(probe, raised.event_id if event == "known" else new_event_id(), verdict, label)
    wait_until(lambda: results(probe), what="the result")
    assert results(probe)[0]["result"] == result
    assert recorder.received == []


def test_garbage_is_answered_as_invalid(
        broker: Mosquitto, make_link: Callable[..., MqttLink]) -> None:
    connected(make_link(config(broker.port)))
    probe = Probe(broker, TOPICS.feedback_result)
    probe.publish(TOPICS.feedback, b"\x00{not json")
    wait_until(lambda: results(probe), what="the result")
    assert results(probe)[0]["result"] == "invalid"


def test_an_mqtt5_reply_is_answered_on_its_response_topic_with_its_correlation_data(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    link = connected(make_link(config(broker.port)))
    raised = raise_alert(link, recorder)
    mine = f"{TOPICS.base}/feedback/response/me"
    probe = Probe(broker, mine)
    probe.client.publish(TOPICS.feedback, "not a bird", qos=1, properties=publish_properties(
        mine, raised.event_id.encode())).wait_for_publish(5)
    [answer] = probe.wait_for(mine)
    assert answer.correlation_data == raised.event_id.encode()
    assert json.loads(answer.payload)["result"] == "accepted"


def test_a_response_topic_among_the_devices_own_topics_is_not_answered(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    link = connected(make_link(config(broker.port)))
    raised = raise_alert(link, recorder)
    probe = Probe(broker, TOPICS.status, TOPICS.feedback_result)
    probe.client.publish(TOPICS.feedback, "not a bird", qos=1, properties=publish_properties(
        TOPICS.status, raised.event_id.encode())).wait_for_publish(5)
    wait_until(lambda: results(probe), what="the result")
    assert all(m.payload in (b"online", b"offline") for m in probe.on(TOPICS.status))


# --- retained deliveries (issue 9, item 10) -----------------------------------------------------

def test_a_retained_reply_is_ignored_on_every_reconnect_and_logged_once(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="feederd.mqtt")
    Probe(broker).publish(TOPICS.feedback, reply_payload("latest", "not_a_bird"), retain=True)
    gate = TcpGate(broker.port)
    link = connected(make_link(config(gate.port)))
    raise_alert(link, recorder)
    for reconnects in (1, 2):
        gate.cut()
        wait_until(lambda n=reconnects: link.counters()["reconnects"] >= n and link.connected,
                   what="the link to reconnect")
    wait_until(lambda: link.counters()["retained_ignored"] >= 3, what="three retained deliveries")
    assert recorder.received == []
    assert link.counters()["feedback_accepted"] == 0
    warnings = [r for r in caplog.records if "ignored a retained message" in r.getMessage()]
    assert len(warnings) == 1


# --- commands -----------------------------------------------------------------------------------

def test_the_alerts_switch_pauses_alerts_across_a_restart_and_resumes_them(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder,
        tmp_path: Path) -> None:
    probe = Probe(broker, TOPICS.alert, TOPICS.alerts)
    link = connected(make_link(config(broker.port)))
    wait_until(lambda: [m.payload for m in probe.on(TOPICS.alerts)] == [b"ON"],
               what="the alerts state ON")
    probe.publish(TOPICS.alerts_set, "off")
    wait_until(lambda: probe.on(TOPICS.alerts)[-1].payload == b"OFF", what="alerts OFF")
    raise_alert(link, recorder)
    link.stop(timeout=2)
    again = connected(make_link(config(broker.port)))
    raise_alert(again, recorder)
    assert again.counters()["alerts_paused"] == 1
    Probe(broker, TOPICS.alerts).wait_for(TOPICS.alerts)  # the broker has the new link's state
    [state] = Probe(broker, TOPICS.alerts).wait_for(TOPICS.alerts)
    assert (state.payload, state.retain) == (b"OFF", True)
    probe.publish(TOPICS.alerts_set, "ON")
    wait_until(lambda: probe.on(TOPICS.alerts)[-1].payload == b"ON", what="alerts ON")
    resumed = raise_alert(again, recorder)
    [sent] = probe.wait_for(TOPICS.alert)
    assert json.loads(sent.payload)["event_id"] == resumed.event_id


def test_reload_model_asks_the_daemon_to_reload(
        broker: Mosquitto, tmp_path: Path, recorder: Recorder) -> None:
    asked = threading.Event()

    class Daemon:
        def request_reload(self) -> None:
            asked.set()

    probe = Probe(broker, TOPICS.alerts)
    link = MqttLink(config(broker.port), HomeAssistantConfig(), "", tmp_path / "outbox.db",
                    recorder, sw_version="0", commands=Daemon())
    link.start()
    try:
        connected(link)
        probe.wait_for(TOPICS.alerts)  # sent after subscribing, on the same connection
        probe.publish(TOPICS.model_reload, "reload")
        assert asked.wait(15)
    finally:
        link.stop(timeout=2)
        probe.close()


# --- retained state -----------------------------------------------------------------------------

def test_presence_is_on_from_the_alert_until_the_visit_ends_and_the_last_alert_is_retained(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    probe = Probe(broker, TOPICS.presence)
    link = connected(make_link(config(broker.port)))
    raised = raise_alert(link, recorder)
    wait_until(lambda: [m.payload for m in probe.on(TOPICS.presence)][-1:] == [b"ON"],
               what="presence ON")
    link.publish_visit(VisitSummary(raised.event_id, raised.time - 1, raised.time + 1, 9, 6,
                                    {"great_tit": 6}, "great_tit", True, "v1"))
    wait_until(lambda: probe.on(TOPICS.presence)[-1].payload == b"OFF", what="presence OFF")
    late = Probe(broker, TOPICS.last_alert, TOPICS.snapshot_of("great_tit"), TOPICS.presence)
    [last] = late.wait_for(TOPICS.last_alert)
    assert last.retain and json.loads(last.payload)["event_id"] == raised.event_id
    assert late.wait_for(TOPICS.snapshot_of("great_tit"))[0].retain
    assert late.wait_for(TOPICS.presence)[0].payload == b"OFF"


def test_a_visit_without_alert_is_counted(
        broker: Mosquitto, make_link: Callable[..., MqttLink]) -> None:
    link = connected(make_link(config(broker.port)))
    link.publish_visit(VisitSummary(new_event_id(), 1.0, 2.0, 9, 6, {"other": 6}, "other", False,
                                    "v1"))
    assert link.counters()["visits_without_alert"] == 1


def test_stats_are_retained_with_the_last_error(
        broker: Mosquitto, make_link: Callable[..., MqttLink]) -> None:
    link = connected(make_link(config(broker.port)))
    logging.getLogger("feederd.spool").error("disk on fire\nsecond line")
    link.publish_stats({"frames": 1})
    # Once a first subscriber has it, the broker holds it; a later one gets the retained copy
    # (a subscriber that was already there when it arrived sees retain=False).
    Probe(broker, TOPICS.stats).wait_for(TOPICS.stats)
    [stats] = Probe(broker, TOPICS.stats).wait_for(TOPICS.stats)
    document = json.loads(stats.payload)
    assert stats.retain and document["frames"] == 1
    assert document["last_error"]["message"] == "disk on fire"
    assert document["last_error"]["logger"] == "feederd.spool"


# --- discovery removal --------------------------------------------------------------------------

def test_changing_the_device_id_removes_the_old_entities(
        broker: Mosquitto, make_link: Callable[..., MqttLink], tmp_path: Path) -> None:
    old = connected(make_link(config(broker.port)))
    old.stop(timeout=2)
    gone = set(entity_config_topics(config(broker.port), HomeAssistantConfig()))
    assert retained_configs(broker) & gone
    connected(make_link(config(broker.port, device_id="renamed")))
    watcher = Probe(broker, "homeassistant/#")
    wait_until(lambda: any("feederd_renamed" in m.topic for m in watcher.messages),
               what="the new device's configs")  # removals go first, on the same connection
    kept = retained_configs(broker)
    assert any("feederd_renamed" in topic for topic in kept)
    assert not kept & gone, "old configs must be cleared"


def test_disabling_discovery_removes_the_entities(
        broker: Mosquitto, make_link: Callable[..., MqttLink]) -> None:
    watcher = Probe(broker, "homeassistant/#")
    connected(make_link(config(broker.port))).stop(timeout=2)
    announced = {m.topic for m in watcher.messages if m.payload}
    assert announced and retained_configs(broker) == announced
    connected(make_link(config(broker.port), ha=HomeAssistantConfig(enabled=False)))
    wait_until(lambda: {m.topic for m in watcher.messages if not m.payload} >= announced,
               what="empty configs for every announced entity")
    assert retained_configs(broker) == set()


def retained_configs(broker: Mosquitto) -> set[str]:
    """The discovery topics the broker retains. The broker sends them while it handles the
    subscription, so once a message published after it arrives, they all have."""
    ping = "homeassistant/zz_ping"
    late = Probe(broker, "homeassistant/#")
    try:
        sender = Probe(broker)
        sender.publish(ping, "x")
        sender.close()
        wait_until(lambda: bool(late.on(ping)), what="a message sent after subscribing")
        return {m.topic for m in late.messages if m.retain}
    finally:
        late.close()


# --- feederd reply ------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_send_reply_reports_the_devices_verdict(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder,
        protocol: str) -> None:
    link = connected(make_link(config(broker.port), labels=("great_tit",)))
    raised = raise_alert(link, recorder)
    cfg = config(broker.port, protocol=protocol)
    first = send_reply(cfg, "", raised.event_id, "not_a_bird", None, timeout=5)
    second = send_reply(cfg, "", raised.event_id, "not_a_bird", None, timeout=5)
    unknown = send_reply(cfg, "", new_event_id(), "not_a_bird", None, timeout=5)
    species = send_reply(cfg, "", raised.event_id, "species", "dodo", timeout=5)
    assert [r.result for r in (first, second, unknown, species)] == [
        "accepted", "duplicate", "unknown_event", "unknown_species"]
    assert first.ok and second.ok and not unknown.ok


def test_send_reply_with_no_device_listening_says_so(broker: Mosquitto) -> None:
    with pytest.raises(MqttError, match="did not answer within 1 s"):
        send_reply(config(broker.port), "", new_event_id(), "not_a_bird", None, timeout=1)
