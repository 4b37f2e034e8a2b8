"""bench/sweep.py: when a rate sweep stops, where it bisects, and which rate it reports."""

from __future__ import annotations

from dataclasses import dataclass

from bench import sweep


@dataclass(frozen=True)
class Step:
    rate: int
    keeps_up: bool
    short: bool = False  # the clients could not offer the rate


def steps(*pairs: tuple[int, bool]) -> list[Step]:
    return [Step(rate, good) for rate, good in pairs]


def test_saturated_after_two_losing_rates_in_a_row_only() -> None:
    assert not sweep.saturated([])
    assert not sweep.saturated(steps((1000, False)))
    assert not sweep.saturated(steps((1000, False), (2000, True)))
    assert sweep.saturated(steps((1000, True), (2000, False), (3000, False)))


def test_saturated_can_count_rates_the_clients_could_not_offer() -> None:
    short = [Step(1000, True, short=True), Step(2000, True, short=True)]
    assert not sweep.saturated(short)
    assert sweep.saturated(short, lambda s: not s.keeps_up or s.short)


def test_midpoint_between_the_last_good_and_the_first_bad_rate() -> None:
    found = steps((2000, True), (5000, True), (10000, False), (20000, False))
    assert sweep.midpoint(found) == 7500
    assert sweep.midpoint(found, unit=1000) == 7000


def test_midpoint_none_without_a_good_and_a_bad_rate_or_when_close_enough() -> None:
    assert sweep.midpoint(steps((2000, True), (5000, True))) is None
    assert sweep.midpoint(steps((2000, False), (5000, False))) is None
    assert sweep.midpoint(steps((10000, True), (10400, False))) is None  # within 5 %
    assert sweep.midpoint(steps((10000, True), (10400, False)), resolution=0.01) == 10200
    assert sweep.midpoint(steps((100, True), (140, False))) is None  # within one unit


def test_midpoint_ignores_a_bad_rate_below_the_best_good_one() -> None:
    """A round that lost at 5,000/s (noise) while 8,000/s kept up: the edge is above 8,000."""
    found = steps((5000, False), (8000, True), (12000, False))
    assert sweep.midpoint(found) == 10000


def test_highest_without_loss_is_the_best_good_step() -> None:
    found = steps((5000, True), (8000, False), (7000, True), (9000, False))
    best = sweep.highest_without_loss(found)
    assert best is not None and best.rate == 7000
    assert sweep.highest_without_loss(steps((1000, False))) is None


def test_ladder_climbs_until_saturated_then_bisects_each_edge() -> None:
    edges = {"slow": 6000, "fast": 30000}
    asked: list[tuple[str, int]] = []

    def runner(name: str):  # type: ignore[no-untyped-def]
        def run(rate: int) -> Step:
            asked.append((name, rate))
            return Step(rate, rate <= edges[name])

        return run

    rates = [2000, 5000, 10000, 20000, 40000, 80000]
    found = sweep.ladder({n: runner(n) for n in edges}, rates, refine=3, describe=repr)
    assert [s.rate for s in found["slow"]] == [2000, 5000, 5600, 6250, 7500, 10000, 20000]
    assert [s.rate for s in found["fast"]] == [
        2000,
        5000,
        10000,
        20000,
        30000,
        32500,
        35000,
        40000,
        80000,
    ]
    best = sweep.highest_without_loss(found["slow"])
    assert best is not None and best.rate == 5600
    # set-ups alternate at every rate of the climb; the bisection comes after
    assert asked[:6] == [
        ("slow", 2000),
        ("fast", 2000),
        ("slow", 5000),
        ("fast", 5000),
        ("slow", 10000),
        ("fast", 10000),
    ]
