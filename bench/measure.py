"""Small pure helpers of the lab benchmarks: waiting for a counter to settle, reading a rule's
packet counter from `iptables -v -S`, percentiles and CDFs of samples, medians of rounds.
Unit-tested in tests/unit/test_bench_measure.py.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable, Sequence


def settle(
    count: Callable[[], int],
    target: int,
    quiet: float = 1.0,
    limit: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Poll `count()` until it reaches `target` or stops changing for `quiet` seconds (at most
    `limit` seconds); the last value."""
    value, changed = count(), clock()
    deadline = changed + limit
    while value < target and clock() < deadline:
        sleep(0.1)
        fresh = count()
        if fresh != value:
            value, changed = fresh, clock()
        elif clock() - changed > quiet:
            break
    return value


_COUNTER = re.compile(r" -c (\d+) (\d+)(?= |$)")


def rule_packets(listing: str, comment: str) -> int:
    """The packet counter of the rule carrying `-m comment --comment COMMENT` in an
    `iptables -v -S` listing (its `-c PACKETS BYTES`); 0 when it has not counted yet.
    LookupError when no rule carries the comment."""
    marker = f"--comment {comment}"
    for line in listing.splitlines():
        words = line.split()
        if line.startswith("-A ") and marker in line and comment in words:
            found = _COUNTER.search(line)
            return int(found[1]) if found else 0
    raise LookupError(f"no rule with the comment {comment!r}")


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile (0-1) of `samples`, interpolated between the closest ranks
    (what numpy calls "linear")."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * fraction
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def cdf(samples: Sequence[float], points: int = 200) -> list[tuple[float, float]]:
    """(value, fraction of samples at or below it) at up to `points` evenly spaced ranks, the
    smallest and the largest sample included: enough to draw the curve, small to store."""
    ordered = sorted(samples)
    if not ordered:
        return []
    count = len(ordered)
    ranks = sorted({round(i * (count - 1) / max(1, points - 1)) for i in range(points)})
    return [(ordered[r], (r + 1) / count) for r in ranks]


def median_int(values: Sequence[int]) -> int:
    """The median, rounded down to a whole number (of packets, events)."""
    return int(statistics.median_low(values)) if values else 0


def ratio(value: float, base: float) -> float | None:
    """`value / base`, None when there is no base to compare with."""
    return value / base if base > 0 else None
