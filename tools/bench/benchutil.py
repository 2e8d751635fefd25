"""What every benchmark here shares: interleaved rounds, spreads, and one way to print a ratio.

A ratio is only honest when both sides ran on the same input under the same load: each round
runs every side once, in rotating order, after an untimed warm-up of each, and the printed
figure is the median of the rounds with the spread (min / median / max) beside it. Sides that
run one after the other would charge a load spike, a cold cache or a JIT warm-up to one of them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """Minimum, median and maximum of repeated measurements (seconds unless said otherwise)."""

    low: float
    median: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("no measurements")
        return cls(min(values), statistics.median(values), max(values), len(values))

    def show(self, scale: float = 1e3, unit: str = "ms", digits: int = 2) -> str:
        f = f"{{:.{digits}f}}"
        return (f"{f.format(self.median * scale)} {unit} (min {f.format(self.low * scale)}, "
                f"max {f.format(self.high * scale)}, n={self.count})")


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0 < q < 1) by :func:`statistics.quantiles`, inclusive method."""
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[min(98, max(0, round(q * 100) - 1))]


def interleave(sides: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 1,
               clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Time each side ``rounds`` times, one of each per round, the order rotating each round.

    ``clock`` may be :func:`time.process_time` (or a thread's CPU clock) to count CPU seconds
    instead of wall seconds.
    """
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = clock()
            sides[name]()
            times[name].append(clock() - start)
    return times


def ratio_line(label: str, baseline: tuple[str, Sequence[float]],
               measured: tuple[str, Sequence[float]], scale: float = 1e3, unit: str = "ms",
               target: str = "") -> str:
    """``label: baseline X, measured Y, ratio R (spread)`` with per-round ratios' spread."""
    (b_name, b), (m_name, m) = baseline, measured
    ratios = [mi / bi for mi, bi in zip(m, b, strict=True) if bi > 0]
    line = (f"{label}: {b_name} {Spread.of(b).show(scale, unit)} | {m_name} "
            f"{Spread.of(m).show(scale, unit)} | ratio {m_name}/{b_name} "
            f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    return f"{line}; {target}" if target else line
