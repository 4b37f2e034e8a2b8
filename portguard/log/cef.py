"""ArcSight CEF lines of the ECS events (the ``cef`` output format).

``CEF:0|portguard|portguard|version|signature|name|severity|extension``, the mapping chosen by
``event.dataset`` (decisions, flow ends, alerts, lifecycle; any other dataset like a
lifecycle event).
"""

from __future__ import annotations

from collections.abc import Callable

from portguard.core.events.detection import ALERT_DATASET
from portguard.core.events.record import DECISION_DATASET, FLOW_DATASET, LIFECYCLE_DATASET
from portguard.log.ecs import (
    FLOW_END_NAME,
    VENDOR,
    Event,
    dataset,
    epoch_ms,
    flood_aggregate,
)

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
        *_cef_destinations(event),
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


def _cef_destinations(event: Event) -> list[tuple[str, str]]:
    """A flood summary's distinct destinations (cn1) and sample destinations (cs5)."""
    destinations = (flood_aggregate(event) or {}).get("destinations")
    if not isinstance(destinations, dict):
        return []
    return [
        *_cef_labelled("cn1", "distinctDestinations", destinations.get("count")),
        *_cef_labelled("cs5", "samples", ",".join(destinations.get("sample") or ())),
    ]


def _cef_count(event: Event) -> list[tuple[str, str]]:
    aggregate = flood_aggregate(event)
    if aggregate is None:
        return []
    return [
        ("cnt", str(aggregate["count"])),
        ("start", str(epoch_ms(aggregate["first"]))),
        ("end", str(epoch_ms(aggregate["last"]))),
    ]


def _cef_alert(event: Event) -> CefFields:
    """A detector's alert: the source, its attempts (cnt) and window (start, end), the
    detector (cs1) and the sample destinations (cs5)."""
    fields, detection = event["event"], (event.get("portguard") or {}).get("detection") or {}
    pairs = [
        ("src", event["source"]["ip"]),
        ("act", "alert"),
        ("cnt", str(detection.get("attempts", ""))),
        *_cef_times(fields),
        *_cef_labelled("cs1", "ruleId", event["rule"]["id"]),
        *_cef_labelled("cs2", "ruleset", event["rule"].get("ruleset")),
        *_cef_labelled("cs5", "samples", ",".join(detection.get("samples", []))),
        ("msg", str(event.get("message", ""))),
    ]
    return fields["action"], "fan-out detected", 7, pairs


def _cef_lifecycle(event: Event) -> CefFields:
    fields, details = event["event"], event.get("portguard") or {}
    severity = _CEF_LOG_SEVERITY.get((event.get("log") or {}).get("level", "info"), 1)
    pairs = [
        *_cef_endpoints(event),  # a quarantine change names its source
        ("outcome", str(fields.get("outcome", ""))),
        *_cef_labelled("cs4", "policyVersion", details.get("policy_version")),
        ("msg", str(event.get("message", ""))),
    ]
    return fields["action"], str(event.get("message", fields["action"])), severity, pairs


_CEF_MAPPINGS: dict[str, Callable[[Event], CefFields]] = {
    ALERT_DATASET: _cef_alert,
    DECISION_DATASET: _cef_connection,
    FLOW_DATASET: _cef_flow_end,
    LIFECYCLE_DATASET: _cef_lifecycle,
}
