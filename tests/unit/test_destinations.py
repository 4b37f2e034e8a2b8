"""Distinct destinations in bounded memory: exact up to 100, a mergeable sketch past it."""

from __future__ import annotations

import random

import pytest

from portguard.core.events.destinations import (
    KEEP,
    MAX_PORTS,
    REGISTERS,
    DistinctAddresses,
    WindowDestinations,
    sketch_estimate,
    sketch_of,
    sketch_text,
)


def v4(i: int) -> str:
    return f"198.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


def counted(addresses: list[str]) -> DistinctAddresses:
    distinct = DistinctAddresses()
    for address in addresses:
        distinct.add(address)
    return distinct


def test_up_to_100_addresses_are_kept_and_counted_exactly() -> None:
    distinct = counted([v4(i % KEEP) for i in range(1000)])
    assert distinct.exact and distinct.count == KEEP
    assert distinct.fields() == {"count": KEEP, "exact": True,
                                 "addresses": [v4(i) for i in range(KEEP)]}  # fmt: skip


def test_past_100_the_addresses_become_a_sketch() -> None:
    distinct = counted([v4(i) for i in range(KEEP + 1)])
    assert not distinct.exact and distinct.kept is None
    fields = distinct.fields()
    assert set(fields) == {"count", "exact", "sketch"} and fields["exact"] is False
    assert len(sketch_of(fields["sketch"])) == REGISTERS


@pytest.mark.parametrize(("n", "tolerance"), [(150, 0.05), (1000, 0.06), (20_000, 0.1)])
def test_the_estimate_is_close(n: int, tolerance: float) -> None:
    """Deterministic (a fixed hash): these sizes stay within ~3 standard errors."""
    assert abs(counted([v4(i) for i in range(n)]).count - n) <= n * tolerance


def test_repeats_do_not_grow_the_estimate() -> None:
    once = counted([v4(i) for i in range(500)])
    again = counted([v4(i) for _ in range(3) for i in range(500)])
    assert once.count == again.count and once.sketch == again.sketch


def test_merging_windows_equals_counting_every_address_once() -> None:
    """The report's promise: union of summaries == one set of every deny."""
    rng = random.Random(7)
    windows = [[v4(rng.randrange(400)) for _ in range(rng.randrange(1, 150))] for _ in range(30)]
    every = counted([address for window in windows for address in window])
    merged = DistinctAddresses()
    for window in windows:
        fields = counted(window).fields()
        sketch = sketch_of(fields["sketch"]) if "sketch" in fields else None
        merged.merge(fields.get("addresses", []), sketch)
    assert merged.count == every.count and merged.exact == every.exact
    assert merged.sketch == every.sketch


def test_a_small_union_stays_exact() -> None:
    merged = DistinctAddresses()
    merged.merge([v4(1), v4(2)], None)
    merged.merge([v4(2), v4(3)], None)
    assert merged.exact and merged.count == 3


@pytest.mark.parametrize("text", ["", "!!!", sketch_text(bytearray(10)),
                                  sketch_text(bytearray([99] * REGISTERS))])  # fmt: skip
def test_a_bad_sketch_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        sketch_of(text)


def test_an_empty_sketch_counts_nothing() -> None:
    assert sketch_estimate(bytearray(REGISTERS)) == 0


def test_a_window_counts_ports_and_samples_in_order() -> None:
    window = WindowDestinations()
    for i in range(15):
        window.add(v4(i), 587 if i == 3 else 25)
    window.add("2001:db8::25", 25, attempts=4)
    fields = window.fields()
    assert fields["ports"] == [25, 587] and fields["port_attempts"] == [18, 1]
    assert fields["sample"][:4] == ["198.0.0.0:25", "198.0.0.1:25", "198.0.0.2:25",
                                    "198.0.0.3:587"]  # fmt: skip
    assert len(fields["sample"]) == 10 and fields["count"] == 16


def test_ipv6_samples_are_bracketed_and_ports_are_capped() -> None:
    window = WindowDestinations()
    window.add("2001:db8::25", 25)
    for port in range(1000, 1000 + MAX_PORTS + 5):
        window.add("2001:db8::25", port)
    fields = window.fields()
    assert fields["sample"] == ["[2001:db8::25]:25"]
    assert len(fields["ports"]) == MAX_PORTS
