"""The on-disk outbox: order, bound, retained replacement, and surviving a killed process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from feederd.errors import MqttError
from feederd.mqtt.outbox import Outbox, OutMessage

REPO = Path(__file__).resolve().parent.parent


def message(n: int, topic: str = "t/alert", **kwargs: object) -> OutMessage:
    return OutMessage(topic, f"m{n}".encode(), **kwargs)  # type: ignore[arg-type]


def drain(outbox: Outbox) -> list[OutMessage]:
    out = []
    while (queued := outbox.head()) is not None:
        out.append(queued.message)
        outbox.remove(queued.id)
    return out


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", max_messages=100)
    yield box
    box.close()


def test_messages_come_out_in_the_order_they_went_in(outbox: Outbox) -> None:
    outbox.put([message(1), message(2)])
    outbox.put([message(3)])
    assert [m.payload for m in drain(outbox)] == [b"m1", b"m2", b"m3"]
    assert len(outbox) == 0


def test_head_does_not_remove_until_told(outbox: Outbox) -> None:
    outbox.put([message(1)])
    first = outbox.head()
    assert first is not None and outbox.head() == first and len(outbox) == 1


def test_mqtt5_properties_round_trip(outbox: Outbox) -> None:
    sent = message(1, response_topic="t/feedback", correlation_data=b"\x00id\xff", retain=False)
    outbox.put([sent])
    assert drain(outbox) == [sent]


def test_queued_messages_survive_reopening(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "outbox.db", 100)
    first.put([message(1), message(2)], {"latest_alert": "e2"})
    first.close()
    again = Outbox(tmp_path / "outbox.db", 100)
    assert [m.payload for m in drain(again)] == [b"m1", b"m2"]
    assert again.meta("latest_alert") == "e2"
    again.close()


def test_ids_keep_growing_after_everything_was_removed(outbox: Outbox) -> None:
    outbox.put([message(1)])
    first = outbox.head()
    drain(outbox)
    outbox.put([message(2)])
    second = outbox.head()
    assert first is not None and second is not None and second.id > first.id


def test_over_the_bound_the_oldest_are_dropped_and_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", max_messages=3)
    box.put([message(1), message(2)])
    assert box.put([message(3), message(4), message(5)]) == 2
    assert box.dropped == 2
    assert [m.payload for m in drain(box)] == [b"m3", b"m4", b"m5"]
    box.close()


def test_a_retained_message_replaces_the_waiting_one_on_its_topic(outbox: Outbox) -> None:
    outbox.put([message(1, "t/snapshot", retain=True), message(2)])
    outbox.put([message(3, "t/snapshot", retain=True), message(4)])
    assert [(m.topic, m.payload) for m in drain(outbox)] == [
        ("t/alert", b"m2"), ("t/snapshot", b"m3"), ("t/alert", b"m4")]


def test_a_retained_message_leaves_other_topics_alone(outbox: Outbox) -> None:
    outbox.put([message(1, "t/a", retain=True), message(2, "t/b", retain=True)])
    assert len(outbox) == 2


def test_a_corrupt_file_is_moved_aside_and_a_fresh_outbox_works(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database" * 100)
    box = Outbox(path, 10)
    box.put([message(1)])
    assert len(box) == 1
    assert list(tmp_path.glob("outbox.db.corrupt-*"))
    box.close()


def test_an_unwritable_location_raises_mqtt_error_naming_the_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(MqttError, match="outbox"):
        Outbox(blocker / "outbox.db", 10)


def test_committed_messages_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from feederd.mqtt.outbox import Outbox, OutMessage
        box = Outbox(Path({str(path)!r}), 1000)
        for n in range(50):
            box.put([OutMessage("t/alert", b"m%d" % n)])
        print("stored", flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == b"stored"
    child.send_signal(signal.SIGKILL)
    child.wait()
    box = Outbox(path, 1000)
    assert [m.payload for m in drain(box)] == [b"m%d" % n for n in range(50)]
    box.close()
