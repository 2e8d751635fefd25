"""The MQTT link against real Mosquitto brokers: what goes out, what comes in, and outages."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import WAIT_S, Mosquitto, Pki, Probe, TcpGate, free_port, wait_until

from feederd.config import HomeAssistantConfig, MqttConfig
from feederd.errors import MqttError, UnknownEventError
from feederd.mqtt import MqttLink, probe_broker, send_reply
from feederd.mqtt.feedback import Feedback, reply_payload
from feederd.mqtt.homeassistant import BUTTON_PAYLOAD, Device, Topics, discovery_messages
from feederd.types import Alert, VisitSummary, new_event_id

REPO = Path(__file__).resolve().parent.parent
DEVICE = "feeder1"
TOPICS = Topics(f"feederd/{DEVICE}")
JPEG = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"


def config(port: int, **overrides: Any) -> MqttConfig:
    """Fast reconnects so outage tests take a second, not minutes."""
    values: dict[str, Any] = {"host": "127.0.0.1", "port": port, "device_id": DEVICE,
                              "reconnect_min_s": 0.05, "reconnect_max_s": 0.3,
                              "keepalive_s": 5}
    return MqttConfig(**(values | overrides))


def alert(label: str = "great_tit") -> Alert:
    now = time.time()
    return Alert(event_id=new_event_id(now), time=now, label=label, confidence=0.91,
                 margin=0.42, frames=6, model_version="v1")


class Recorder:
    """A feedback handler that knows some events, and has a bug on label 'boom'."""

    def __init__(self) -> None:
        self.known: set[str] = set()
        self.received: list[Feedback] = []
        self._lock = threading.Lock()

    def handle(self, feedback: Feedback) -> None:
        if feedback.event_id not in self.known:
            raise UnknownEventError(f"unknown or expired event {feedback.event_id}")
        if feedback.label == "boom":
            raise RuntimeError("a bug in the handler")
        with self._lock:
            self.received.append(feedback)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_link(tmp_path: Path, recorder: Recorder) -> Iterator[Callable[..., MqttLink]]:
    """Make links (started unless told otherwise); all are stopped afterwards."""
    links: list[MqttLink] = []

    def make(cfg: MqttConfig, *, start: bool = True, outbox: Path | None = None,
             ha: HomeAssistantConfig | None = None, password: str = "",
             labels: tuple[str, ...] = ()) -> MqttLink:
        link = MqttLink(cfg, ha or HomeAssistantConfig(), password,
                        outbox or tmp_path / "outbox.db", recorder, sw_version="0.1.0",
                        labels=labels)
        links.append(link)
        if start:
            link.start()
        return link

    yield make
    for link in links:
        link.stop(timeout=2)


def connected(link: MqttLink) -> MqttLink:
    wait_until(lambda: link.connected, what="the link to connect")
    return link


def raise_alert(link: MqttLink, recorder: Recorder, label: str = "great_tit") -> Alert:
    raised = alert(label)
    recorder.known.add(raised.event_id)
    link.publish_alert(raised, JPEG)
    return raised


def event_ids(probe: Probe) -> list[str]:
    return [json.loads(m.payload)["event_id"] for m in probe.on(TOPICS.alert)]


def send_sentinel_and_wait(link: MqttLink, recorder: Recorder, probe: Probe) -> str:
    """Alerts arrive in order: once this one is in, any duplicate before it would be too."""
    sentinel = raise_alert(link, recorder, "sentinel")
    wait_until(lambda: sentinel.event_id in event_ids(probe), what="the sentinel alert")
    return sentinel.event_id


# --- out ----------------------------------------------------------------------------------------

def test_an_alert_arrives_with_its_json_and_mqtt5_reply_properties(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    probe = Probe(broker, TOPICS.alert)
    link = connected(make_link(config(broker.port)))
    raised = raise_alert(link, recorder)
    [received] = probe.wait_for(TOPICS.alert)
    assert json.loads(received.payload) == {
        "event_id": raised.event_id, "time": json.loads(received.payload)["time"],
        "label": "great_tit", "confidence": 0.91, "margin": 0.42, "frames": 6,
        "model_version": "v1", "reply_to": TOPICS.feedback, "display_name": "great_tit",
        "scientific_name": None}
    assert json.loads(received.payload)["time"].endswith("Z")
    assert (received.qos, received.retain) == (1, False)
    assert received.response_topic == TOPICS.feedback
    assert received.correlation_data == raised.event_id.encode()


def test_the_snapshot_of_the_latest_alert_is_retained(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    link = connected(make_link(config(broker.port)))
    raise_alert(link, recorder)
    wait_until(lambda: link.counters()["outbox_pending"] == 0, what="the outbox to empty")
    late = Probe(broker, TOPICS.snapshot)
    [snapshot] = late.wait_for(TOPICS.snapshot)
    assert (snapshot.payload, snapshot.retain) == (JPEG, True)


def test_status_is_online_while_running_and_offline_after_stop(
        broker: Mosquitto, make_link: Callable[..., MqttLink]) -> None:
    link = connected(make_link(config(broker.port)))
    assert Probe(broker, TOPICS.status).wait_for(TOPICS.status)[0].payload == b"online"
    link.stop()
    [status] = Probe(broker, TOPICS.status).wait_for(TOPICS.status)
    assert (status.payload, status.retain) == (b"offline", True)


def test_visit_model_and_stats_are_published(
        broker: Mosquitto, make_link: Callable[..., MqttLink]) -> None:
    probe = Probe(broker, TOPICS.visit, TOPICS.stats)
    link = connected(make_link(config(broker.port)))
    link.publish_visit(VisitSummary("e1", 1000.0, 1012.5, 40, 12, {"great_tit": 9, "other": 3},
                                    "great_tit", True, "v1"))
    link.publish_model({"version": "v2", "metrics": {"recall": 0.9}})
    visit = json.loads(probe.wait_for(TOPICS.visit)[0].payload)
    assert (visit["duration_s"], visit["votes"], visit["alerted"]) == (
        12.5, {"great_tit": 9, "other": 3}, True)
    wait_until(lambda: link.counters()["published"] >= 1, 10, "the visit's PUBACK")
    link.publish_stats({"spool_bytes": 1234, "spool_samples": 5, "fps": 9.8})
    stats = json.loads(probe.wait_for(TOPICS.stats)[0].payload)
    assert stats["spool_bytes"] == 1234
    assert 1 <= stats["mqtt"]["published"] <= link.counters()["published"]  # the visit's
    [model] = Probe(broker, TOPICS.model).wait_for(TOPICS.model)
    assert model.retain and json.loads(model.payload)["version"] == "v2"


def test_an_mqtt_311_client_gets_json_alerts_and_replies_with_json(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    probe = Probe(broker, TOPICS.alert, protocol="3.1.1")
    link = connected(make_link(config(broker.port, protocol="3.1.1")))
    raised = raise_alert(link, recorder)
    [received] = probe.wait_for(TOPICS.alert)
    reply_to = json.loads(received.payload)["reply_to"]
    probe.publish(reply_to, reply_payload(raised.event_id, "correct"))
    wait_until(lambda: len(recorder.received) == 1, what="the reply")
    assert recorder.received[0].verdict == "correct"


# --- feedback in --------------------------------------------------------------------------------

def test_a_json_reply_reaches_the_handler(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    link = connected(make_link(config(broker.port)))
    raised = raise_alert(link, recorder)
    Probe(broker).publish(TOPICS.feedback, reply_payload(raised.event_id, "not_a_bird"))
    wait_until(lambda: len(recorder.received) == 1, what="the reply")
    assert (recorder.received[0].event_id, recorder.received[0].verdict) == (
        raised.event_id, "not_a_bird")
    counters = link.counters()
    assert (counters["feedback_accepted"], counters["alerts_rejected"]) == (1, 1)


def test_a_native_mqtt5_bare_text_reply_reaches_the_handler(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    probe = Probe(broker, TOPICS.alert)
    link = connected(make_link(config(broker.port)))
    raised = raise_alert(link, recorder)
    [received] = probe.wait_for(TOPICS.alert)
    assert received.response_topic is not None
    probe.publish(received.response_topic, "Not a bird",
                  correlation_data=received.correlation_data)
    wait_until(lambda: len(recorder.received) == 1, what="the reply")
    assert (recorder.received[0].event_id, recorder.received[0].verdict) == (
        raised.event_id, "not_a_bird")


def test_the_not_a_bird_button_rejects_the_latest_alert(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    link = connected(make_link(config(broker.port)))
    raise_alert(link, recorder)
    latest = raise_alert(link, recorder)
    Probe(broker).publish(TOPICS.feedback, BUTTON_PAYLOAD)
    wait_until(lambda: len(recorder.received) == 1, what="the button press")
    assert recorder.received[0].event_id == latest.event_id


def test_a_species_reply_is_spelled_the_models_way(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    link = connected(make_link(config(broker.port), labels=("blue_tit", "great_tit")))
    raised = raise_alert(link, recorder)
    Probe(broker).publish(TOPICS.feedback, "Blue Tit",
                          correlation_data=raised.event_id.encode())
    wait_until(lambda: len(recorder.received) == 1, what="the reply")
    assert recorder.received[0].label == "blue_tit"


def test_bad_replies_are_counted_and_dropped_while_the_link_keeps_working(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="feederd.mqtt")
    link = connected(make_link(config(broker.port), labels=("great_tit", "boom")))
    raised = raise_alert(link, recorder)
    probe = Probe(broker)
    bad: list[tuple[bytes | str, bytes | None]] = [
        (b"x" * 2**20, None),                                            # 1 MB
        (b"\xff\xfe not utf-8", raised.event_id.encode()),
        ("not a bird", None),                                            # no event id
        ('{"event_id": 3, "verdict": "not_a_bird"}', None),
        (json.dumps({"event_id": raised.event_id, "verdict": "perhaps"}), None),
        (reply_payload(new_event_id(), "not_a_bird"), None),             # unknown event
        (reply_payload(raised.event_id, "species", "dodo"), None),       # unknown label
    ]
    for payload, correlation in bad:
        probe.publish(TOPICS.feedback, payload, correlation_data=correlation)
    probe.publish(TOPICS.feedback, reply_payload(raised.event_id, "species", "boom"))  # bug
    probe.publish(TOPICS.feedback, reply_payload(raised.event_id, "correct"))
    wait_until(lambda: link.counters()["feedback_accepted"] == 1, what="the good reply")
    # The handler's bug is counted on the thread that ran it: wait for that, not for luck.
    wait_until(lambda: (link.counters()["feedback_rejected"],
                        link.counters()["feedback_errors"]) == (len(bad), 1),
               what=f"{len(bad)} rejected replies and 1 handler error")
    assert [f.verdict for f in recorder.received] == ["correct"]
    dropped = [r for r in caplog.records if "feedback dropped" in r.getMessage()]
    assert len(dropped) == len(bad) and all("\n" not in r.getMessage() for r in dropped)
    assert link.connected


# --- outages ------------------------------------------------------------------------------------

def test_alerts_raised_while_the_broker_is_down_arrive_once_and_in_order(
        make_broker: Callable[..., Mosquitto], make_link: Callable[..., MqttLink],
        recorder: Recorder) -> None:
    broker = make_broker()
    gate = TcpGate(broker.port)
    link = connected(make_link(config(gate.port)))
    raise_alert(link, recorder)
    wait_until(lambda: link.counters()["outbox_pending"] == 0, what="the first alert to go")
    broker.kill()
    wait_until(lambda: not link.connected, what="the link to notice the outage")
    gate.open = False
    during = [raise_alert(link, recorder).event_id for _ in range(20)]
    broker.start()
    probe = Probe(broker, TOPICS.alert)
    gate.open = True
    wait_until(lambda: len(probe.on(TOPICS.alert)) >= len(during), what="the queued alerts")
    sentinel = send_sentinel_and_wait(link, recorder, probe)
    assert event_ids(probe) == [*during, sentinel]
    assert link.counters()["reconnects"] >= 1
    gate.close()


def test_an_alert_in_flight_when_the_connection_drops_arrives_once(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    gate = TcpGate(broker.port)
    probe = Probe(broker, TOPICS.alert)
    link = connected(make_link(config(gate.port)))
    gate.muted = True  # the broker never sees the next publish, nor its PUBACK comes back
    caught = alert()
    link.publish_alert(caught, None)  # no snapshot: the alert itself is the one in flight
    wait_until(lambda: gate.swallowed > 0, what="the alert to be caught in flight")
    behind = [raise_alert(link, recorder).event_id for _ in range(3)]
    gate.muted = False
    gate.cut()  # paho resends what it had in flight; the outbox must not send it again
    sentinel = send_sentinel_and_wait(link, recorder, probe)
    assert event_ids(probe) == [caught.event_id, *behind, sentinel]
    gate.close()


def test_alerts_queued_by_a_killed_daemon_go_out_after_its_restart(
        tmp_path: Path, make_broker: Callable[..., Mosquitto],
        make_link: Callable[..., MqttLink], recorder: Recorder,
        spawn_link: Callable[[int, Path, str], subprocess.Popen[bytes]]) -> None:
    port = free_port()  # nothing listens yet: the broker is down all along
    outbox = tmp_path / "daemon-outbox.db"
    child = spawn_link(port, outbox, "alerts=8")
    during = [line.decode().strip() for line in _read_lines(child, 8)]
    child.send_signal(signal.SIGKILL)
    child.wait()
    recorder.known.update(during)
    broker = make_broker(port=port)
    probe = Probe(broker, TOPICS.alert)
    link = connected(make_link(config(port), outbox=outbox))
    wait_until(lambda: len(probe.on(TOPICS.alert)) >= len(during), what="the queued alerts")
    sentinel = send_sentinel_and_wait(link, recorder, probe)
    assert event_ids(probe) == [*during, sentinel]


def test_the_last_will_marks_a_killed_daemon_offline(
        broker: Mosquitto, tmp_path: Path,
        spawn_link: Callable[[int, Path, str], subprocess.Popen[bytes]]) -> None:
    child = spawn_link(broker.port, tmp_path / "outbox.db", "connected")
    assert _read_lines(child, 1) == [b"connected\n"]
    probe = Probe(broker, TOPICS.status)
    probe.wait_for(TOPICS.status)
    child.send_signal(signal.SIGKILL)
    child.wait()
    statuses = probe.wait_for(TOPICS.status, 2)
    assert [m.payload for m in statuses] == [b"online", b"offline"]


def test_the_outbox_bound_drops_the_oldest_and_counts_them(
        make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    link = make_link(config(free_port(), outbox_max=3), start=False)
    for _ in range(5):
        link.publish_alert(alert(), None)
    counters = link.counters()
    # Each alert queues itself, presence ON and the last alert; the two retained ones replace
    # their waiting predecessors: 5 + 2 rows, of which the bound keeps 3.
    assert (counters["dropped_outbox"], counters["outbox_pending"]) == (4, 3)


# --- Home Assistant ----------------------------------------------------------------------------

def test_discovery_is_sent_again_when_home_assistant_comes_online(
        broker: Mosquitto, make_link: Callable[..., MqttLink]) -> None:
    # Subscribed before the link connects, so that every config arrives live, once per announce.
    probe = Probe(broker, "homeassistant/+/+/+/config")
    connected(make_link(config(broker.port)))
    configs = "homeassistant/"
    n = len(discovery_messages(config(broker.port), HomeAssistantConfig(), Device("0.1.0")))
    wait_until(lambda: len(_under(probe, configs)) == n, what="the discovery on connect")
    probe.publish("homeassistant/status", "online")
    wait_until(lambda: len(_under(probe, configs)) == 2 * n, what="discovery after the birth")
    assert not any(m.retain for m in _under(probe, configs))  # sent live, not replayed
    late = Probe(broker, "homeassistant/+/+/+/config")
    wait_until(lambda: len(_under(late, configs)) == n, what="the retained discovery")
    assert all(m.retain for m in _under(late, configs))


# --- security -----------------------------------------------------------------------------------

def test_tls_with_the_test_ca_connects(
        make_broker: Callable[..., Mosquitto], make_link: Callable[..., MqttLink],
        pki: Pki, recorder: Recorder) -> None:
    broker = make_broker(pki=pki)
    probe = Probe(broker, TOPICS.alert, ca_certs=str(pki.ca))
    link = connected(make_link(config(broker.port, tls=True, ca_file=str(pki.ca))))
    raise_alert(link, recorder)
    assert len(probe.wait_for(TOPICS.alert)) == 1


def test_tls_with_a_client_certificate_connects(
        make_broker: Callable[..., Mosquitto], make_link: Callable[..., MqttLink],
        pki: Pki) -> None:
    broker = make_broker(pki=pki, require_certificate=True)
    link = connected(make_link(config(broker.port, tls=True, ca_file=str(pki.ca),
                                      cert_file=str(pki.client_cert),
                                      key_file=str(pki.client_key))))
    assert link.connected and link.counters()["connect_failures"] == 0


def test_tls_with_the_wrong_ca_logs_each_failed_attempt_and_keeps_trying(
        make_broker: Callable[..., Mosquitto], make_link: Callable[..., MqttLink],
        pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="feederd.mqtt")
    broker = make_broker(pki=pki)
    link = make_link(config(broker.port, tls=True, ca_file=str(pki.other_ca)))
    wait_until(lambda: link.counters()["connect_failures"] >= 3, what="three attempts")
    link.stop()
    failures = _attempt_lines(caplog)
    assert len(failures) == link.counters()["connect_failures"]
    assert "certificate verify failed" in failures[0] or "certificate check" in failures[0]
    assert not link.connected


def test_a_missing_tls_file_is_an_error_naming_the_key(
        tmp_path: Path, make_link: Callable[..., MqttLink]) -> None:
    link = make_link(config(free_port(), tls=True, ca_file=str(tmp_path / "nope.pem")),
                     start=False)
    with pytest.raises(MqttError, match=r"mqtt\.ca_file: .*nope\.pem does not exist"):
        link.start()


def test_an_unloadable_client_key_is_an_error_naming_the_keys(
        pki: Pki, make_link: Callable[..., MqttLink]) -> None:
    cfg = config(free_port(), tls=True, ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                 key_file=str(pki.server_key))  # not the client certificate's key
    with pytest.raises(MqttError, match=r"mqtt\.cert_file / mqtt\.key_file"):
        make_link(cfg, start=False).start()


def test_the_right_password_connects(
        make_broker: Callable[..., Mosquitto], make_link: Callable[..., MqttLink]) -> None:
    broker = make_broker(users={"feeder": "correct horse"})
    link = connected(make_link(config(broker.port, username="feeder"),
                               password="correct horse"))
    assert link.connected and link.counters()["connect_failures"] == 0


def test_a_wrong_password_is_retried_with_backoff_and_never_logged(
        make_broker: Callable[..., Mosquitto], make_link: Callable[..., MqttLink],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="feederd.mqtt")
    broker = make_broker(users={"feeder": "correct horse"})
    link = make_link(config(broker.port, username="feeder"), password="wrong-battery-staple")
    wait_until(lambda: link.counters()["connect_failures"] >= 3, what="three attempts")
    link.stop()
    failures = _attempt_lines(caplog)
    assert len(failures) == link.counters()["connect_failures"]
    assert "mqtt.username" in failures[0]
    assert "wrong-battery-staple" not in caplog.text


# --- feederd reply ------------------------------------------------------------------------------

def test_send_reply_delivers_a_reply_the_link_accepts(
        broker: Mosquitto, make_link: Callable[..., MqttLink], recorder: Recorder) -> None:
    link = connected(make_link(config(broker.port), labels=("great_tit",)))
    raised = raise_alert(link, recorder)
    send_reply(config(broker.port), "", raised.event_id, "species", "Great tit", timeout=5)
    wait_until(lambda: len(recorder.received) == 1, what="the reply")
    assert (recorder.received[0].verdict, recorder.received[0].label) == ("species",
                                                                          "great_tit")


def test_send_reply_to_an_unreachable_broker_raises_a_clear_error() -> None:
    with pytest.raises(MqttError, match="connection refused"):
        send_reply(config(free_port()), "", new_event_id(), "not_a_bird", None, timeout=5)


def test_probe_broker_says_whether_the_broker_takes_us(
        make_broker: Callable[..., Mosquitto]) -> None:
    broker = make_broker(users={"feeder": "correct horse"})
    probe_broker(config(broker.port, username="feeder"), "correct horse", timeout=5)
    with pytest.raises(MqttError, match=r"Not authorized|Bad user name"):
        probe_broker(config(broker.port, username="feeder"), "nope", timeout=5)


def test_send_reply_with_a_wrong_password_raises_a_clear_error(
        make_broker: Callable[..., Mosquitto]) -> None:
    broker = make_broker(users={"feeder": "correct horse"})
    with pytest.raises(MqttError, match="refused the connection"):
        send_reply(config(broker.port, username="feeder"), "nope", new_event_id(),
                   "not_a_bird", None, timeout=5)


# --- helpers ------------------------------------------------------------------------------------

def _under(probe: Probe, prefix: str) -> list[Any]:
    with probe._lock:
        return [m for m in probe.messages if m.topic.startswith(prefix)]


def _attempt_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "feederd.mqtt" and "cannot connect" in r.getMessage()]


_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from feederd.config import HomeAssistantConfig, MqttConfig
    from feederd.mqtt import MqttLink
    from feederd.types import Alert, new_event_id

    class Ignore:
        def handle(self, feedback):
            pass

    port, outbox, mode = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    cfg = MqttConfig(host="127.0.0.1", port=port, device_id="feeder1",
                     reconnect_min_s=0.05, reconnect_max_s=0.3, keepalive_s=5)
    link = MqttLink(cfg, HomeAssistantConfig(), "", outbox, Ignore(), sw_version="0")
    link.start()
    if mode == "connected":
        while not link.connected:
            time.sleep(0.01)
        print("connected", flush=True)
    else:
        for _ in range(int(mode.split("=")[1])):
            now = time.time()
            event_id = new_event_id(now)
            link.publish_alert(Alert(event_id, now, "great_tit", 0.9, 0.5, 5, "v1"), None)
            print(event_id, flush=True)
    time.sleep(120)
""")


@pytest.fixture
def spawn_link() -> Iterator[Callable[[int, Path, str], subprocess.Popen[bytes]]]:
    """Run a link in a child process (to kill -9 it); children are killed afterwards."""
    children: list[subprocess.Popen[bytes]] = []

    def spawn(port: int, outbox: Path, mode: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(port), str(outbox), mode],
                                 stdout=subprocess.PIPE, env=env)
        children.append(child)
        return child

    yield spawn
    for child in children:
        child.kill()
        child.wait()


def _read_lines(child: subprocess.Popen[bytes], count: int) -> list[bytes]:
    """``count`` lines from the child, failing (not hanging) if they do not come."""
    assert child.stdout is not None
    fd = child.stdout.fileno()  # raw reads: a buffered reader would hide lines from select
    data = b""
    deadline = time.monotonic() + WAIT_S
    while data.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            pytest.fail(f"the child daemon printed {data!r} and then nothing")
        data += chunk
    return data.splitlines(keepends=True)[:count]
