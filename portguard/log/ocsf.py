"""OCSF 1.1.0 records of the ECS events (the ``ocsf`` output format).

Decisions and flow ends are Network Activity (class 4001) with the security_control profile;
a detector's alert is a Detection Finding (class 2004); lifecycle events are Application
Lifecycle (class 6002). The mapping is chosen by
``event.dataset``; an event of any other dataset is mapped like a lifecycle event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from portguard.core.events.detection import ALERT_DATASET
from portguard.core.events.record import DECISION_DATASET, FLOW_DATASET, LIFECYCLE_DATASET
from portguard.log.ecs import (
    FLOW_END_NAME,
    NS_PER_MS,
    VENDOR,
    Event,
    dataset,
    epoch_ms,
    flood_aggregate,
)

OCSF_VERSION: Final = "1.1.0"
# activity_id of Network Activity (4001)
OCSF_OPEN, OCSF_CLOSE, OCSF_RESET, OCSF_REFUSE, OCSF_OTHER = 1, 2, 3, 5, 99
_ACTIVITY_NAMES = {
    OCSF_OPEN: "Open",
    OCSF_CLOSE: "Close",
    OCSF_RESET: "Reset",
    OCSF_REFUSE: "Refuse",
    OCSF_OTHER: "Other",
}
# verdict -> (action_id, action, disposition_id, disposition, severity_id)
_OCSF_VERDICTS: dict[str, tuple[int, str, int, str, int]] = {
    "allow": (1, "Allowed", 1, "Allowed", 1),
    "log": (1, "Allowed", 1, "Allowed", 2),
    "reject": (2, "Denied", 2, "Blocked", 2),
    "drop": (2, "Denied", 6, "Dropped", 2),
}
_SEVERITY_NAMES = {1: "Informational", 2: "Low", 3: "Medium", 4: "High"}
# ECS network.direction -> OCSF connection_info.direction_id, direction
_OCSF_DIRECTIONS = {
    "inbound": (1, "Inbound"),
    "outbound": (2, "Outbound"),
    "internal": (3, "Lateral"),
    "external": (99, "External"),
}
# lifecycle event.action -> Application Lifecycle (6002) activity_id
_LIFECYCLE_ACTIVITIES = {"start": (3, "Start"), "stop": (4, "Stop")}
_LIFECYCLE_ACTIVITIES |= {"hook-installed": (6, "Enable"), "hook-removed": (7, "Disable")}
_LOG_SEVERITIES = {"debug": 1, "info": 1, "notice": 2, "warning": 3, "error": 4}
# OCSF Network Traffic: *_out = from the initiator (ECS source.*), *_in = its replies
_OCSF_TRAFFIC = {"_out": "source", "_in": "destination", "": "network"}


def ocsf_record(event: Event) -> dict[str, Any]:
    """The OCSF 1.1.0 object of an ECS event (the mapping of its ``event.dataset``)."""
    return _OCSF_MAPPINGS.get(dataset(event), _ocsf_lifecycle)(event)


def ocsf_line(event: Event) -> bytes:
    return orjson.dumps(ocsf_record(event))


def _ocsf_activity(event: Event) -> int:
    fields = event["event"]
    if "end" in fields["type"]:
        return OCSF_RESET  # an allowed connection ended by the gateway after a reload
    if "source" not in event or event["rule"]["id"] == "malformed-packet":
        return OCSF_OTHER  # a malformed packet (its endpoints, when known, are listed)
    return OCSF_OPEN if "allowed" in fields["type"] else OCSF_REFUSE


def _ocsf_network(event: Event) -> dict[str, Any]:
    activity, verdict = _ocsf_activity(event), event["event"]["action"]
    return {
        **_ocsf_class(4001, "Network Activity", 4, "Network Activity", activity),
        "activity_name": _ACTIVITY_NAMES[activity],
        **_ocsf_common(event, _OCSF_VERDICTS[verdict][4], ["security_control"]),
        **_ocsf_outcome(verdict),
        "firewall_rule": _ocsf_rule(event["rule"]),
        "connection_info": _ocsf_connection(event),
        **_ocsf_endpoints(event),
        **_ocsf_count(event),
    }


def _ocsf_flow_end(event: Event) -> dict[str, Any]:
    """An allowed connection that ended: Close, with its traffic and times when known."""
    rule = event.get("rule")
    return {
        **_ocsf_class(4001, "Network Activity", 4, "Network Activity", OCSF_CLOSE),
        "activity_name": _ACTIVITY_NAMES[OCSF_CLOSE],
        **_ocsf_common(event, 1, ["security_control"], FLOW_END_NAME),
        **_ocsf_outcome("allow"),
        **({} if rule is None else {"firewall_rule": _ocsf_rule(rule)}),
        "connection_info": _ocsf_connection(event),
        **_ocsf_endpoints(event),
        **_ocsf_traffic(event),
        **_ocsf_times(event["event"]),
    }


def _ocsf_outcome(verdict: str) -> Event:
    """The security_control profile's action and disposition of a verdict."""
    keys = ("action_id", "action", "disposition_id", "disposition")
    return dict(zip(keys, _OCSF_VERDICTS[verdict], strict=False))  # without the severity


def _ocsf_endpoints(event: Event) -> Event:
    endpoints: Event = {}
    for ecs_key, ocsf_key in (("source", "src_endpoint"), ("destination", "dst_endpoint")):
        if ecs_key in event:
            endpoints[ocsf_key] = {k: v for k, v in event[ecs_key].items() if k in ("ip", "port")}
    return endpoints


