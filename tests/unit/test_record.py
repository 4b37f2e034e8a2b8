"""ECS records: the decision event of docs/logging.md, lifecycle and malformed-packet events."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard.core.events.record import (
    LIFECYCLE_KINDS,
    Observer,
    Timestamps,
    decision_event,
    lifecycle_event,
    malformed_event,
    timestamp,
)
from portguard.core.packet.model import Endpoints
from portguard.core.policy.model import Action, Decision, Direction

OBSERVER = Observer("gw1", "0.1.0")
NOW = 1795798800.123456  # 2026-11-27T17:00:00.123456Z


def flow(version: int = 4) -> tuple[tuple[int, int, int, int, int], str]:
    """A connection's key and flow id."""
    if version == 4:
        key = (4, 0x64400A0A, 0xC6336419, 40312, 25)
    else:
        key = (6, 0x20010DB8006400100000000000000010, 0x20010DB8002500000000000000000025, 40312, 25)
    return key, "2a"


def decision(action: Action) -> Decision:
    return Decision(action, "block-25", "10-isp.toml", "no direct mail", "matched rule 'block-25'")


def test_timestamp_is_utc_with_microseconds() -> None:
    assert timestamp(NOW) == "2026-11-27T17:00:00.123456Z"


def test_reject_event_has_the_contract_fields() -> None:
    event = decision_event(
        decision(Action.REJECT), *flow(), Direction.OUTBOUND, "abc", OBSERVER, NOW
    )
    assert event["@timestamp"] == "2026-11-27T17:00:00.123456Z"
    assert event["event"] == {
        "kind": "event",
        "category": ["network"],
        "type": ["connection", "denied"],
        "action": "reject",
        "outcome": "success",
        "dataset": "portguard.decision",
    }
    assert event["rule"] == {
        "id": "block-25",
        "ruleset": "10-isp.toml",
        "description": "no direct mail",
    }
    assert event["source"] == {"ip": "100.64.10.10", "port": 40312}
    assert event["destination"] == {"ip": "198.51.100.25", "port": 25}
    assert event["network"]["type"] == "ipv4"
    assert event["network"]["direction"] == "outbound"
    assert event["observer"]["product"] == "portguard"
    assert event["portguard"] == {
        "flow_id": "2a",
        "reason": "matched rule 'block-25'",
        "policy_version": "abc",
    }


def test_allow_and_log_are_allowed_ipv6() -> None:
    for action in (Action.ALLOW, Action.LOG):
        event = decision_event(decision(action), *flow(6), Direction.INBOUND, "v", OBSERVER, NOW)
        assert event["event"]["type"] == ["connection", "allowed"]
        assert event["event"]["action"] == action.value
        assert event["source"]["ip"] == "2001:db8:64:10::10"
        assert event["network"]["type"] == "ipv6"


def test_drop_is_denied() -> None:
    event = decision_event(decision(Action.DROP), *flow(), Direction.OUTBOUND, "v", OBSERVER, NOW)
    assert event["event"]["type"] == ["connection", "denied"]


def test_empty_description_is_left_out() -> None:
    bare = Decision(Action.ALLOW, "default", "default", "", "no rule matched")
    event = decision_event(bare, *flow(), Direction.OUTBOUND, "v", OBSERVER, NOW)
    assert "description" not in event["rule"]


def test_lifecycle_levels() -> None:
    ok = lifecycle_event("reload", "policy reloaded", OBSERVER, NOW, policy_version="x")
    bad = lifecycle_event("reload-failed", "kept the old policy", OBSERVER, NOW, errors=["a:1: b"])
    assert ok["event"]["dataset"] == "portguard.lifecycle"
    assert ok["log"]["level"] == "notice" and ok["portguard"] == {"policy_version": "x"}
    assert bad["log"]["level"] == "error" and bad["event"]["outcome"] == "failure"
    assert bad["portguard"]["errors"] == ["a:1: b"]
    assert ok["event"]["category"] == ["configuration"] and ok["event"]["type"] == ["change"]
    start = lifecycle_event("start", "up", OBSERVER, NOW)
    assert (start["event"]["category"], start["event"]["type"]) == (["process"], ["start"])
    removed = lifecycle_event("hook-removed", "gone", OBSERVER, NOW)
    assert removed["event"]["type"] == ["deletion"]


def test_malformed_event_counts() -> None:
    event = malformed_event("truncated TCP header", Action.DROP, 7, OBSERVER, NOW)
    assert event["event"]["action"] == "drop"
    assert event["portguard"] == {"reason": "malformed packet: truncated TCP header", "count": 7}


def test_malformed_event_names_the_endpoints_it_knows() -> None:
    both = Endpoints(4, 0x64400A0A, 0xC6336419, 40312, 25)
    event = malformed_event("ESP", Action.DROP, 1, OBSERVER, NOW, both)
    assert event["source"] == {"ip": "100.64.10.10", "port": 40312}
    assert event["destination"] == {"ip": "198.51.100.25", "port": 25}
    assert event["network"]["type"] == "ipv4"
    bare = malformed_event("ESP", Action.DROP, 1, OBSERVER, NOW, Endpoints(6, 1, 2))
    assert (bare["source"], bare["destination"]) == ({"ip": "::1"}, {"ip": "::2"})
    assert "source" not in malformed_event("empty", Action.DROP, 1, OBSERVER, NOW)


def test_address_text_matches_ipaddress() -> None:
    import ipaddress

    from portguard.core.events.record import address_text

    for text in (
        "0.0.0.0",
        "100.64.10.10",
        "255.255.255.255",
        "2001:db8::1",
        "::",
        "::ffff:1.2.3.4",
    ):
        address = ipaddress.ip_address(text)
        text_form = address_text(address.version, int(address))
        assert ipaddress.ip_address(text_form) == address
        assert text_form == text  # the conventional (inet_ntop) spelling


def test_timestamp_of_a_whole_second_keeps_microseconds() -> None:
    assert timestamp(1795798800.0) == "2026-11-27T17:00:00.000000Z"


@pytest.mark.parametrize(
    ("action", "level"),
    [(Action.ALLOW, "info"), (Action.LOG, "notice"), (Action.REJECT, "warning"),
     (Action.DROP, "warning")],
)  # fmt: skip
def test_decision_level_follows_the_verdict(action: Action, level: str) -> None:
    decision = Decision(action, "r", "rules.toml", "", "because")
    event = decision_event(decision, *flow(), Direction.OUTBOUND, "v", OBSERVER, NOW)
    assert event["log"] == {"level": level}


def test_every_lifecycle_kind_has_a_known_level() -> None:
    for action in LIFECYCLE_KINDS:
        event = lifecycle_event(action, "m", OBSERVER, NOW)
        assert event["log"]["level"] in {"info", "notice", "warning", "error"}
        assert (event["event"]["outcome"] == "failure") == (event["log"]["level"] == "error")


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_timestamp_matches_datetime_formatting(now: float) -> None:
    # the once-a-second cache must round exactly as datetime does
    moment = dt.datetime.fromtimestamp(now, dt.UTC).replace(tzinfo=None)
    assert timestamp(now) == moment.isoformat(timespec="microseconds") + "Z"
    assert CACHED(now) == timestamp(now)  # one builder's cache, whatever second came before


CACHED = Timestamps()


def test_each_builder_has_its_own_timestamp_cache() -> None:
    first, second = Timestamps(), Timestamps()
    assert second(NOW + 3600) == timestamp(NOW + 3600)
    assert first(NOW) == second(NOW) == timestamp(NOW)  # second's cache moved; first's fresh
    assert first(NOW + 1.5) == timestamp(NOW + 1.5)
