"""Flood control: identical denies in a window become one logged event plus one summary."""

from __future__ import annotations

import tracemalloc

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portguard.core.events.destinations import WindowDestinations
from portguard.core.events.flood import DenyAggregator, deny_key, represented
from portguard.core.events.record import (
    Event,
    Observer,
    address_text,
    decision_event,
    ended_event,
    lifecycle_event,
    malformed_event,
    timestamp,
)
from portguard.core.policy.model import Action, Decision, Direction

OBSERVER = Observer("gw1", "0.1.0")
NOW = 1795798800.0  # 2026-11-27T17:00:00Z
SUBSCRIBER = 0x64400A0A  # 100.64.10.10
OTHER = 0x64400A0B  # 100.64.10.11
MX = 0xC6336419  # 198.51.100.25


def decided(
    now: float,
    src: int = SUBSCRIBER,
    rule: str = "block-25",
    action: Action = Action.REJECT,
    sport: int = 40312,
) -> Event:
    decision = Decision(action, rule, "10-isp.toml", "", f"matched rule {rule!r}")
    key = (4, src, MX, sport, 25)
    return decision_event(decision, key, f"f{sport}", Direction.OUTBOUND, "v1", OBSERVER, now)


def tried(now: float, dst: int, dport: int = 25, sport: int = 40312) -> Event:
    """A deny of block-25 from the subscriber to `dst`:`dport`."""
    event = decided(now, sport=sport)
    destination = {"ip": address_text(4, dst), "port": dport}
    return {**event, "destination": destination}


def without(fields: dict[str, object], key: str) -> dict[str, object]:
    return {name: value for name, value in fields.items() if name != key}


def denies_represented(events: list[Event]) -> int:
    return sum(represented(e) for e in events if deny_key(e) is not None)


def test_the_first_deny_is_logged_at_once_and_unchanged() -> None:
    floods = DenyAggregator()
    event = decided(NOW)
    assert floods.admit(event, NOW) == [event]
    assert "aggregate" not in event["portguard"]


def test_repeats_are_suppressed_then_summarised_when_the_window_closes() -> None:
    floods = DenyAggregator(window=60.0)
    first, second, third = (decided(NOW + t, sport=40000 + t) for t in (0, 10, 20))
    assert floods.admit(first, NOW) == [first]
    assert floods.admit(second, NOW + 10) == []
    assert floods.admit(third, NOW + 20) == []
    assert floods.flush(NOW + 59.9) == []
    [summary] = floods.flush(NOW + 60)
    assert without(summary["portguard"]["aggregate"], "destinations") == {
        "count": 3,
        "first": timestamp(NOW),
        "last": timestamp(NOW + 20),
        "suppressed": 2,
        "kernel": 0,
    }
    assert summary["@timestamp"] == timestamp(NOW + 20)
    assert summary["event"]["start"] == timestamp(NOW)
    assert summary["event"]["end"] == timestamp(NOW + 20)
    assert summary["event"]["type"] == ["connection", "denied"]
    assert summary["source"]["port"] == 40020  # a copy of the last deny
    assert "aggregate" not in third["portguard"] and "start" not in third["event"]
    assert len(floods) == 0 and floods.suppressed == 2
    assert summary["portguard"]["aggregate"]["destinations"] == {
        "count": 1, "exact": True, "addresses": ["198.51.100.25"],
        "ports": [25], "port_attempts": [3], "sample": ["198.51.100.25:25"],
    }  # fmt: skip


def test_the_summary_names_the_destinations_of_the_whole_window() -> None:
    floods = DenyAggregator(window=60.0)
    attempts = [(MX, 25), (MX + 1, 25), (MX, 587), (MX + 2, 25), (MX + 1, 25)]
    for t, (dst, dport) in enumerate(attempts):
        floods.admit(tried(NOW + t, dst, dport, 40000 + t), NOW + t)
    [summary] = floods.flush_all()
    aggregate = summary["portguard"]["aggregate"]
    assert (aggregate["count"], aggregate["suppressed"]) == (5, 4)
    assert aggregate["destinations"] == {
        "count": 3, "exact": True,
        "addresses": ["198.51.100.25", "198.51.100.26", "198.51.100.27"],
        "ports": [25, 587], "port_attempts": [4, 1],  # the first deny's port 25 included
        "sample": ["198.51.100.25:25", "198.51.100.26:25", "198.51.100.27:25"],
    }  # fmt: skip
    assert sum(aggregate["destinations"]["port_attempts"]) == aggregate["count"]


