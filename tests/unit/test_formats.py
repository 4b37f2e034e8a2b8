"""Output formats: ECS JSON, OCSF 1.1.0 JSON and CEF, with exact lines for a decision event
and a flow-end event, and the choice of mapping by event.dataset."""

from __future__ import annotations

import io
import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard.decisionlog.flood import summary
from portguard.decisionlog.flowend import Counters, EndedFlow, FlowOrigin, flow_end_event
from portguard.decisionlog.formats import (
    cef_header_escape,
    cef_value_escape,
    dataset,
    epoch_ms,
    ocsf_record,
    render,
    with_community_id,
)
from portguard.decisionlog.record import (
    Event,
    Observer,
    decision_event,
    ended_event,
    lifecycle_event,
    malformed_event,
)
from portguard.decisionlog.sinks import Sink, prepare, render_line
from portguard.flow.table import Flow, TcpState
from portguard.policy.model import Action, Decision, Direction

OBSERVER = Observer("gw1", "0.1.0")
NOW = 1795798800.123456  # 2026-11-27T17:00:00.123456Z
V4 = (4, 0x64400A0A, 0xC6336419, 40312, 25)  # 100.64.10.10 -> 198.51.100.25:25
V6 = (6, 0x20010DB8006400100000000000000010, 0x20010DB8002500000000000000000025, 40312, 25)
COMMUNITY_ID = "1:OdycsWwxvNC2HezuIzlUEha8Xqw="
START_NS = 1795798740_000001999  # 2026-11-27T16:59:00.000001999Z
STOP_NS = START_NS + 61_500_999_999  # 61.500999999 s later
ORIGIN = FlowOrigin("smarthost", "10-isp.toml", flow_id="2a", policy_version="v7")


def decided(action: Action = Action.REJECT, key: tuple[int, int, int, int, int] = V4) -> Event:
    decision = Decision(action, "block-25", "10-isp.toml", "no direct mail", "matched rule")
    flow = Flow(key, "2a", TcpState.SYN_SENT, NOW, NOW)
    return decision_event(decision, flow, Direction.OUTBOUND, "v1", OBSERVER, NOW)


def flow_end(
    origin: FlowOrigin | None = ORIGIN,
    counted: bool = True,
    start_ns: int | None = START_NS,
    stop_ns: int | None = STOP_NS,
    direction: Direction = Direction.OUTBOUND,
) -> Event:
    """A flow-end event: the client sent 12 packets / 4321 bytes, the server 9 / 876."""
    version, src, dst, sport, dport = V4
    ended = EndedFlow(
        version=version,
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
        direction=direction,
        original=Counters(12, 4321) if counted else None,
        reply=Counters(9, 876) if counted else None,
        start_ns=start_ns,
        stop_ns=stop_ns,
    )
    return flow_end_event(ended, OBSERVER, NOW, origin)


def ocsf(event: Event) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(render(event, "ocsf"))
    return data


# --- ECS ------------------------------------------------------------------------------------


def test_ecs_is_the_json_line_the_sinks_always_wrote() -> None:
    event = decided()
    line = render(event, "ecs")
    assert line == render_line(event)
    assert orjson.loads(line)["network"]["community_id"] == COMMUNITY_ID
    assert "community_id" not in event["network"]  # the caller's event is not changed


def test_unknown_format_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown log format 'gelf'"):
        render(decided(), "gelf")


def test_community_id_only_for_events_with_both_ends() -> None:
    lifecycle = lifecycle_event("start", "started", OBSERVER, NOW)
    assert with_community_id(lifecycle) is lifecycle
    assert with_community_id(decided())["network"]["community_id"] == COMMUNITY_ID


def test_epoch_ms_truncates_microseconds() -> None:
    assert epoch_ms("2026-11-27T17:00:00.123999Z") == 1795798800123
    assert epoch_ms("1970-01-01T00:00:00.000000Z") == 0


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


# --- CEF ------------------------------------------------------------------------------------


