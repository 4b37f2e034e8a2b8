"""OCSF 1.1.0: exact records for a decision and a flow end, verdicts, directions, lifecycle
events and flood summaries."""

from __future__ import annotations

import pytest

from portguard.core.events.flood import DenyAggregator, summary
from portguard.core.events.record import ended_event, lifecycle_event, malformed_event
from portguard.core.policy.model import Action, Decision, Direction
from portguard.log.ocsf import ocsf_record
from tests.events import (
    COMMUNITY_ID,
    NOW,
    OBSERVER,
    V4,
    V6,
    alerted,
    decided,
    flow_end,
    ocsf,
    quarantined,
)

# --- OCSF -----------------------------------------------------------------------------------


def test_ocsf_reject_decision_exactly() -> None:
    assert ocsf(decided()) == {
        "class_uid": 4001,
        "class_name": "Network Activity",
        "category_uid": 4,
        "category_name": "Network Activity",
        "activity_id": 5,
        "type_uid": 400105,
        "activity_name": "Refuse",
        "severity_id": 2,
        "severity": "Low",
        "time": 1795798800123,
        "message": "matched rule",
        "metadata": {
            "version": "1.1.0",
            "product": {"name": "portguard", "vendor_name": "portguard", "version": "0.1.0"},
            "profiles": ["security_control"],
            "log_name": "portguard.decision",
        },
        "device": {"hostname": "gw1"},
        "unmapped": {
            "portguard": {"flow_id": "2a", "reason": "matched rule", "policy_version": "v1"}
        },
        "action_id": 2,
        "action": "Denied",
        "disposition_id": 2,
        "disposition": "Blocked",
        "firewall_rule": {
            "uid": "block-25",
            "name": "block-25",
            "category": "10-isp.toml",
            "desc": "no direct mail",
        },
        "connection_info": {
            "protocol_num": 6,
            "protocol_name": "tcp",
            "protocol_ver_id": 4,
            "direction_id": 2,
            "direction": "Outbound",
            "community_uid": COMMUNITY_ID,
            "uid": "2a",
        },
        "src_endpoint": {"ip": "100.64.10.10", "port": 40312},
        "dst_endpoint": {"ip": "198.51.100.25", "port": 25},
    }


@pytest.mark.parametrize(
    ("action", "activity", "action_id", "disposition_id", "severity_id"),
    [
        (Action.ALLOW, 1, 1, 1, 1),
        (Action.LOG, 1, 1, 1, 2),
        (Action.REJECT, 5, 2, 2, 2),
        (Action.DROP, 5, 2, 6, 2),
    ],
)
def test_ocsf_verdicts(
    action: Action, activity: int, action_id: int, disposition_id: int, severity_id: int
) -> None:
    record = ocsf(decided(action))
    assert (record["activity_id"], record["type_uid"]) == (activity, 400100 + activity)
    assert (record["action_id"], record["disposition_id"]) == (action_id, disposition_id)
    assert record["severity_id"] == severity_id


def test_ocsf_ipv6_and_directions() -> None:
    record = ocsf(decided(key=V6))
    assert record["connection_info"]["protocol_ver_id"] == 6
    assert record["src_endpoint"]["ip"] == "2001:db8:64:10::10"
    event = decided()
    for direction, wanted in [("inbound", 1), ("internal", 3), ("external", 99)]:
        event["network"]["direction"] = direction
        assert ocsf_record(event)["connection_info"]["direction_id"] == wanted


def test_ocsf_ended_connection_is_a_reset() -> None:
    deny = Decision(Action.DROP, "block-25", "10-isp.toml", "", "matched")
    record = ocsf(ended_event(deny, V4, Direction.OUTBOUND, "v2", OBSERVER, NOW))
    assert (record["activity_id"], record["activity_name"]) == (3, "Reset")
    assert "desc" not in record["firewall_rule"]


def test_ocsf_malformed_packet_has_no_endpoints() -> None:
    record = ocsf(malformed_event("truncated", Action.DROP, 3, OBSERVER, NOW))
    assert (record["class_uid"], record["activity_id"], record["type_uid"]) == (4001, 99, 400199)
    assert "src_endpoint" not in record and record["disposition"] == "Dropped"


def test_ocsf_flood_summary_carries_count_and_times() -> None:
    record = ocsf(summary(decided(), "2026-11-27T16:59:00.000000Z", 12))
    assert record["count"] == 12
    assert (record["start_time"], record["end_time"]) == (1795798740000, 1795798800123)


def test_ocsf_summary_keeps_its_destinations_unmapped() -> None:
    """OCSF Network Activity has no distinct-destination count: unmapped.portguard has it."""
    floods = DenyAggregator(60.0)
    floods.admit(decided(), NOW)
    floods.admit(decided(), NOW + 1)
    [summary_event] = floods.flush_all()
    record = ocsf(summary_event)
    assert record["count"] == 2
    destinations = record["unmapped"]["portguard"]["aggregate"]["destinations"]
    assert (destinations["count"], destinations["sample"]) == (1, ["198.51.100.25:25"])


