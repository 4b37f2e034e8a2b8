"""Output formats of the decision log: ECS JSON, OCSF JSON and ArcSight CEF (chosen per sink).

Every event is built once as an ECS dict (`record`); a sink renders it in its format here, as
the bytes of one line without the newline. Pure: no clock, no I/O.

- ``ecs``: the ECS event as JSON (orjson), with ``network.community_id`` added.
- ``ocsf``: OCSF 1.1.0. Decisions and flow ends are Network Activity (class 4001) with the
  security_control profile; lifecycle events are Application Lifecycle (class 6002).
- ``cef``: ``CEF:0|portguard|portguard|version|signature|name|severity|extension``.

The mapping is chosen by ``event.dataset``: ``portguard.decision`` (decisions, flood summaries,
connections ended after a reload, malformed packets), ``portguard.flow`` (flow ends) and
``portguard.lifecycle``; an event of any other dataset is rendered like a lifecycle event.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Final

import orjson

from portguard.decisionlog.communityid import community_id
from portguard.decisionlog.record import DECISION_DATASET, FLOW_DATASET, LIFECYCLE_DATASET

Event = dict[str, Any]
FORMATS: Final = ("ecs", "ocsf", "cef")
OCSF_VERSION: Final = "1.1.0"
VENDOR: Final = "portguard"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NS_PER_MS = 1_000_000


def render(event: Event, fmt: str) -> bytes:
    """One event as the bytes of one line of format ``fmt`` ("ecs", "ocsf" or "cef")."""
    renderer = _RENDERERS.get(fmt)
    if renderer is None:
        raise ValueError(f"unknown log format {fmt!r} (known: {', '.join(FORMATS)})")
    return renderer(with_community_id(event))


def with_community_id(event: Event) -> Event:
    """The event with ``network.community_id`` when it names both ends of a flow."""
    network, src, dst = (event.get(k) for k in ("network", "source", "destination"))
    if network is None or src is None or dst is None or "community_id" in network:
        return event
    if "port" not in src or "port" not in dst:
        return event  # a malformed packet whose TCP ports could not be read
    flow_hash = community_id(src["ip"], dst["ip"], src["port"], dst["port"])
    return {**event, "network": {**network, "community_id": flow_hash}}


def epoch_ms(stamp: str) -> int:
    """An ECS @timestamp ("2026-11-27T17:00:00.123456Z") as milliseconds since the epoch."""
    moment = dt.datetime.fromisoformat(stamp)
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1)


def dataset(event: Event) -> str:
    """The event's ``event.dataset`` ("" when it has none): it selects the OCSF and CEF mapping."""
    return str((event.get("event") or {}).get("dataset", ""))


def _aggregate(event: Event) -> dict[str, Any] | None:
    aggregate = (event.get("portguard") or {}).get("aggregate")
    return aggregate if isinstance(aggregate, dict) else None


# --- ECS ------------------------------------------------------------------------------------


def ecs_line(event: Event) -> bytes:
    return orjson.dumps(event)


# --- OCSF -----------------------------------------------------------------------------------

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
FLOW_END_NAME: Final = "connection ended"


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
        times["duration"] = fields["duration"] // _NS_PER_MS
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
    aggregate = _aggregate(event)
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


_OCSF_MAPPINGS: dict[str, Callable[[Event], dict[str, Any]]] = {
    DECISION_DATASET: _ocsf_network,
    FLOW_DATASET: _ocsf_flow_end,
    LIFECYCLE_DATASET: _ocsf_lifecycle,
}


# --- CEF ------------------------------------------------------------------------------------

_CEF_VERBS = {
    "allow": "allowed",
    "log": "allowed and flagged",
    "reject": "rejected",
    "drop": "dropped",
}
_CEF_VERDICT_SEVERITY = {"allow": 1, "log": 3, "reject": 5, "drop": 5}
_CEF_LOG_SEVERITY = {"debug": 0, "info": 1, "notice": 3, "warning": 5, "error": 7}
_CEF_DIRECTIONS = {"inbound": 0, "outbound": 1}
# CEF in/out are relative to the source: in = source -> destination, out = destination -> source
_CEF_TRAFFIC = (("in", "source"), ("out", "destination"))
_HEADER_ESCAPES = str.maketrans({"\\": "\\\\", "|": "\\|", "\r": " ", "\n": " "})
_VALUE_ESCAPES = str.maketrans({"\\": "\\\\", "=": "\\=", "\r": "\\r", "\n": "\\n"})


def cef_header_escape(text: str) -> str:
    """A CEF header field: backslash and pipe escaped; line breaks become spaces."""
    return text.translate(_HEADER_ESCAPES)


def cef_value_escape(text: str) -> str:
    """A CEF extension value: backslash, equals sign and line breaks escaped."""
    return text.translate(_VALUE_ESCAPES)


