"""SystemdNotifier against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from feederd.notify import SystemdNotifier, watchdog_interval_from_env


class FakeSystemd:
    """The receiving end of ``$NOTIFY_SOCKET``, as PID 1 would hold it."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def receive(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def pending(self) -> list[dict[str, str]]:
        """Every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        try:
            messages = []
            while True:
                try:
                    messages.append(self.receive())
                except BlockingIOError:
                    return messages
        finally:
            self.sock.settimeout(5)


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify.sock"
    fake = FakeSystemd(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield fake
    fake.sock.close()


def test_ready_sends_ready_and_status(systemd: FakeSystemd) -> None:
    SystemdNotifier().ready("camera and model up")
    assert systemd.receive() == {"READY": "1", "STATUS": "camera and model up"}


def test_status_stopping_and_reloading_send_their_fields(systemd: FakeSystemd) -> None:
    notifier = SystemdNotifier()
    notifier.status("3 visits today")
    notifier.stopping()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    assert systemd.receive() == {"STATUS": "3 visits today"}
    assert systemd.receive() == {"STOPPING": "1"}
    reload = systemd.receive()
    assert reload["RELOADING"] == "1"
    assert int(reload["MONOTONIC_USEC"]) >= before


def test_extend_timeout_sends_microseconds(systemd: FakeSystemd) -> None:
    SystemdNotifier().extend_timeout(90)
    assert systemd.receive() == {"EXTEND_TIMEOUT_USEC": "90000000"}


def test_abstract_socket_address_is_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"feederd-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = SystemdNotifier()
        assert notifier.enabled
        notifier.ready()
        assert fake.receive() == {"READY": "1"}
    finally:
        fake.sock.close()


def test_explicit_socket_path_wins_over_the_environment(
        systemd: FakeSystemd, tmp_path: Path) -> None:
    other = FakeSystemd(str(tmp_path / "other.sock"))
    SystemdNotifier(str(tmp_path / "other.sock")).status("here")
    assert other.receive() == {"STATUS": "here"}
    assert systemd.pending() == []
    other.sock.close()


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    notifier = SystemdNotifier()
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    for _ in range(3):
        notifier.ready("x")
        notifier.watchdog()
        notifier.stopping()


def test_watchdog_interval_comes_from_watchdog_usec(
        systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert SystemdNotifier().watchdog_interval == 30.0


def test_watchdog_meant_for_another_pid_is_ignored(
        systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    notifier = SystemdNotifier()
    assert notifier.watchdog_interval is None
    notifier.watchdog()
    assert systemd.pending() == []


def test_watchdog_pid_matching_this_process_enables_the_watchdog() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval_from_env(env) == 2.0
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_from_env({"WATCHDOG_USEC": "soon"}) is None


def test_watchdog_without_an_interval_sends_nothing(systemd: FakeSystemd) -> None:
    notifier = SystemdNotifier()
    for _ in range(1000):
        notifier.watchdog()
    assert systemd.pending() == []


def test_watchdog_called_every_frame_pings_once_per_half_interval(
        systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> None:
    interval = 0.2
    monkeypatch.setenv("WATCHDOG_USEC", str(int(interval * 1_000_000)))
    notifier = SystemdNotifier()
    start = last_call = time.monotonic()
    calls = 0
    while last_call - start < 1.0:  # a frame loop at up to ~1 kHz for one second
        notifier.watchdog()
        last_call = time.monotonic()
        calls += 1
        time.sleep(0.001)
    pings = systemd.pending()
    assert all(message == {"WATCHDOG": "1"} for message in pings)
    # One ping at once, then one per half interval (0.1 s) of calls: ~10 for hundreds of
    # calls. The bound follows from the calls actually made, whatever the machine's speed.
    assert 2 <= len(pings) <= (last_call - start) / (interval / 2) + 1
    assert calls > 2 * len(pings)


def test_ready_restarts_the_watchdog_period(
        systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    notifier = SystemdNotifier()
    notifier.ready()
    notifier.watchdog()  # ready() just reset the watchdog; the next ping is 30 s away
    assert systemd.pending() == [{"READY": "1"}]


def test_a_stalled_loop_sends_no_more_pings(
        systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    notifier = SystemdNotifier()
    notifier.watchdog()
    assert systemd.receive() == {"WATCHDOG": "1"}
    time.sleep(0.3)  # the "loop" stalls: no calls, so nothing is sent however long it waits
    assert systemd.pending() == []
    notifier.watchdog()  # it recovers: the first call pings at once
    assert systemd.receive() == {"WATCHDOG": "1"}


def test_a_vanished_socket_is_logged_once_and_never_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = SystemdNotifier(str(tmp_path / "gone.sock"))
    for _ in range(5):
        notifier.status("anyone there?")
    failures = [r for r in caplog.records if r.name == "feederd.notify"]
    assert len(failures) == 1
    assert "STATUS" in failures[0].getMessage()


def test_a_socket_address_that_is_not_a_path_disables_notifications(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert not SystemdNotifier().enabled
