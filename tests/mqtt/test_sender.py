"""The outbox sender against a real Mosquitto and a real tmpfs that fills: nothing stops it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import test_daemon_spool as spool_tests
from brokers import Mosquitto, Probe, TcpGate, wait_until
from test_daemon_spool import fill_disk

import mqtt.test_link as link_tests
from feederd.mqtt import MqttLink
from feederd.mqtt.sender import MEMORY_MAX_MESSAGES
from mqtt.test_link import (
    TOPICS,
    Recorder,
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