def test_past_100_destinations_a_window_counts_them_in_a_sketch() -> None:
    floods = DenyAggregator(window=60.0)
    for i in range(300):
        floods.admit(tried(NOW + i / 10, MX + i, 25, 40000 + i), NOW + i / 10)
    [summary] = floods.flush_all()
    destinations = summary["portguard"]["aggregate"]["destinations"]
    assert destinations["exact"] is False and "addresses" not in destinations
    assert 285 <= destinations["count"] <= 315  # an estimate: ~3 % standard error
    assert len(destinations["sample"]) == 10 and destinations["port_attempts"] == [300]
    assert len(orjson.dumps(summary)) < 4096  # a syslog message fits: no 300 addresses


def test_a_full_window_costs_a_bounded_number_of_bytes() -> None:
    """The bytes one window adds (docs/logging.md): ~0.6 KB for one destination, at most
    ~13 KB (100 kept IPv6 addresses), ~2.3 KB as a sketch."""

    def cost(count: int, v6: bool) -> float:
        tracemalloc.start()
        kept = [WindowDestinations() for _ in range(20)]
        for n, window in enumerate(kept):
            for i in range(count):
                address = f"2001:db8:{n:x}:{i:x}::25:{i:x}" if v6 else f"198.51.{n}.{i}"
                window.add(address, 25)
        used = tracemalloc.get_traced_memory()[0] / len(kept)
        tracemalloc.stop()
        return used

    assert cost(1, False) < 1024
    assert cost(100, True) < 16 * 1024 and cost(100, False) < 16 * 1024
    assert cost(500, True) < 3 * 1024


def test_a_lone_deny_emits_no_summary() -> None:
    floods = DenyAggregator(window=60.0)
    floods.admit(decided(NOW), NOW)
    assert floods.flush(NOW + 61) == []
    assert len(floods) == 0


def test_a_deny_after_the_window_opens_a_new_one_and_is_logged() -> None:
    floods = DenyAggregator(window=60.0)
    floods.admit(decided(NOW), NOW)
    floods.admit(decided(NOW + 1), NOW + 1)
    late = decided(NOW + 70)
    out = floods.admit(late, NOW + 70)  # admit closes the old window first
    assert [represented(e) for e in out] == [1, 1]
    assert out[0]["portguard"]["aggregate"]["count"] == 2
    assert out[1] is late


def test_ten_thousand_denies_in_a_minute_are_a_few_lines_that_add_up() -> None:
    floods = DenyAggregator(window=60.0)
    lines: list[Event] = []
    last_flush = NOW
    for i in range(10_000):
        now = NOW + i * 60.0 / 10_000
        lines += floods.admit(decided(now, sport=1024 + i % 60000), now)
        if now - last_flush >= 1.0:  # the daemon's once-a-second tick
            last_flush = now
            lines += floods.flush(now)
    lines += floods.flush(NOW + 61)
    lines += floods.flush_all()
    assert len(lines) <= 36
    assert len(lines) == 2  # in practice: the first deny and one summary
    assert denies_represented(lines) == 10_000
    assert lines[1]["portguard"]["aggregate"]["count"] == 10_000


def test_sources_rules_and_actions_are_aggregated_separately() -> None:
    floods = DenyAggregator(window=60.0)
    variants = [
        (SUBSCRIBER, "block-25", Action.REJECT),
        (OTHER, "block-25", Action.REJECT),
        (SUBSCRIBER, "block-465", Action.REJECT),
        (SUBSCRIBER, "block-25", Action.DROP),
    ]
    logged: list[Event] = []
    for t in range(5):
        for src, rule, action in variants:
            logged += floods.admit(decided(NOW + t, src, rule, action), NOW + t)
        assert len(logged) == len(variants)  # only each key's first deny
    summaries = floods.flush(NOW + 60)
    keys = {deny_key(e) for e in summaries}
    assert keys == {deny_key(e) for e in logged} and len(keys) == 4
    assert all(e["portguard"]["aggregate"]["count"] == 5 for e in summaries)


def test_the_key_cap_closes_the_oldest_window_early_and_keeps_its_count() -> None:
    floods = DenyAggregator(window=60.0, max_keys=2)
    for src in (SUBSCRIBER, OTHER):
        floods.admit(decided(NOW, src=src), NOW)
        floods.admit(decided(NOW + 1, src=src), NOW + 1)
    third = decided(NOW + 2, src=0x64400A0C)
    out = floods.admit(third, NOW + 2)
    assert len(floods) == 2
    assert out[0]["source"]["ip"] == "100.64.10.10"  # the oldest window, closed early
    assert out[0]["portguard"]["aggregate"]["count"] == 2
    assert out[1] is third
    rest = floods.flush_all()
    assert [e["source"]["ip"] for e in rest] == ["100.64.10.11"]  # the lone third: no summary
    assert len(floods) == 0