def test_cef_reject_decision_exactly() -> None:
    assert render(decided(), "cef") == (
        b"CEF:0|portguard|portguard|0.1.0|reject|SMTP-port connection rejected|5|"
        b"rt=1795798800123 dvchost=gw1 src=100.64.10.10 spt=40312 dst=198.51.100.25 dpt=25 "
        b"proto=TCP act=reject deviceDirection=1 cs1Label=ruleId cs1=block-25 "
        b"cs2Label=ruleset cs2=10-isp.toml cs3Label=communityId "
        b"cs3=1:OdycsWwxvNC2HezuIzlUEha8Xqw\\= cs4Label=policyVersion cs4=v1 externalId=2a "
        b"msg=matched rule"
    )


def test_cef_lifecycle_exactly() -> None:
    event = lifecycle_event("reload-failed", "rules|bad", OBSERVER, NOW, policy_version="a")
    assert render(event, "cef") == (
        b"CEF:0|portguard|portguard|0.1.0|reload-failed|rules\\|bad|7|"
        b"rt=1795798800123 dvchost=gw1 outcome=failure cs4Label=policyVersion cs4=a "
        b"msg=rules|bad"
    )


def test_cef_summary_direction_and_ipv6() -> None:
    event = summary(decided(Action.DROP, V6), "2026-11-27T16:59:00.000000Z", 12)
    event["network"]["direction"] = "inbound"
    fields = parse_cef(render(event, "cef").decode())
    assert fields["header"][4:7] == ["drop", "SMTP-port connection dropped", "5"]
    ext = fields["extension"]
    assert (ext["src"], ext["deviceDirection"]) == ("2001:db8:64:10::10", "0")
    assert (ext["cnt"], ext["start"], ext["end"]) == ("12", "1795798740000", "1795798800123")
    event["network"]["direction"] = "internal"
    assert "deviceDirection" not in parse_cef(render(event, "cef").decode())["extension"]


def test_cef_flow_end_exactly() -> None:
    assert render(flow_end(), "cef") == (
        b"CEF:0|portguard|portguard|0.1.0|flow-end|connection ended|1|"
        b"rt=1795798800123 dvchost=gw1 src=100.64.10.10 spt=40312 dst=198.51.100.25 dpt=25 "
        b"proto=TCP deviceDirection=1 in=4321 out=876 start=1795798740000 end=1795798801501 "
        b"cs1Label=ruleId cs1=smarthost cs2Label=ruleset cs2=10-isp.toml "
        b"cs3Label=communityId cs3=1:OdycsWwxvNC2HezuIzlUEha8Xqw\\= "
        b"cs4Label=policyVersion cs4=v7 externalId=2a"
    )


def test_cef_flow_end_without_rule_counters_or_times() -> None:
    event = flow_end(None, False, None, None, Direction.INBOUND)
    assert render(event, "cef") == (
        b"CEF:0|portguard|portguard|0.1.0|flow-end|connection ended|1|"
        b"rt=1795798800123 dvchost=gw1 src=100.64.10.10 spt=40312 dst=198.51.100.25 dpt=25 "
        b"proto=TCP deviceDirection=0 cs3Label=communityId cs3=1:OdycsWwxvNC2HezuIzlUEha8Xqw\\="
    )


def test_cef_flow_end_with_a_start_but_no_end_and_no_direction() -> None:
    extension = parse_cef(render(flow_end(stop_ns=None), "cef").decode())["extension"]
    assert extension["start"] == "1795798740000" and "end" not in extension
    extension = parse_cef(render(flow_end(direction=Direction.INTERNAL), "cef").decode())[
        "extension"
    ]
    assert "deviceDirection" not in extension and "cnt" not in extension


# CEF's bytesIn ("in") is data flowing from source to destination, bytesOut ("out") from
# destination to source; Elastic's decode_cef processor (x-pack/filebeat/processors/
# decode_cef/keys.ecs.go) maps them back to ECS accordingly.
CEF_TO_ECS = {"in": ("source", "bytes"), "out": ("destination", "bytes")}


def test_cef_bytes_in_and_out_map_back_to_the_ecs_counters() -> None:
    event = flow_end()
    extension = parse_cef(render(event, "cef").decode())["extension"]
    for key, (ecs_object, field) in CEF_TO_ECS.items():
        assert int(extension[key]) == event[ecs_object][field], key
    assert extension["in"] != extension["out"]


def test_cef_value_escapes() -> None:
    assert cef_value_escape("a=b\\c\nd\re|f") == "a\\=b\\\\c\\nd\\re|f"
    assert cef_header_escape("a|b\\c\nd=e") == "a\\|b\\\\c d=e"