@pytest.mark.parametrize(
    ("action", "activity", "status_id", "severity_id"),
    [
        ("start", 3, 1, 2),
        ("stop", 4, 1, 2),
        ("hook-installed", 6, 1, 2),
        ("hook-removed", 7, 1, 2),
        ("reload", 99, 1, 2),
        ("reload-warning", 99, 1, 3),
        ("reload-failed", 99, 2, 4),
    ],
)
def test_ocsf_lifecycle_is_application_lifecycle(
    action: str, activity: int, status_id: int, severity_id: int
) -> None:
    record = ocsf(lifecycle_event(action, "text", OBSERVER, NOW, policy_version="abc"))
    assert (record["class_uid"], record["category_uid"]) == (6002, 6)
    assert (record["activity_id"], record["type_uid"]) == (activity, 600200 + activity)
    assert (record["status_id"], record["severity_id"]) == (status_id, severity_id)
    assert record["app"] == {"name": "portguard", "vendor_name": "portguard", "version": "0.1.0"}
    assert record["unmapped"]["portguard"] == {"policy_version": "abc"}
    assert record["message"] == "text"


def test_ocsf_flow_end_exactly() -> None:
    assert ocsf(flow_end()) == {
        "class_uid": 4001,
        "class_name": "Network Activity",
        "category_uid": 4,
        "category_name": "Network Activity",
        "activity_id": 2,
        "type_uid": 400102,
        "activity_name": "Close",
        "severity_id": 1,
        "severity": "Informational",
        "time": 1795798800123,
        "message": "connection ended",
        "metadata": {
            "version": "1.1.0",
            "product": {"name": "portguard", "vendor_name": "portguard", "version": "0.1.0"},
            "profiles": ["security_control"],
            "log_name": "portguard.flow",
        },
        "device": {"hostname": "gw1"},
        "unmapped": {"portguard": {"flow_id": "2a", "policy_version": "v7"}},
        "action_id": 1,
        "action": "Allowed",
        "disposition_id": 1,
        "disposition": "Allowed",
        "firewall_rule": {"uid": "smarthost", "name": "smarthost", "category": "10-isp.toml"},
        "connection_info": {
            "protocol_num": 6,
            "protocol_name": "tcp",
            "protocol_ver_id": 4,
            "direction_id": 2,
            "direction": "Outbound",
            "community_uid": COMMUNITY_ID,
            "uid": "2a",
        },
        "src_endpoint": {"ip": "100.64.10.10", "port": 40312},
        "dst_endpoint": {"ip": "198.51.100.25", "port": 25},
        "traffic": {
            "packets_out": 12,
            "packets_in": 9,
            "packets": 21,
            "bytes_out": 4321,
            "bytes_in": 876,
            "bytes": 5197,
        },
        "start_time": 1795798740000,
        "end_time": 1795798801501,
        "duration": 61500,
    }


def test_ocsf_flow_end_without_rule_counters_or_times() -> None:
    record = ocsf(flow_end(origin=None, counted=False, start_ns=None, stop_ns=None))
    assert (record["class_uid"], record["type_uid"], record["activity_name"]) == (
        4001,
        400102,
        "Close",
    )
    assert (record["action_id"], record["disposition_id"]) == (1, 1)
    assert record["metadata"]["profiles"] == ["security_control"]
    assert record["unmapped"] == {"portguard": {}}
    assert "uid" not in record["connection_info"]
    absent = {"firewall_rule", "traffic", "start_time", "end_time", "duration", "count"}
    assert absent & set(record) == set()


def test_ocsf_flow_end_with_a_start_but_no_end() -> None:
    record = ocsf(flow_end(stop_ns=None))
    assert record["start_time"] == 1795798740000
    assert "end_time" not in record and "duration" not in record


def test_ocsf_alert_is_a_detection_finding() -> None:
    record = ocsf_record(alerted())
    assert (record["class_uid"], record["activity_id"], record["type_uid"]) == (2004, 1, 200401)
    assert record["category_uid"] == 2 and record["status"] == "New"
    info = record["finding_info"]
    assert info["analytic"]["uid"] == "fanout" and info["types"] == ["fanout-detected"]
    assert info["last_seen_time"] - info["first_seen_time"] == 60_000
    assert [e["dst_endpoint"]["ip"] for e in record["evidences"]] == [
        "198.51.100.25", "198.51.100.26", "198.51.100.27"]  # fmt: skip
    assert {e["src_endpoint"]["ip"] for e in record["evidences"]} == {"100.64.10.10"}
    assert record["count"] == 4
    assert record["unmapped"]["portguard"]["detection"]["distinct"] == 3


def test_ocsf_quarantine_change_is_application_lifecycle() -> None:
    record = ocsf_record(quarantined())
    assert record["class_uid"] == 6002
    assert record["unmapped"]["portguard"]["quarantine"]["detector"] == "fanout"