def _ocsf_traffic(event: Event) -> Event:
    """OCSF ``traffic`` (Network Traffic) from the ECS counters, when conntrack counted."""
    traffic = {
        f"{field}{suffix}": event[ecs_key][field]
        for field in ("packets", "bytes")
        for suffix, ecs_key in _OCSF_TRAFFIC.items()
        if field in (event.get(ecs_key) or {})
    }
    return {"traffic": traffic} if traffic else {}


def _ocsf_times(fields: Event) -> Event:
    """``start_time``/``end_time`` (ms since the epoch) and ``duration`` (ms) of ECS event.*."""
    times: Event = {}
    for ocsf_key, ecs_key in (("start_time", "start"), ("end_time", "end")):
        if ecs_key in fields:
            times[ocsf_key] = epoch_ms(fields[ecs_key])
    if "duration" in fields:
        times["duration"] = fields["duration"] // NS_PER_MS
    return times


def _ocsf_class(
    class_uid: int, name: str, category: int, category_name: str, activity: int
) -> Event:
    return {
        "class_uid": class_uid,
        "class_name": name,
        "category_uid": category,
        "category_name": category_name,
        "activity_id": activity,
        "type_uid": class_uid * 100 + activity,
    }


def _ocsf_common(event: Event, severity: int, profiles: list[str], message: str = "") -> Event:
    """The attributes of every class; ``message`` when the event has no message or reason."""
    observer = event.get("observer") or {}
    message = event.get("message") or (event.get("portguard") or {}).get("reason", message)
    metadata = {"version": OCSF_VERSION, "product": _ocsf_product(observer), "profiles": profiles}
    if dataset(event):
        metadata["log_name"] = dataset(event)
    return {
        "severity_id": severity,
        "severity": _SEVERITY_NAMES[severity],
        "time": epoch_ms(event["@timestamp"]),
        "message": message,
        "metadata": metadata,
        "device": {"hostname": observer.get("hostname", "")},
        "unmapped": {"portguard": event.get("portguard") or {}},
    }


def _ocsf_product(observer: dict[str, Any]) -> dict[str, str]:
    return {"name": VENDOR, "vendor_name": VENDOR, "version": observer.get("version", "")}


def _ocsf_rule(rule: dict[str, str]) -> dict[str, str]:
    fields = {"uid": rule["id"], "name": rule["id"], "category": rule["ruleset"]}
    if "description" in rule:
        fields["desc"] = rule["description"]
    return fields


def _ocsf_connection(event: Event) -> dict[str, Any]:
    network = event.get("network") or {}
    info: dict[str, Any] = {"protocol_num": 6, "protocol_name": "tcp"}
    if "type" in network:
        info["protocol_ver_id"] = 4 if network["type"] == "ipv4" else 6
    if network.get("direction") in _OCSF_DIRECTIONS:
        info["direction_id"], info["direction"] = _OCSF_DIRECTIONS[network["direction"]]
    if "community_id" in network:
        info["community_uid"] = network["community_id"]
    flow_id = (event.get("portguard") or {}).get("flow_id")
    if flow_id is not None:
        info["uid"] = flow_id
    return info


def _ocsf_count(event: Event) -> Event:
    aggregate = flood_aggregate(event)
    if aggregate is None:
        return {}
    return {
        "count": aggregate["count"],
        "start_time": epoch_ms(aggregate["first"]),
        "end_time": epoch_ms(aggregate["last"]),
    }


def _ocsf_lifecycle(event: Event) -> dict[str, Any]:
    action = event["event"]["action"]
    activity, name = _LIFECYCLE_ACTIVITIES.get(action, (OCSF_OTHER, action))
    severity = _LOG_SEVERITIES.get((event.get("log") or {}).get("level", "info"), 1)
    failed = event["event"].get("outcome") == "failure"
    return {
        **_ocsf_class(6002, "Application Lifecycle", 6, "Application Activity", activity),
        "activity_name": name,
        **_ocsf_common(event, severity, []),
        "status_id": 2 if failed else 1,
        "status": "Failure" if failed else "Success",
        "app": _ocsf_product(event.get("observer") or {}),
    }


def _ocsf_finding(event: Event) -> dict[str, Any]:
    """A detector's alert: Detection Finding (2004), Create, with the sample destinations
    as evidences."""
    fields, rule = event["event"], event["rule"]
    detection = (event.get("portguard") or {}).get("detection") or {}
    source = event["source"]["ip"]
    finding = {
        "uid": f"{rule['id']}:{source}:{epoch_ms(fields['start'])}",
        "title": event.get("message", fields["action"]),
        "desc": rule.get("description", ""),
        "types": [fields["action"]],
        "first_seen_time": epoch_ms(fields["start"]),
        "last_seen_time": epoch_ms(fields["end"]),
        "analytic": {"uid": rule["id"], "name": rule["id"], "type_id": 1, "type": "Rule",
                     "category": rule.get("ruleset", "")},
    }  # fmt: skip
    evidences = [{"src_endpoint": {"ip": source}, "dst_endpoint": {"ip": dst}}
                 for dst in detection.get("samples", [])]  # fmt: skip
    return {
        **_ocsf_class(2004, "Detection Finding", 2, "Findings", 1),
        "activity_name": "Create",
        **_ocsf_common(event, 3, []),
        "status_id": 1,
        "status": "New",
        "finding_info": finding,
        "evidences": evidences or [{"src_endpoint": {"ip": source}}],
        "count": int(detection.get("attempts", 1)),
    }


_OCSF_MAPPINGS: dict[str, Callable[[Event], dict[str, Any]]] = {
    ALERT_DATASET: _ocsf_finding,
    DECISION_DATASET: _ocsf_network,
    FLOW_DATASET: _ocsf_flow_end,
    LIFECYCLE_DATASET: _ocsf_lifecycle,
}
