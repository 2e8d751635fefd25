"""The event queue between the frame loop and everything slow."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from feederd.events import EventQueue
from feederd.types import Alert, ClassifiedFrame, Prediction, VisitSummary


def classified(seq: int) -> ClassifiedFrame:
    prediction = Prediction(("a", "b"), (0.9, 0.1), np.array([0.9, 0.1], np.float32))
    return ClassifiedFrame("v", seq, float(seq), 0.0, prediction, None,
                           np.zeros((2, 2, 3), np.uint8), True)


class Recorder:
    """A handler that can be held up, as a slow disk or broker would."""

    def __init__(self, gate: threading.Event | None = None, fail_on: int = -1) -> None:
        self.seen: list[int] = []
        self.gate = gate
        self.fail_on = fail_on

    def on_classified(self, frame: ClassifiedFrame) -> None:
        if self.gate is not None:
            self.gate.wait()
        if frame.seq == self.fail_on:
            raise RuntimeError("handler bug")
        self.seen.append(frame.seq)

    def on_alert(self, alert: Alert) -> None:
        self.seen.append(-1)

    def on_visit_closed(self, summary: VisitSummary, frames: Sequence[ClassifiedFrame]) -> None:
        self.seen.append(-2)


def test_events_reach_every_handler_in_order():
    first, second = Recorder(), Recorder()
    events = EventQueue([first, second])
    events.start()
    for seq in range(50):
        events.on_classified(classified(seq))
    events.stop()
    assert first.seen == second.seen == list(range(50))


def test_a_stuck_consumer_makes_per_frame_events_drop_and_count_not_block():
    gate = threading.Event()
    handler = Recorder(gate)
    events = EventQueue([handler], maxsize=4)
    events.start()
    for seq in range(20):
        events.on_classified(classified(seq))  # returns at once although nothing is consumed
    assert events.dropped >= 20 - 4 - 1
    gate.set()
    events.stop()
    assert len(handler.seen) + events.dropped == 20


def test_a_lossless_queue_makes_the_producer_wait_instead_of_dropping():
    gate = threading.Event()
    handler = Recorder(gate)
    events = EventQueue([handler], maxsize=2, lossless=True)
    events.start()
    producer = threading.Thread(target=lambda: [events.on_classified(classified(s))
                                                for s in range(10)])
    producer.start()
    producer.join(0.5)
    assert producer.is_alive()  # held back by the full queue
    gate.set()
    producer.join(10)
    events.stop()
    assert handler.seen == list(range(10)) and events.dropped == 0


def test_a_failing_handler_is_counted_and_the_others_still_get_the_event():
    broken, healthy = Recorder(fail_on=3), Recorder()
    events = EventQueue([broken, healthy])
    events.start()
    for seq in range(6):
        events.on_classified(classified(seq))
    events.stop()
    assert healthy.seen == list(range(6))
    assert broken.seen == [0, 1, 2, 4, 5]
    assert events.handler_errors == 1


def test_an_alert_is_stored_ahead_of_the_events_queued_before_it_and_its_snapshot_leads(
        tmp_path):
    from brokers import free_port

    from feederd.config import HomeAssistantConfig, MqttConfig
    from feederd.events import LinkEvents
    from feederd.mqtt import MqttLink
    from feederd.mqtt.outbox import Outbox

    cfg = MqttConfig(host="127.0.0.1", port=free_port(), device_id="feeder1")  # no broker
    link = MqttLink(cfg, HomeAssistantConfig(), "", tmp_path / "outbox.db", None,  # type: ignore[arg-type]
                    sw_version="test")
    link.start()
    forward = LinkEvents(link, 640, 80)
    gate = threading.Event()
    stored_when_seen: list[int] = []

    busy = threading.Event()

    class Snooper(Recorder):
        def on_classified(self, frame: ClassifiedFrame) -> None:
            busy.set()
            super().on_classified(frame)
            stored_when_seen.append(link.counters()["outbox_pending"])

    events = EventQueue([Snooper(gate), forward], first=[forward])
    events.start()
    for seq in range(20):  # the worker is held up by the first; 19 wait behind it
        events.on_classified(classified(seq))
    assert busy.wait(10)
    events.on_alert(Alert("20261201T000000.000Z-00000001", 0.0, "cardinal", 0.9, 0.5, 4,
                          "v1", snapshot=np.full((720, 1280, 3), 90, np.uint8)))
    gate.set()
    events.stop()
    link.stop(timeout=0.5)
    # from the second frame on: the alert's messages are stored, its snapshots not yet
    before, after = stored_when_seen[0], stored_when_seen[1]
    assert after > before and stored_when_seen[1:] == [after] * 19
    outbox = Outbox(tmp_path / "outbox.db", 100)
    topics = []
    while (queued := outbox.head()) is not None:
        topics.append(queued.message.topic)
        outbox.remove(queued.id)
    outbox.close()
    assert topics[:2] == ["feederd/feeder1/snapshot", "feederd/feeder1/snapshot/cardinal"]
    assert topics[-1] == "feederd/feeder1/alert"
