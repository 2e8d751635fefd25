"""The live daemon against a real Mosquitto: alerts, replies, outages, restarts, discovery.

The daemon replays the demo clip re-timed to 40 fps (with visit timings scaled to match), so
it raises an alert every few seconds in real time and a test sees several visits quickly.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import pytest
from brokers import Mosquitto, Probe, TcpGate, wait_until
from daemonproc import DaemonProcess, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feederd.assets import demo_clip_path, demo_model_path

DEVICE = "feeder1"
TOPIC = f"feederd/{DEVICE}"
CLI = [sys.executable, "-m", "feederd.cli"]


@pytest.fixture(scope="module")
def fast_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo clip written at 4x its frame rate."""
    out = tmp_path_factory.mktemp("clip") / "fast.mp4"
    cap = cv2.VideoCapture(str(demo_clip_path()))
    fps = cap.get(cv2.CAP_PROP_FPS)
    writer = None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if writer is None:
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps * 4, (w, h))
        writer.write(frame)
    assert writer is not None
    writer.release()
    cap.release()
    return out


def daemon_config(tmp_path: Path, clip: Path, port: int, **extra: Any) -> Path:
    config: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "camera": {"source": str(clip), "realtime": True, "loop": True},
        # the cartoon clip needs the cartoon model (run's default is AIY Birds V1)
        "classifier": {"model": str(demo_model_path())},
        "motion": {"close_after_s": 0.75},
        "visits": {"classify_fps": 16.0},
        "spool": {"commit_interval_s": 0.2},
        "mqtt": {"host": "127.0.0.1", "port": port, "device_id": DEVICE,
                 "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        "jobs": {"stats_interval_s": 1.0},
    }
    for section, values in extra.items():
        config[section] = {**config.get(section, {}), **values}
    return write_config(tmp_path / "feederd.toml", config)


def ids(messages: list) -> list[str]:
    return [json.loads(m.payload)["event_id"] for m in messages]


class TestAlerts:
    def test_alerts_carry_the_documented_payload_and_mqtt5_reply_properties(
            self, tmp_path, broker, fast_clip):
        probe = Probe(broker, f"{TOPIC}/alert", f"{TOPIC}/snapshot")
        daemon = DaemonProcess(daemon_config(tmp_path, fast_clip, broker.port))
        try:
            [alert] = probe.wait_for(f"{TOPIC}/alert", 1, 60)[:1]
            payload = json.loads(alert.payload)
            assert set(payload) == {"event_id", "time", "label", "display_name",
                                    "scientific_name", "confidence", "margin", "frames",
                                    "model_version", "reply_to"}
            assert alert.qos == 1
            assert alert.response_topic == payload["reply_to"] == f"{TOPIC}/feedback"
            assert alert.correlation_data == payload["event_id"].encode()
            probe.wait_for(f"{TOPIC}/snapshot", 1, 30)
            latecomer = Probe(broker, f"{TOPIC}/snapshot")
            snapshot = latecomer.wait_for(f"{TOPIC}/snapshot", 1, 30)[0]
            latecomer.close()
            assert snapshot.retain and snapshot.payload[:2] == b"\xff\xd8"  # a JPEG
        finally:
            assert daemon.stop() == 0
            probe.close()


def spooled(config: Path) -> list[dict[str, Any]]:
    result = subprocess.run([*CLI, "spool", "ls", "--json", "--limit", "1000",
                             "--config", str(config)], capture_output=True, text=True,
                            timeout=60)
    return json.loads(result.stdout) if result.returncode == 0 else []


def user_labelled(config: Path, event_id: str) -> list[dict[str, Any]]:
    return [s for s in spooled(config)
            if s["visit_id"] == event_id and s["label_source"] == "user"]


class TestReplies:
    def test_not_a_bird_by_command_and_by_mqtt5_bare_text_labels_the_visits(
            self, tmp_path, broker, fast_clip):
        config = daemon_config(tmp_path, fast_clip, broker.port)
        probe = Probe(broker, f"{TOPIC}/alert")
        daemon = DaemonProcess(config)
        try:
            first, second = ids(probe.wait_for(f"{TOPIC}/alert", 2, 60))[:2]
            reply = subprocess.run([*CLI, "reply", first, "--not-a-bird", "--json", "--config",
                                    str(config)], capture_output=True, text=True, timeout=60)
            assert reply.returncode == 0, reply.stderr
            assert json.loads(reply.stdout)["result"] == "accepted"
            again = subprocess.run([*CLI, "reply", first, "--not-a-bird", "--json", "--config",
                                    str(config)], capture_output=True, text=True, timeout=60)
            assert json.loads(again.stdout)["result"] == "duplicate"
            probe.publish(f"{TOPIC}/feedback", "not a bird", correlation_data=second.encode())
            for event in (first, second):
                wait_until(lambda e=event: user_labelled(config, e), 30, f"samples of {event}")
                samples = user_labelled(config, event)
                assert {s["label"] for s in samples} == {"other"}
                assert all("rejected" in s["reasons"] for s in samples)
        finally:
            assert daemon.stop() == 0
            probe.close()