def test_allowed_and_lifecycle_events_are_never_delayed() -> None:
    floods = DenyAggregator(window=60.0, max_keys=1)
    floods.admit(decided(NOW), NOW)
    floods.admit(decided(NOW), NOW)
    others = [
        decided(NOW, action=Action.ALLOW),
        decided(NOW, action=Action.ALLOW),  # identical allows are each logged
        decided(NOW, action=Action.LOG),
        lifecycle_event("reload", "policy reloaded", OBSERVER, NOW, policy_version="v2"),
        lifecycle_event("start", "portguard started", OBSERVER, NOW),
    ]
    for event in others:
        assert floods.admit(event, NOW + 1) == [event]
    assert len(floods) == 1 and floods.suppressed == 1


def test_malformed_and_reevaluated_denies_pass_through() -> None:
    floods = DenyAggregator()
    deny = Decision(Action.REJECT, "block-25", "10-isp.toml", "", "matched")
    key = (4, SUBSCRIBER, MX, 40312, 25)
    ended = ended_event(deny, key, Direction.OUTBOUND, "v2", OBSERVER, NOW)
    malformed = malformed_event("truncated", Action.DROP, 3, OBSERVER, NOW)
    for event in (ended, ended, malformed, malformed):
        assert floods.admit(event, NOW) == [event]
    assert len(floods) == 0


@pytest.mark.parametrize(("window", "max_keys"), [(0.0, 10), (-1.0, 10), (60.0, 0)])
def test_bad_settings_are_refused(window: float, max_keys: int) -> None:
    with pytest.raises(ValueError):
        DenyAggregator(window=window, max_keys=max_keys)


arrivals = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=30.0),  # seconds since the previous event
        st.sampled_from([SUBSCRIBER, OTHER, 0x64400A0C]),
        st.sampled_from(["block-25", "block-587"]),
        st.sampled_from([Action.REJECT, Action.DROP, Action.ALLOW]),
        st.booleans(),  # flush (the tick) before this event
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(arrivals, st.floats(min_value=0.5, max_value=90.0), st.integers(1, 4))
def test_every_admitted_deny_is_represented_exactly_once(
    events: list[tuple[float, int, str, Action, bool]], window: float, max_keys: int
) -> None:
    floods = DenyAggregator(window=window, max_keys=max_keys)
    now, admitted, emitted = NOW, 0, []
    allowed = 0
    for gap, src, rule, action, tick in events:
        now += gap
        if tick:
            emitted += floods.flush(now)
        event = decided(now, src=src, rule=rule, action=action)
        admitted += not action.allows
        allowed += action.allows
        emitted += floods.admit(event, now)
        assert len(floods) <= max_keys
    emitted += floods.flush_all()
    assert denies_represented(emitted) == admitted
    assert sum(1 for e in emitted if deny_key(e) is None) == allowed
    assert len(floods) == 0


def test_kernel_hits_join_the_open_window_of_their_key() -> None:
    floods = DenyAggregator(60.0)
    first, second = decided(NOW), decided(NOW + 1, sport=40020)
    assert floods.admit(first, NOW) == [first]
    assert floods.admit(second, NOW + 1) == []
    assert floods.fold(first, 500, timestamp(NOW), timestamp(NOW + 10)) == []
    [summary] = floods.flush_all()
    assert summary["portguard"]["aggregate"]["count"] == 502
    assert summary["portguard"]["aggregate"]["suppressed"] == 501
    assert summary["portguard"]["aggregate"]["kernel"] == 500
    assert denies_represented([first, summary]) == 2 + 500  # decisions + kernel hits
    assert floods.suppressed == 501
    # the kernel's answers went where their key did: the ports' attempts add up to the count
    assert sum(summary["portguard"]["aggregate"]["destinations"]["port_attempts"]) == 502


def test_kernel_hits_without_an_open_window_are_a_summary_of_their_own() -> None:
    floods = DenyAggregator(60.0)
    first = decided(NOW)
    [summary] = floods.fold(first, 7, timestamp(NOW + 1), timestamp(NOW + 11))
    assert summary["portguard"]["aggregate"] == {
        "count": 7, "first": timestamp(NOW + 1), "last": timestamp(NOW + 11),
        "suppressed": 7, "kernel": 7,
    }  # fmt: skip
    assert summary["@timestamp"] == timestamp(NOW + 11)
    assert (summary["event"]["start"], summary["event"]["end"]) == (
        timestamp(NOW + 1), timestamp(NOW + 11))  # fmt: skip
    assert summary["source"] == first["source"] and represented(summary) == 7
    assert len(floods) == 0  # no window opened
