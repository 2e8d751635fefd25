"""The outbox sender against a real Mosquitto and a real tmpfs that fills: nothing stops it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import test_daemon_spool as spool_tests
from brokers import Mosquitto, Probe, TcpGate, wait_until
from test_daemon_spool import fill_disk

import mqtt.test_link as link_tests
from feederd.mqtt import MqttLink
from feederd.mqtt.outbox import Outbox, OutMessage
from feederd.mqtt.sender import MEMORY_MAX_MESSAGES, SNAPSHOT_WAIT_S
from mqtt.test_link import (
    JPEG,
    TOPICS,
    Recorder,
    alert,
    config,
    connected,
    event_ids,
    raise_alert,
    send_sentinel_and_wait,
)

# Fixtures shared with the link's and the spool's tests.
make_link, recorder, tiny_disk = link_tests.make_link, link_tests.recorder, spool_tests.tiny_disk

pytestmark = pytest.mark.timeout(120)


@dataclass
class Offline:
    """A link with its outbox on a 3 MB tmpfs, cut off from its broker by a gate."""

    broker: Mosquitto
    gate: TcpGate
    link: MqttLink
    disk: Path


@pytest.fixture
def offline(make_broker: Callable[..., Mosquitto], make_link: Callable[..., MqttLink],
            tiny_disk: Path) -> Iterator[Offline]:
    broker = make_broker()
    gate = TcpGate(broker.port)
    link = connected(make_link(config(gate.port), outbox=tiny_disk / "outbox.db"))
    gate.open = False
    gate.cut()
    wait_until(lambda: not link.connected, what="the link to notice the outage")
    yield Offline(broker, gate, link, tiny_disk)


def test_a_disk_that_fills_while_alerts_are_in_flight_does_not_stop_the_sender(
        offline: Offline, recorder: Recorder) -> None:
    broker, gate, link, tiny_disk = offline.broker, offline.gate, offline.link, offline.disk
    stored = [raise_alert(link, recorder).event_id for _ in range(5)]
    filler = tiny_disk / "filler"
    fill_disk(filler)  # now a delivered row cannot even be deleted
    probe = Probe(broker, TOPICS.alert)
    gate.open = True
    wait_until(lambda: len(event_ids(probe)) >= len(stored), what="the stored alerts")
    filler.unlink()
    sentinel = send_sentinel_and_wait(link, recorder, probe)
    assert event_ids(probe) == [*stored, sentinel]
    counts = link.counters()
    assert counts["outbox_errors"] >= 1 and counts["outbox_pending"] == 0
    assert link.sender_problem() is None


def test_while_the_disk_is_full_alerts_go_straight_out_to_a_connected_broker(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder,
        tiny_disk: Path) -> None:
    probe = Probe(broker, TOPICS.alert, TOPICS.snapshot)
    link = connected(make_link(config(broker.port), outbox=tiny_disk / "outbox.db"))
    fill_disk(tiny_disk / "filler")
    raised = [raise_alert(link, recorder).event_id for _ in range(10)]
    wait_until(lambda: len(event_ids(probe)) >= len(raised), what="the alerts")
    assert event_ids(probe) == raised
    assert probe.on(TOPICS.snapshot), "the snapshots went out too"
    counts = link.counters()
    assert counts["outbox_errors"] >= 10 and counts["dropped_memory"] == 0
    assert counts["memory_pending"] == 0


def test_with_the_disk_full_and_the_broker_away_memory_keeps_the_newest_and_counts_the_rest(
        offline: Offline, recorder: Recorder) -> None:
    broker, gate, link, tiny_disk = offline.broker, offline.gate, offline.link, offline.disk
    filler = tiny_disk / "filler"
    fill_disk(filler)
    # an alert is five messages: the alert and four retained ones (snapshot, snapshot/<label>,
    # presence, last alert), each replacing the one before, so memory keeps those four and
    # the newest alerts: 24 alerts go
    retained = 4
    raised = [raise_alert(link, recorder).event_id for _ in range(MEMORY_MAX_MESSAGES + 20)]
    counts = link.counters()
    assert counts["memory_pending"] == MEMORY_MAX_MESSAGES
    assert counts["dropped_memory"] == 20 + retained
    probe = Probe(broker, TOPICS.alert)
    gate.open = True
    wait_until(lambda: len(event_ids(probe)) >= MEMORY_MAX_MESSAGES - retained,
               what="the kept alerts")
    filler.unlink()
    sentinel = send_sentinel_and_wait(link, recorder, probe)
    assert event_ids(probe) == [*raised[-(MEMORY_MAX_MESSAGES - retained):], sentinel]


def test_messages_kept_in_memory_move_to_disk_once_it_has_room_again(
        offline: Offline, recorder: Recorder) -> None:
    broker, gate, link, tiny_disk = offline.broker, offline.gate, offline.link, offline.disk
    filler = tiny_disk / "filler"
    fill_disk(filler)
    in_memory = [raise_alert(link, recorder).event_id for _ in range(3)]
    assert link.counters()["memory_pending"] >= 3
    filler.unlink()
    later = raise_alert(link, recorder).event_id
    counts = link.counters()
    assert counts["memory_pending"] == 0 and counts["outbox_pending"] >= 4
    probe = Probe(broker, TOPICS.alert)
    gate.open = True
    sentinel = send_sentinel_and_wait(link, recorder, probe)
    assert event_ids(probe) == [*in_memory, later, sentinel]


def test_an_alert_stored_before_its_snapshot_waits_for_it_and_leaves_after_it(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    probe = Probe(broker, TOPICS.alert, TOPICS.snapshot)
    link = connected(make_link(config(broker.port)))
    raised = alert()
    link.publish_alert(raised, None, snapshot_follows=True)
    time.sleep(0.5)  # the snapshot is being encoded: the alert does not leave without it
    assert not probe.on(TOPICS.alert)
    link.publish_snapshot(raised.event_id, JPEG)
    wait_until(lambda: bool(probe.on(TOPICS.alert)), what="the alert")
    assert [m.topic for m in probe.messages] == [TOPICS.snapshot, TOPICS.alert]


def test_an_alert_whose_snapshot_never_comes_leaves_after_a_short_wait(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    probe = Probe(broker, TOPICS.alert, TOPICS.snapshot)
    link = connected(make_link(config(broker.port)))
    raised = alert()
    link.publish_alert(raised, None, snapshot_follows=True)
    wait_until(lambda: bool(probe.on(TOPICS.alert)), SNAPSHOT_WAIT_S + 5, "the alert")
    link.publish_snapshot(raised.event_id, JPEG)  # late: it goes out after the alert
    wait_until(lambda: bool(probe.on(TOPICS.snapshot)), what="the late snapshot")
    assert [m.topic for m in probe.messages] == [TOPICS.alert, TOPICS.snapshot]


def test_a_stored_message_the_client_refuses_is_dropped_and_the_ones_behind_it_go(
        tmp_path: Path, broker: Mosquitto, make_link: Callable[..., MqttLink],
        recorder: Recorder) -> None:
    stored = Outbox(tmp_path / "outbox.db", 100)  # as an older version might have left it
    stored.put([OutMessage(f"{TOPICS.base}/#", b"wildcards cannot be published")])
    stored.close()
    probe = Probe(broker, TOPICS.alert)
    link = connected(make_link(config(broker.port)))
    send_sentinel_and_wait(link, recorder, probe)
    counts = link.counters()
    assert counts["publish_refused"] == 1 and counts["sender_errors"] == 0