class TestOutage:
    def start(self, tmp_path: Path, clip: Path, broker: Mosquitto
              ) -> tuple[TcpGate, Probe, DaemonProcess]:
        gate = TcpGate(broker.port)
        probe = Probe(broker, f"{TOPIC}/alert")
        daemon = DaemonProcess(daemon_config(tmp_path, clip, gate.port))
        return gate, probe, daemon

    def outage(self, broker: Mosquitto, gate: TcpGate, probe: Probe,
               daemon: DaemonProcess) -> int:
        """Kill the broker just after an alert arrived; return how many alerts came before."""
        before = len(probe.wait_for(f"{TOPIC}/alert", 1, 60))
        wait_until(lambda: len(daemon.alerts()) == before, 10, "delivery of logged alerts")
        gate.open = False
        broker.kill()
        probe.close()
        return before

    def test_alerts_raised_while_the_broker_is_down_arrive_once_in_order(
            self, tmp_path, broker, fast_clip):
        gate, probe, daemon = self.start(tmp_path, fast_clip, broker)
        try:
            before = self.outage(broker, gate, probe, daemon)
            received = ids(probe.on(f"{TOPIC}/alert"))
            wait_until(lambda: len(daemon.alerts()) >= before + 2, 60, "alerts in the outage")
            broker.start()
            later = Probe(broker, f"{TOPIC}/alert")
            gate.open = True
            wait_until(lambda: len(later.on(f"{TOPIC}/alert")) >= 2, 30, "backlog")
            assert daemon.stop() == 0
            logged = [event for event, _ in daemon.alerts()]
            wait_until(lambda: len(received) + len(later.on(f"{TOPIC}/alert")) >= len(logged),
                       30, "every logged alert")
            time.sleep(0.5)  # a duplicate would arrive now
            assert received + ids(later.on(f"{TOPIC}/alert")) == logged
            later.close()
        finally:
            daemon.kill()
            gate.close()

    def test_alerts_queued_before_a_daemon_crash_are_sent_after_its_restart(
            self, tmp_path, broker, fast_clip):
        gate, probe, daemon = self.start(tmp_path, fast_clip, broker)
        try:
            before = self.outage(broker, gate, probe, daemon)
            wait_until(lambda: len(daemon.alerts()) >= before + 2, 60, "alerts in the outage")
            time.sleep(0.5)  # the alert reaches the outbox off the frame loop
            daemon.kill()
            queued = [event for event, _ in daemon.alerts()][before:]
            broker.start()
            later = Probe(broker, f"{TOPIC}/alert")
            gate.open = True
            daemon = DaemonProcess(daemon_config(tmp_path, fast_clip, gate.port))
            wait_until(lambda: len(later.on(f"{TOPIC}/alert")) >= len(queued), 60, "backlog")
            assert ids(later.on(f"{TOPIC}/alert"))[:len(queued)] == queued
            assert daemon.stop() == 0
            later.close()
        finally:
            daemon.kill()
            gate.close()


class TestHomeAssistant:
    def test_discovery_is_sent_again_on_home_assistants_birth_message(
            self, tmp_path, broker, fast_clip):
        probe = Probe(broker, "homeassistant/#")
        daemon = DaemonProcess(daemon_config(tmp_path, fast_clip, broker.port))
        try:
            wait_until(lambda: len(probe.messages) >= 6, 60, "discovery")
            time.sleep(0.5)
            configs = [m for m in probe.messages if m.topic.endswith("/config")]
            first = len(configs)
            probe.publish("homeassistant/status", "online")
            wait_until(lambda: len([m for m in probe.messages if m.topic.endswith("/config")])
                       >= 2 * first, 30, "discovery again")
            topics = {m.topic for m in configs}
            assert any("/button/" in t for t in topics)
            assert any("/binary_sensor/" in t for t in topics)
            assert any("/image/" in t or "/camera/" in t for t in topics)
        finally:
            assert daemon.stop() == 0
            probe.close()


