"""Every event kind conforms to the official ECS field list of the declared ``ecs.version``.

The field list is ``tests/data/ecs/ecs_flat_<version>.json`` (see the README beside it): each
field of an event must be an ECS field of that version, of a matching type, or live under
``portguard.``; ``event.kind/category/type/outcome`` must hold allowed ECS values, and each
category/type pair must be one ECS expects.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from portguard.core.events.flood import DenyAggregator, summary
from portguard.core.events.flowend import Counters, EndedFlow, FlowOrigin, flow_end_event
from portguard.core.events.record import (
    ECS_VERSION,
    LIFECYCLE_KINDS,
    Event,
    Observer,
    decision_event,
    ended_event,
    lifecycle_event,
    malformed_event,
)
from portguard.core.policy.model import Action, Decision, Direction, Limit, LimitResult
from tests.ecs import (
    CUSTOM,
    categorization_problems,
    fits,
    flatten,
    mistyped_fields,
    nonconformities,
    rendered,
    schema,
    unknown_fields,
)
from tests.events import alerted, quarantined

OBSERVER = Observer("gw1", "0.1.0")
NOW = 1795798800.123456
V4 = (4, 0x64400A0A, 0xC6336419, 40312, 25)
V6 = (6, 0x20010DB8006400100000000000000010, 0x20010DB8002500000000000000000025, 40312, 25)


def limited() -> Decision:
    limit = Limit("30/minute", 0.5, 10, "src", 32, 128, Action.REJECT)
    result = LimitResult(False, "100.64.10.10", 0.0, limit)
    return Decision(Action.REJECT, "business-25", "10-isp.toml", "", "over the limit", True, result)


def decisions() -> Iterator[tuple[str, Event]]:
    for action in Action:
        plain = Decision(action, "block-25", "10-isp.toml", "no direct mail", "matched")
        for key in (V4, V6):
            event = decision_event(plain, key, "2a", Direction.OUTBOUND, "v1", OBSERVER, NOW)
            yield f"decision-{action.value}-ipv{key[0]}", event
    yield (
        "decision-limited",
        decision_event(limited(), V4, "2b", Direction.INBOUND, "v1", OBSERVER, NOW),
    )


def events() -> Iterator[tuple[str, Event]]:
    yield from decisions()
    deny = Decision(Action.DROP, "block-25", "10-isp.toml", "", "matched")
    yield "ended", ended_event(deny, V6, Direction.OUTBOUND, "v2", OBSERVER, NOW)
    yield "malformed", malformed_event("truncated TCP header", Action.DROP, 3, OBSERVER, NOW)
    for action in [*LIFECYCLE_KINDS, "packet-error", "events-dropped", "unknown-action"]:
        yield f"lifecycle-{action}", lifecycle_event(action, "text", OBSERVER, NOW, queue=0)
    first = dict(decisions())["decision-reject-ipv4"]
    yield "flood-summary", summary(first, "2026-11-27T16:59:00.000000Z", 12)
    yield from destination_summaries(first)
    yield from flow_ends()
    yield "alert", alerted()
    for action in ("quarantine-added", "quarantine-released", "quarantine-expired"):
        yield action, quarantined(action)
    yield "quarantine-ipv6", quarantined(key=(6, V6[1] >> 64))


def destination_summaries(first: Event) -> Iterator[tuple[str, Event]]:
    """Flood summaries with `portguard.aggregate.destinations`: kept addresses, a sketch."""
    for name, count in (("flood-summary-destinations", 3), ("flood-summary-sketch", 150)):
        floods = DenyAggregator(60.0)
        for n in range(count):
            destination = {"ip": f"198.51.{100 + n // 250}.{n % 250}", "port": 25}
            floods.admit({**first, "destination": destination}, NOW)
        yield name, floods.flush_all()[0]


def flow_ends() -> Iterator[tuple[str, Event]]:
    origin = FlowOrigin("smarthost", "10-isp.toml", "2a", "v1")
    for key in (V4, V6):
        counted = EndedFlow(*key, Direction.OUTBOUND, Counters(12, 4321), Counters(9, 876),
                            int(NOW * 1e9) - 10**9, int(NOW * 1e9))  # fmt: skip
        yield f"flow-end-ipv{key[0]}", flow_end_event(counted, OBSERVER, NOW, origin)
    bare = EndedFlow(*V4, Direction.INBOUND, None, None, None, None)
    yield "flow-end-bare", flow_end_event(bare, OBSERVER, NOW)


CASES = dict(events())


def test_the_field_list_is_the_declared_version() -> None:
    assert schema()["ecs_version"] == ECS_VERSION
    assert len(schema()["fields"]) > 1000  # the whole list, not a hand-picked subset


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_field_is_an_ecs_field_or_custom(name: str) -> None:
    flat = dict(flatten(rendered(CASES[name])))
    assert unknown_fields(rendered(CASES[name])) == []
    assert flat["ecs.version"] == ECS_VERSION


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_value_has_its_ecs_type(name: str) -> None:
    assert mistyped_fields(rendered(CASES[name])) == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_event_categorization_values_are_allowed(name: str) -> None:
    assert categorization_problems(CASES[name]) == []
    assert nonconformities(CASES[name]) == []


def test_the_checks_can_fail() -> None:
    bad = {"event": {"kind": "event"}, "source": {"addr": "x"}, CUSTOM: {"free": 1}}
    flat = dict(flatten(bad))
    assert "source.addr" not in schema()["fields"]
    assert "portguard.free" in flat
    assert "denied" not in schema()["allowed_values"]["event.category"]["process"]
    assert not fits("long", "6") and not fits("keyword", 6)
    assert unknown_fields(bad) == ["source.addr"]
    assert mistyped_fields({"source": {"port": "25"}}) == [("source.port", "25")]
    assert categorization_problems(
        {
            "event": {
                "kind": "event",
                "outcome": "success",
                "category": ["process"],
                "type": ["denied"],
            }
        }
    )
