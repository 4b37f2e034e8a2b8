"""A rate sweep for the lab benchmarks: ascending offered rates until a set-up loses packets,
then bisection of the edge; and "the highest rate with nothing lost". Pure (no I/O but the
progress lines `describe` makes); used by bench_logging.py and bench_decisions.py, unit-tested
in tests/unit/test_bench_sweep.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar


class Measured(Protocol):
    """One step of a sweep: the rate asked for and whether the set-up kept up with it."""

    @property
    def rate(self) -> int: ...

    @property
    def keeps_up(self) -> bool: ...


S = TypeVar("S", bound=Measured)


def saturated(steps: Sequence[S], limited: Callable[[S], bool] | None = None) -> bool:
    """Two rates in a row that did not keep up (or that `limited` says got no further, e.g.
    the generator could not offer them): higher rates would teach nothing."""
    failed = limited or (lambda step: not step.keeps_up)
    return len(steps) >= 2 and failed(steps[-1]) and failed(steps[-2])


def midpoint(steps: Sequence[Measured], resolution: float = 0.05, unit: int = 50) -> int | None:
    """A rate between the highest that kept up and the lowest above it that did not, rounded
    down to `unit`; None when there is no such pair or they are within `resolution` (a
    fraction of the good rate, and at least `unit`) of each other."""
    good = [s.rate for s in steps if s.keeps_up]
    bad = [s.rate for s in steps if not s.keeps_up and s.rate > max(good, default=0)]
    if not good or not bad:
        return None
    low, high = max(good), min(bad)
    if high - low <= max(unit, low * resolution):
        return None
    middle = (low + high) // 2 // unit * unit
    return middle if low < middle < high else None


def highest_without_loss(steps: Sequence[S]) -> S | None:
    """The step of the highest rate that kept up, if any (a lower rate that lost counts
    against nothing: the edge is where the last good step is)."""
    good = [s for s in steps if s.keeps_up]
    return max(good, key=lambda s: s.rate, default=None)


Runner = Callable[[int], S]


def ladder(
    runs: Mapping[str, Runner[S]],
    rates: Sequence[int],
    refine: int,
    describe: Callable[[S], str] = str,
    limited: Callable[[S], bool] | None = None,
) -> dict[str, list[S]]:
    """Each set-up at each of `rates` (ascending; set-ups alternate at every rate, so drift
    hits them alike) until it is `saturated`, then `refine` bisection steps at each one's
    edge. Steps sorted by rate; each is printed (`describe`) as it is measured."""
    steps: dict[str, list[S]] = {name: [] for name in runs}

    def measure(name: str, rate: int) -> None:
        steps[name].append(runs[name](rate))
        print(f"  {name}: {describe(steps[name][-1])}", flush=True)

    for rate in sorted(rates):
        for name in runs:
            if not saturated(steps[name], limited):
                measure(name, rate)
    for name in runs:
        for _ in range(refine):
            middle = midpoint(steps[name])
            if middle is None:
                break
            measure(name, middle)
    return {name: sorted(found, key=lambda s: s.rate) for name, found in steps.items()}
