"""bench/measure.py: settling a counter (fake clock), reading a rule counter, percentiles, CDF."""

from __future__ import annotations

import itertools
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import measure

# `iptables -w -v -S INPUT` in the lab's internet namespace (iptables 1.8.9, nf_tables)
LISTING = """-P INPUT ACCEPT -c 0 0
-A INPUT -d 198.51.100.25/32 -p tcp -m tcp --dport 25 --tcp-flags FIN,SYN,RST,ACK SYN \
-m comment --comment pg-bench-syns -c 173875 7650500
-A INPUT -p tcp -m comment --comment pg-bench-syns-other -c 5 200
"""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_rule_packets_reads_the_counter_of_the_rule_with_the_comment() -> None:
    assert measure.rule_packets(LISTING, "pg-bench-syns") == 173875
    assert measure.rule_packets(LISTING, "pg-bench-syns-other") == 5
    fresh = "-A INPUT -p tcp -m comment --comment pg-bench-syns\n"  # `-S` without `-v`
    assert measure.rule_packets(fresh, "pg-bench-syns") == 0
    with pytest.raises(LookupError):
        measure.rule_packets("-P INPUT ACCEPT -c 0 0\n", "pg-bench-syns")


def test_settle_returns_at_the_target_without_waiting() -> None:
    clock = Clock()
    assert measure.settle(lambda: 10, 10, clock=clock.time, sleep=clock.sleep) == 10
    assert clock.now == 0.0


def test_settle_waits_while_the_count_grows_then_gives_up_when_it_is_quiet() -> None:
    clock = Clock()
    values = iter([1, 2, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5])
    found = measure.settle(
        lambda: next(values), 100, quiet=1.0, clock=clock.time, sleep=clock.sleep
    )
    assert found == 5
    assert 1.0 < clock.now < 1.6  # a second of quiet after the last change (at 0.3 s)


def test_settle_stops_at_the_limit_even_while_the_count_grows() -> None:
    clock, values = Clock(), iter(range(10_000))
    found = measure.settle(
        lambda: next(values), 10**9, limit=2.0, clock=clock.time, sleep=clock.sleep
    )
    assert 15 <= found <= 25 and clock.now == pytest.approx(2.0, abs=0.11)


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=2, max_size=200))
def test_percentile_agrees_with_statistics_quantiles(samples: list[float]) -> None:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    assert measure.percentile(samples, 0.5) == pytest.approx(statistics.median(samples))
    assert measure.percentile(samples, 0.99) == pytest.approx(cuts[98])
    assert measure.percentile(samples, 0.0) == min(samples)
    assert measure.percentile(samples, 1.0) == max(samples)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        measure.percentile([], 0.5)


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=500))
def test_cdf_is_monotone_from_the_smallest_to_the_largest_sample(samples: list[float]) -> None:
    points = measure.cdf(samples, points=50)
    assert points[0][0] == min(samples) and points[-1] == (max(samples), 1.0)
    assert len(points) <= 50
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in itertools.pairwise(points))
    for value, fraction in points:  # the share of samples at or below the value, at least
        assert sum(s <= value for s in samples) / len(samples) >= fraction - 1e-9


def test_median_int_and_ratio() -> None:
    assert measure.median_int([3, 1, 2, 10]) == 2
    assert measure.median_int([]) == 0
    assert measure.ratio(5, 10) == 0.5
    assert measure.ratio(5, 0) is None