BAD_PAYLOADS = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.dictionaries(st.sampled_from(["event_id", "verdict", "label", "x"]),
                    st.one_of(st.none(), st.integers(), st.text(max_size=30),
                              st.lists(st.integers(), max_size=3)), max_size=4)
      .map(lambda d: json.dumps(d).encode()),
    st.builds(lambda v, label: json.dumps({"event_id": "20200101T000000.000Z-00000000",
                                           "verdict": v, "label": label}).encode(),
              st.sampled_from(["not_a_bird", "correct", "species", "maybe"]),
              st.one_of(st.none(), st.text(max_size=20))),
    st.just(b"\xff\xfe\xfd invalid utf-8 \xc3\x28"),
    st.just(b"{" * 1_000_000),
)


FEEDBACK_LINE = re.compile(r"MQTT feedback (?:dropped|handler failed|repeated|accepted)[^\n]*")


def feedback_lines(daemon: DaemonProcess) -> list[str]:
    """The daemon's one log line per reply it handled, in order."""
    return FEEDBACK_LINE.findall(daemon.log)


def settled(count: Callable[[], int], what: str, quiet_s: float = 1.0) -> None:
    """Wait until ``count()`` has not changed for ``quiet_s`` (the spool writer is async)."""
    last, since = count(), time.monotonic()
    deadline = since + 30
    while time.monotonic() - since < quiet_s:
        if time.monotonic() > deadline:
            pytest.fail(f"{what} kept changing for 30 s")
        time.sleep(0.1)
        if (now := count()) != last:
            last, since = now, time.monotonic()


def labels_of(samples: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    return sorted((s["id"], s["label"], s["label_source"]) for s in samples)


class TestFuzzedFeedback:
    @pytest.fixture(scope="class")
    def live(self, tmp_path_factory, fast_clip):
        tmp = tmp_path_factory.mktemp("fuzz")
        broker = Mosquitto(tmp / "broker").start()
        config = daemon_config(tmp, fast_clip, broker.port)
        probe = Probe(broker, f"{TOPIC}/alert", f"{TOPIC}/stats", f"{TOPIC}/visit")
        daemon = DaemonProcess(config)
        [event] = ids(probe.wait_for(f"{TOPIC}/alert", 1, 60))[:1]
        probe.publish(f"{TOPIC}/feedback", json.dumps({"event_id": event,
                                                       "verdict": "not_a_bird"}))
        wait_until(lambda: user_labelled(config, event), 30, "the accepted reply")
        # A reply to an open visit labels the rest of it when it closes: wait for that too.
        wait_until(lambda: event in ids(probe.on(f"{TOPIC}/visit")), 60, "the visit to close")
        settled(lambda: len(user_labelled(config, event)), "the visit's labelled samples")
        yield config, probe, daemon, event
        daemon.kill()
        probe.close()
        broker.stop()

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(payload=BAD_PAYLOADS)
    def test_each_malformed_reply_is_dropped_and_a_good_reply_after_it_is_still_taken(
            self, live, payload):
        """A round trip per example: the good reply is handled only after the bad one was
        (one MQTT session, in order), so a bad reply that hung or killed the handler fails."""
        _config, probe, daemon, event = live
        before = len(feedback_lines(daemon))
        probe.publish(f"{TOPIC}/feedback", payload)
        probe.publish(f"{TOPIC}/feedback", json.dumps({"event_id": event,
                                                       "verdict": "not_a_bird"}))
        wait_until(lambda: len(feedback_lines(daemon)) >= before + 2
                   or daemon.proc.poll() is not None, 30, "both replies to be handled")
        assert daemon.proc.poll() is None, daemon.log
        bad, good = feedback_lines(daemon)[before:before + 2]
        assert "handler failed" not in bad, daemon.log
        assert re.search(rf"(accepted|repeated): {event} not_a_bird", good), good

    def test_after_the_fuzzing_the_accepted_reply_is_unchanged_and_alerts_continue(
            self, live):
        config, probe, daemon, event = live
        samples = labels_of(user_labelled(config, event))
        alerts = len(probe.on(f"{TOPIC}/alert"))
        probe.wait_for(f"{TOPIC}/alert", alerts + 1, 60)
        assert samples and labels_of(user_labelled(config, event)) == samples
        stats = json.loads(probe.wait_for(f"{TOPIC}/stats", 1, 30)[-1].payload)
        assert stats["mqtt"]["feedback_rejected"] >= 1
        assert daemon.proc.poll() is None