def parse_cef(line: str) -> dict[str, Any]:
    """A CEF reader for the tests: header split on unescaped pipes, extension on `key=`."""
    parts: list[str] = []
    rest = line
    for _ in range(7):
        match = re.match(r"((?:[^|\\]|\\.)*)\|", rest)
        assert match is not None, rest
        parts.append(re.sub(r"\\(.)", r"\1", match[1]))
        rest = rest[match.end() :]
    pairs = re.findall(r"(\w+)=((?:[^\\=]|\\.)*?)(?= \w+=|$)", rest)
    unescape = {"n": "\n", "r": "\r"}
    extension = {k: re.sub(r"\\(.)", lambda m: unescape.get(m[1], m[1]), v) for k, v in pairs}
    return {"header": parts, "extension": extension}


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@given(reason=TEXT, description=TEXT.filter(lambda s: "\n" not in s and "\r" not in s))
def test_cef_escaping_round_trips(reason: str, description: str) -> None:
    event = lifecycle_event("reload", description, OBSERVER, NOW)
    event["message"] = description
    parsed = parse_cef(render(event, "cef").decode())
    assert parsed["header"][5] == description
    decision = decided()
    decision["portguard"]["reason"] = reason
    decision["rule"]["ruleset"] = description
    line = render(decision, "cef").decode()
    assert "\n" not in line and "\r" not in line
    extension = parse_cef(line)["extension"]
    assert extension.get("msg", "") == reason  # empty values are left out
    assert extension.get("cs2", "") == description
    assert extension["cs1"] == "block-25"


# --- the mapping follows event.dataset -------------------------------------------------------


def test_dataset_of_each_event_kind() -> None:
    assert dataset(decided()) == "portguard.decision"
    assert dataset(flow_end()) == "portguard.flow"
    assert dataset(lifecycle_event("start", "started", OBSERVER, NOW)) == "portguard.lifecycle"
    assert dataset({"event": {"action": "x"}}) == dataset({}) == ""


def test_a_rule_does_not_make_an_event_a_decision() -> None:
    lifecycle = lifecycle_event("reload", "reloaded", OBSERVER, NOW)
    lifecycle["rule"] = {"id": "block-25", "ruleset": "10-isp.toml"}
    assert ocsf(lifecycle)["class_uid"] == 6002
    assert render(lifecycle, "cef").startswith(b"CEF:0|portguard|portguard|0.1.0|reload|")
    for origin in (ORIGIN, None):  # with or without a rule, a flow end is a Close
        assert ocsf(flow_end(origin))["activity_id"] == 2
        assert parse_cef(render(flow_end(origin), "cef").decode())["header"][4] == "flow-end"


@pytest.mark.parametrize("name", ["portguard.other", None])
def test_an_unknown_dataset_is_rendered_like_a_lifecycle_event(name: str | None) -> None:
    event = lifecycle_event("sink-error", "file sink down", OBSERVER, NOW)
    if name is None:
        del event["event"]["dataset"]
    else:
        event["event"]["dataset"] = name
    event["source"] = {"ip": "100.64.10.10", "port": 40312}  # not a decision for all that
    record = ocsf(event)
    assert (record["class_uid"], record["activity_name"]) == (6002, "sink-error")
    assert record["metadata"].get("log_name") == name
    assert render(event, "cef").startswith(b"CEF:0|portguard|portguard|0.1.0|sink-error|")


# --- the sinks ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["decision", "flow-end"])
@pytest.mark.parametrize("fmt", ["ecs", "ocsf", "cef"])
def test_sink_writes_its_format(fmt: str, kind: str) -> None:
    stream = io.BytesIO()
    event = decided() if kind == "decision" else flow_end()
    Sink("memory", stream, owned=False, fmt=fmt).write(prepare(event))
    written = stream.getvalue()
    assert written.endswith(b"\n") and written.count(b"\n") == 1
    if fmt == "ecs":
        assert orjson.loads(written) == orjson.loads(render_line(event))
    else:
        assert written == render(event, fmt) + b"\n"


def test_sink_with_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        Sink("memory", io.BytesIO(), owned=False, fmt="xml")
