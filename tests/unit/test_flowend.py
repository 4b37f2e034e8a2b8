"""Flow-end events: the ECS fields of an ended connection, checked against the ECS field list."""

from __future__ import annotations

import json
from pathlib import Path

from portguard.core.events.communityid import community_id
from portguard.core.events.flowend import Counters, EndedFlow, FlowOrigin, flow_end_event, iso_ns
from portguard.core.events.record import ECS_VERSION, Observer, decision_event, timestamp
from portguard.core.policy.model import Action, Decision, Direction
from portguard.log import formats

OBSERVER = Observer("gw1", "0.1.0")
NOW = 1795798800.123456  # 2026-11-27T17:00:00.123456Z
START_NS = 1795798740_000001999  # 2026-11-27T16:59:00.000001999Z
STOP_NS = START_NS + 61_500_000_000  # 61.5 s later
V4 = (4, 0x64400A0A, 0xC6336419, 40312, 25)  # 100.64.10.10 -> 198.51.100.25
V6 = (6, 0x20010DB8006400100000000000000010, 0x20010DB8002500000000000000000025, 40312, 587)
ECS_FIELDS = Path(__file__).resolve().parents[1] / "data" / "ecs" / f"ecs_flat_{ECS_VERSION}.json"


def ended(
    key: tuple[int, int, int, int, int] = V4,
    counted: bool = True,
    start_ns: int | None = START_NS,
    stop_ns: int | None = STOP_NS,
) -> EndedFlow:
    version, src, dst, sport, dport = key
    return EndedFlow(
        version=version,
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
        direction=Direction.OUTBOUND,
        original=Counters(12, 4321) if counted else None,
        reply=Counters(9, 876) if counted else None,
        start_ns=start_ns,
        stop_ns=stop_ns,
        mark=0x05000000,
        entry_id=77,
    )


def test_an_ended_ipv4_flow() -> None:
    event = flow_end_event(ended(), OBSERVER, NOW)
    assert event == {
        "@timestamp": "2026-11-27T17:00:00.123456Z",
        "ecs": {"version": ECS_VERSION},
        "log": {"level": "info"},
        "event": {
            "kind": "event",
            "category": ["network"],
            "type": ["connection", "end"],
            "action": "flow-end",
            "outcome": "success",
            "dataset": "portguard.flow",
            "start": "2026-11-27T16:59:00.000001Z",
            "end": "2026-11-27T17:00:01.500001Z",
            "duration": 61_500_000_000,
        },
        "source": {"ip": "100.64.10.10", "port": 40312, "packets": 12, "bytes": 4321},
        "destination": {"ip": "198.51.100.25", "port": 25, "packets": 9, "bytes": 876},
        "network": {
            "transport": "tcp",
            "iana_number": "6",
            "type": "ipv4",
            "direction": "outbound",
            "packets": 21,
            "bytes": 5197,
            "community_id": community_id("100.64.10.10", "198.51.100.25", 40312, 25),
        },
        "observer": OBSERVER.fields(),
    }


def test_an_ended_ipv6_flow() -> None:
    event = flow_end_event(ended(V6), OBSERVER, NOW)
    assert event["source"]["ip"] == "2001:db8:64:10::10"
    assert event["destination"] == {
        "ip": "2001:db8:25::25",
        "port": 587,
        "packets": 9,
        "bytes": 876,
    }
    assert event["network"]["type"] == "ipv6"


def test_without_accounting_or_timestamps_the_counts_and_times_are_left_out() -> None:
    event = flow_end_event(ended(counted=False, start_ns=None, stop_ns=None), OBSERVER, NOW)
    assert event["source"] == {"ip": "100.64.10.10", "port": 40312}
    assert event["destination"] == {"ip": "198.51.100.25", "port": 25}
    assert "packets" not in event["network"] and "bytes" not in event["network"]
    assert not {"start", "end", "duration"} & set(event["event"])


def test_a_start_without_a_usable_stop_has_no_end_or_duration() -> None:
    for stop_ns in (None, START_NS - 1):
        flow = ended(stop_ns=stop_ns)
        assert flow.duration_ns is None
        fields = flow_end_event(flow, OBSERVER, NOW)["event"]
        assert fields["start"] == "2026-11-27T16:59:00.000001Z"
        assert "end" not in fields and "duration" not in fields


def test_the_decision_that_allowed_the_flow() -> None:
    origin = FlowOrigin("smarthost", "10-isp.toml", flow_id="2a", policy_version="v7")
    event = flow_end_event(ended(), OBSERVER, NOW, origin)
    assert event["rule"] == {"id": "smarthost", "ruleset": "10-isp.toml"}
    assert event["portguard"] == {"flow_id": "2a", "policy_version": "v7"}
    bare = flow_end_event(ended(), OBSERVER, NOW, FlowOrigin("smarthost", "10-isp.toml"))
    assert bare["rule"] == {"id": "smarthost", "ruleset": "10-isp.toml"}
    assert "portguard" not in bare
    assert "rule" not in flow_end_event(ended(), OBSERVER, NOW)


def test_iso_ns_is_exact_to_the_microsecond_like_timestamp() -> None:
    assert iso_ns(1795798800_123456000) == timestamp(NOW) == "2026-11-27T17:00:00.123456Z"
    assert iso_ns(1795798800_123456999) == "2026-11-27T17:00:00.123456Z"  # truncated
    assert iso_ns(0) == "1970-01-01T00:00:00.000000Z"


def test_the_flow_key_is_the_decision_key() -> None:
    assert ended(V6).key == V6


def test_the_community_id_joins_the_flow_end_to_its_decision() -> None:
    """The writer adds network.community_id to this event shape, the same as the decision's."""
    allow = Decision(Action.ALLOW, "smarthost", "10-isp.toml", "", "matched")
    decision = decision_event(allow, V4, "2a", Direction.OUTBOUND, "v1", OBSERVER, NOW)
    flow_end = json.loads(formats.render(flow_end_event(ended(), OBSERVER, NOW), "ecs"))
    expected = json.loads(formats.render(decision, "ecs"))["network"]["community_id"]
    assert flow_end["network"]["community_id"] == expected
    assert expected.startswith("1:")