def cef_line(event: Event) -> bytes:
    """The event as one CEF:0 line."""
    observer = event.get("observer") or {}
    mapping = _CEF_MAPPINGS.get(dataset(event), _cef_lifecycle)
    signature, name, severity, extension = mapping(event)
    header = [VENDOR, VENDOR, observer.get("version", ""), signature, name, str(severity)]
    pairs = [("rt", str(epoch_ms(event["@timestamp"])))]
    if "hostname" in observer:
        pairs.append(("dvchost", observer["hostname"]))
    pairs += [(key, value) for key, value in extension if value != ""]
    text = "CEF:0|" + "|".join(cef_header_escape(part) for part in header) + "|"
    text += " ".join(f"{key}={cef_value_escape(value)}" for key, value in pairs)
    return text.encode()


CefFields = tuple[str, str, int, list[tuple[str, str]]]  # signature, name, severity, extension


def _cef_connection(event: Event) -> CefFields:
    fields, rule, details = event["event"], event["rule"], event.get("portguard") or {}
    verdict = fields["action"]
    name = "malformed packet" if rule["id"] == "malformed-packet" else "SMTP-port connection"
    name += f" {_CEF_VERBS[verdict]}"
    if "end" in fields["type"]:
        name = "allowed connection ended after a reload"
    pairs = [
        *_cef_endpoints(event),
        ("proto", "TCP"),
        ("act", verdict),
        _cef_direction(event),
        *_cef_origin(event),
        *_cef_count(event),
        ("msg", str(details.get("reason", ""))),
    ]
    return verdict, name, _CEF_VERDICT_SEVERITY[verdict], pairs


def _cef_flow_end(event: Event) -> CefFields:
    """An allowed connection that ended: bytes each way and its times, when known."""
    pairs = [
        *_cef_endpoints(event),
        ("proto", "TCP"),
        _cef_direction(event),
        *_cef_traffic(event),
        *_cef_times(event["event"]),
        *_cef_origin(event),
    ]
    return "flow-end", FLOW_END_NAME, 1, pairs


def _cef_direction(event: Event) -> tuple[str, str]:
    """deviceDirection: 0 inbound, 1 outbound, empty (left out) otherwise."""
    direction = (event.get("network") or {}).get("direction", "")
    return ("deviceDirection", str(_CEF_DIRECTIONS.get(direction, "")))


def _cef_origin(event: Event) -> list[tuple[str, str]]:
    """The rule (cs1, cs2), Community ID (cs3), policy version (cs4) and flow id (externalId)."""
    rule, details = event.get("rule") or {}, event.get("portguard") or {}
    return [
        *_cef_labelled("cs1", "ruleId", rule.get("id")),
        *_cef_labelled("cs2", "ruleset", rule.get("ruleset")),
        *_cef_labelled("cs3", "communityId", (event.get("network") or {}).get("community_id")),
        *_cef_labelled("cs4", "policyVersion", details.get("policy_version")),
        ("externalId", str(details.get("flow_id", ""))),
    ]


def _cef_traffic(event: Event) -> list[tuple[str, str]]:
    """CEF in (bytes source -> destination) and out (destination -> source), when counted."""
    return [
        (key, str(event[ecs_key]["bytes"]))
        for key, ecs_key in _CEF_TRAFFIC
        if "bytes" in (event.get(ecs_key) or {})
    ]


def _cef_times(fields: Event) -> list[tuple[str, str]]:
    """CEF start/end (ms since the epoch) of ECS event.start/event.end."""
    return [(key, str(epoch_ms(fields[key]))) for key in ("start", "end") if key in fields]


def _cef_endpoints(event: Event) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for ecs_key, ip_key, port_key in (("source", "src", "spt"), ("destination", "dst", "dpt")):
        if ecs_key in event:
            pairs.append((ip_key, event[ecs_key]["ip"]))
            if "port" in event[ecs_key]:  # a malformed packet's port may be unknown
                pairs.append((port_key, str(event[ecs_key]["port"])))
    return pairs


def _cef_labelled(key: str, label: str, value: object) -> list[tuple[str, str]]:
    return [] if value is None else [(f"{key}Label", label), (key, str(value))]


def _cef_count(event: Event) -> list[tuple[str, str]]:
    aggregate = _aggregate(event)
    if aggregate is None:
        return []
    return [
        ("cnt", str(aggregate["count"])),
        ("start", str(epoch_ms(aggregate["first"]))),
        ("end", str(epoch_ms(aggregate["last"]))),
    ]


def _cef_lifecycle(event: Event) -> CefFields:
    fields, details = event["event"], event.get("portguard") or {}
    severity = _CEF_LOG_SEVERITY.get((event.get("log") or {}).get("level", "info"), 1)
    pairs = [
        ("outcome", str(fields.get("outcome", ""))),
        *_cef_labelled("cs4", "policyVersion", details.get("policy_version")),
        ("msg", str(event.get("message", ""))),
    ]
    return fields["action"], str(event.get("message", fields["action"])), severity, pairs


_CEF_MAPPINGS: dict[str, Callable[[Event], CefFields]] = {
    DECISION_DATASET: _cef_connection,
    FLOW_DATASET: _cef_flow_end,
    LIFECYCLE_DATASET: _cef_lifecycle,
}
_RENDERERS: dict[str, Callable[[Event], bytes]] = {
    "ecs": ecs_line,
    "ocsf": ocsf_line,
    "cef": cef_line,
}
