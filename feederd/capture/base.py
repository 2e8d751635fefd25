"""What every frame source promises, and the small parts they share.

The frame loop calls ``read()`` over and over. A source never blocks it for more than about a
second (the loop must keep pinging the systemd watchdog) and never raises because a camera went
away: it returns ``None`` and tries again later. Replayed files and folders say when they are
done through ``finished``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from feederd.types import Frame

logger = logging.getLogger(__name__)

# The longest a read() may wait (for a frame, or for a replay's next frame time).
MAX_BLOCK_S = 1.0


@runtime_checkable
class FrameSource(Protocol):
    """A camera, stream, video file or image folder, as the frame loop sees it."""

    def read(self) -> Frame | None:
        """The next frame, or ``None`` when there is none right now (the caller loops again).

        Never blocks for more than ~1 s.
        """
        ...

    @property
    def finished(self) -> bool:
        """A replayed file or folder reached its end and ``loop`` is off."""
        ...

    @property
    def fps(self) -> float:
        """Nominal frame rate."""
        ...

    def close(self) -> None:
        """Release the camera or file; safe to call twice."""
        ...


class Pacer:
    """Holds a replay to its native speed without busy-waiting or bursting.

    Frame ``n`` is due ``n / fps`` seconds after the first. ``wait`` sleeps only the time that
    remains (at most ``max_block_s``, so a 0.2 fps clip still lets the caller ping its watchdog)
    and reports whether the frame is due. A replay that falls behind (a slow classifier) is not
    made to catch up in a burst: the schedule restarts from the late frame.
    """

    def __init__(self, fps: float, *, max_block_s: float = MAX_BLOCK_S,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._period = 1.0 / fps
        self._max_block_s = max_block_s
        self._clock = clock
        self._sleep = sleep
        self._due: float | None = None

    def wait(self) -> bool:
        """Sleep towards the next frame's time; True once it is due (then schedule the next)."""
        now = self._clock()
        if self._due is None:
            self._due = now
        remaining = self._due - now
        if remaining > self._max_block_s:
            self._sleep(self._max_block_s)
            return False
        if remaining > 0:
            self._sleep(remaining)
        elif remaining < -self._period:
            self._due = now
        self._due += self._period
        return True

    def restart(self) -> None:
        """Start a new schedule at the next frame (after a loop or a reconnect)."""
        self._due = None


class Backoff:
    """Exponential reconnect delays: min, 2 x min, 4 x min, ... capped at max."""

    def __init__(self, min_s: float, max_s: float) -> None:
        self._min_s = min_s
        self._max_s = max_s
        self._next_s = min_s

    def next_delay(self) -> float:
        """The delay before the coming attempt; the one after it doubles."""
        delay = self._next_s
        self._next_s = min(self._max_s, self._next_s * 2)
        return delay

    def reset(self) -> None:
        self._next_s = self._min_s
