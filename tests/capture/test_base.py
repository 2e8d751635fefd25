"""Pacing a replay to native speed, and reconnect backoff."""

from __future__ import annotations

import pytest

from feederd.capture.base import Backoff, Pacer


class FakeClock:
    """A clock that moves only when something sleeps (or the test advances it)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_pacer_sleeps_only_the_time_left_until_each_frame() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
    assert pacer.wait()  # the first frame is due at once
    clock.now += 0.03  # the caller spent 30 ms on it
    assert pacer.wait()
    assert clock.sleeps == [pytest.approx(0.07)]


def test_pacer_never_sleeps_when_the_caller_is_slower_than_the_clip() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        assert pacer.wait()
        clock.now += 0.15
    assert clock.sleeps == []


def test_pacer_does_not_burst_to_catch_up_after_a_stall() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
    pacer.wait()
    clock.now += 5.0  # a long stall
    assert pacer.wait()
    assert pacer.wait()
    assert clock.sleeps == [pytest.approx(0.1)]


def test_pacer_blocks_at_most_a_second_for_a_slow_clip() -> None:
    clock = FakeClock()
    pacer = Pacer(0.25, clock=clock, sleep=clock.sleep)  # one frame every 4 s
    assert pacer.wait()
    results = [pacer.wait() for _ in range(4)]
    assert results == [False, False, False, True]
    assert max(clock.sleeps) <= 1.0


def test_backoff_doubles_up_to_its_maximum_and_resets() -> None:
    backoff = Backoff(1.0, 5.0)
    assert [backoff.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0
