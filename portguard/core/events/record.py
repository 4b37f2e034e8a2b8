"""ECS event records for decisions and lifecycle changes (pure: `now` is passed in)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from portguard.core import inet
from portguard.core.events.communityid import community_id_of
from portguard.core.packet.model import Endpoints
from portguard.core.policy.model import Action, Decision, Direction

ECS_VERSION = "8.11.0"
Event = dict[str, Any]
# event.dataset of each kind of event: what the formats, flood control and SIEMs tell apart
DECISION_DATASET = "portguard.decision"
FLOW_DATASET = "portguard.flow"
LIFECYCLE_DATASET = "portguard.lifecycle"


@dataclass(frozen=True, slots=True)
class Observer:
    """The gateway that makes the decisions (ECS observer.*)."""

    hostname: str
    version: str

    def fields(self) -> dict[str, str]:
        return {
            "hostname": self.hostname,
            "type": "firewall",
            "vendor": "portguard",
            "product": "portguard",
            "version": self.version,
        }


def timestamp(now: float) -> str:
    """ECS @timestamp: UTC, microseconds, a trailing Z (uncached: see `Timestamps`)."""
    second, micro = _split(now)
    return f"{_seconds_text(second)}.{micro:06d}Z"


class Timestamps:
    """`timestamp` with the date and time of day of a second formatted once (the last
    SECONDS_KEPT seconds met: a flow end names its start, its end and now). Each builder of
    many events (one thread) has its own: the cache is never shared between threads."""

    __slots__ = ("_texts",)
    SECONDS_KEPT = 256

    def __init__(self) -> None:
        self._texts: dict[int, str] = {}

    def __call__(self, now: float) -> str:
        return self.exact(*_split(now))

    def exact(self, second: int, micro: int) -> str:
        """The timestamp of a whole second and microseconds (nanosecond times: `iso_ns`)."""
        text = self._texts.get(second)
        if text is None:
            if len(self._texts) >= self.SECONDS_KEPT:
                self._texts.clear()
            text = self._texts[second] = _seconds_text(second)
        return f"{text}.{micro:06d}Z"


def _split(now: float) -> tuple[int, int]:
    """Whole seconds and microseconds, rounded as datetime.fromtimestamp rounds."""
    fraction, whole = math.modf(now)
    second, micro = int(whole), round(fraction * 1_000_000)
    if micro == 1_000_000:
        return second + 1, 0
    return second, micro


def _seconds_text(second: int) -> str:
    moment = dt.datetime.fromtimestamp(second, dt.UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds")


def address_text(version: int, value: int) -> str:
    """An integer address as text (inet_ntop: several times faster than ipaddress)."""
    if version == 4:
        return inet.inet_ntop(inet.AF_INET, value.to_bytes(4, "big"))
    return inet.inet_ntop(inet.AF_INET6, value.to_bytes(16, "big"))


class DecisionRecord(NamedTuple):
    """A logged decision as plain values: what the packet loop hands the log process, which
    builds the event from it (`connection_event`). Building this costs the loop a tuple; the
    addresses stay integers and the time a float until the log process formats them."""

    now: float
    version: int  # 4 or 6
    src: int
    dst: int
    sport: int
    dport: int
    direction: str  # a Direction's value
    action: str  # an Action's value
    rule_id: str
    ruleset: str
    description: str
    reason: str
    policy_version: str
    flow_id: str  # "" for a connection ended after a reload
    limit: dict[str, object] | None  # LimitResult.fields() when the rule has a limit


Loggable = DecisionRecord | Event  # what the packet loop logs: a decision's record, or an event


# an Action's or Direction's value by a dict lookup (`.value` is a Python-level property: once
# per decision, twice, it shows)
_TEXTS: dict[Action | Direction, str] = {member: member.value for member in (*Action, *Direction)}


def decision_record(
    decision: Decision,
    key: tuple[int, int, int, int, int],
    flow_id: str,
    direction: Direction,
    policy_version: str,
    now: float,
) -> DecisionRecord:
    """One connection's decision as the values of its event (built on the packet loop)."""
    version, src, dst, sport, dport = key
    return DecisionRecord(
        now, version, src, dst, sport, dport, _TEXTS[direction], _TEXTS[decision.action],
        decision.rule_id, decision.ruleset, decision.description, decision.reason,
        policy_version, flow_id, decision.limit.fields() if decision.limit else None,
    )  # fmt: skip


def decision_event(
    decision: Decision,
    key: tuple[int, int, int, int, int],
    flow_id: str,
    direction: Direction,
    policy_version: str,
    observer: Observer,
    now: float,
) -> Event:
    """One connection's decision as an ECS event (docs/logging.md, "Decision event")."""
    record = decision_record(decision, key, flow_id, direction, policy_version, now)
    return connection_event(record, observer)


def ended_event(
    decision: Decision,
    key: tuple[int, int, int, int, int],
    direction: Direction,
    policy_version: str,
    observer: Observer,
    now: float,
) -> Event:
    """An allowed connection ended because a reloaded policy denies it (`reevaluate`)."""
    ended = replace(decision, reason=f"ended after a reload: {decision.reason}")
    record = decision_record(ended, key, "", direction, policy_version, now)
    event = connection_event(record, observer, reevaluated=True)
    fields = event["event"]
    event["event"] = {**fields, "type": [*fields["type"], "end"]}  # its parts are shared
    return event


def connection_event(
    record: DecisionRecord,
    observer: Observer,
    stamp: Callable[[float], str] = timestamp,
    reevaluated: bool = False,
) -> Event:
    """The ECS event of a decision record: the one builder of connection events. `stamp`
    formats the time (a `Timestamps` of the builder's own, or the uncached `timestamp`).

    Built once per decision in the log process, so the parts every event of a rule, action
    and observer has in common are built once and shared (read-only: whoever changes an
    event replaces the part, as `ended_event` and flood summaries do), and the Community ID
    comes from the integer addresses."""
    details: dict[str, Any] = {"reevaluated": True} if reevaluated else {"flow_id": record.flow_id}
    details["reason"] = record.reason
    details["policy_version"] = record.policy_version
    if record.limit is not None:
        details["limit"] = record.limit
    version, src, dst, sport, dport = (record.version, record.src, record.dst, record.sport,
                                       record.dport)  # fmt: skip
    shared = shared_parts(record.action, record.rule_id, record.ruleset, record.description)
    return {
        "@timestamp": stamp(record.now),
        "ecs": _ECS,
        "log": shared.log,
        "event": shared.event,
        "rule": shared.rule,
        "source": {"ip": address_text(version, src), "port": sport},
        "destination": {"ip": address_text(version, dst), "port": dport},
        "network": {
            "transport": "tcp",
            "iana_number": "6",
            "type": _NETWORK_TYPES[version],
            "direction": record.direction,
            "community_id": community_id_of(version, src, dst, sport, dport),
        },
        "observer": observer_fields(observer),
        "portguard": details,
    }


# the actions whose decision events are denies (flood control's business): by Action.allows
DENIES = frozenset(action.value for action in Action if not action.allows)
_ECS: dict[str, str] = {"version": ECS_VERSION}
_NETWORK_TYPES = {4: "ipv4", 6: "ipv6"}
MAX_SHARED = 4096  # rules x actions whose shared event parts are kept


class SharedParts(NamedTuple):
    """The parts of a decision event that depend on its rule and action only."""

    log: dict[str, str]
    event: dict[str, Any]
    rule: dict[str, str]


_shared: dict[tuple[str, str, str, str], SharedParts] = {}
_observers: dict[Observer, dict[str, str]] = {}


def shared_parts(action: str, rule_id: str, ruleset: str, description: str) -> SharedParts:
    """The log, event and rule parts of a decision event of this rule and action (shared)."""
    key = (action, rule_id, ruleset, description)
    found = _shared.get(key)
    if found is None:
        verdict = Action(action)
        found = SharedParts({"level": verdict_level(verdict)}, _verdict_fields(verdict),
                        _rule_fields(rule_id, ruleset, description))  # fmt: skip
        if len(_shared) >= MAX_SHARED:
            _shared.clear()
        _shared[key] = found
    return found


def observer_fields(observer: Observer) -> dict[str, str]:
    """`observer.fields()`, built once per observer and shared (read-only)."""
    found = _observers.get(observer)
    if found is None:
        found = _observers[observer] = observer.fields()
    return found


def verdict_level(action: Action) -> str:
    """log.level of a decision: allowed connections are info, flagged ones notice, denied
    ones warning (so a sink with `level = "warning"` carries exactly the denies)."""
    if action is Action.LOG:
        return "notice"
    return "info" if action.allows else "warning"


def _verdict_fields(action: Action) -> dict[str, Any]:
    """ECS event.* of a firewall decision: the verdict is event.action."""
    return {
        "kind": "event",
        "category": ["network"],
        "type": ["connection", "allowed" if action.allows else "denied"],
        "action": action.value,
        "outcome": "success",
        "dataset": DECISION_DATASET,
    }


def _rule_fields(rule_id: str, ruleset: str, description: str) -> dict[str, str]:
    fields = {"id": rule_id, "ruleset": ruleset}
    if description:
        fields["description"] = description
    return fields


def malformed_event(
    reason: str,
    action: Action,
    count: int,
    observer: Observer,
    now: float,
    found: Endpoints | None = None,
) -> Event:
    """A packet that could not be decoded (rate-limited by the caller; `count` since the last).

    `found`: the addresses (and ports, when its TCP header's first bytes were there) of the
    packet this event is about, the latest of the `count`; None when none could be read."""
    event: Event = {
        "@timestamp": timestamp(now),
        "ecs": {"version": ECS_VERSION},
        "log": {"level": "warning"},
        "event": _verdict_fields(action),
        "rule": {"id": "malformed-packet", "ruleset": "builtin"},
        "network": {"transport": "tcp", "iana_number": "6"},
        "observer": observer.fields(),
        "portguard": {"reason": f"malformed packet: {reason}", "count": count},
    }
    if found is not None:
        event["network"]["type"] = f"ipv{found.version}"
        event["source"] = _endpoint(found.version, found.src, found.sport)
        event["destination"] = _endpoint(found.version, found.dst, found.dport)
    return event


def _endpoint(version: int, address: int, port: int | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"ip": address_text(version, address)}
    if port is not None:
        fields["port"] = port
    return fields


# ECS category, type and log.level of each lifecycle action (types allowed for the category)
LIFECYCLE_KINDS: dict[str, tuple[str, str, str]] = {
    "start": ("process", "start", "notice"),
    "stop": ("process", "end", "notice"),
    "reload": ("configuration", "change", "notice"),
    "reload-failed": ("configuration", "change", "error"),
    "reload-warning": ("configuration", "change", "warning"),
    "reevaluated": ("configuration", "change", "notice"),
    "reevaluate-failed": ("configuration", "change", "error"),
    "hook-installed": ("configuration", "creation", "notice"),
    "hook-removed": ("configuration", "deletion", "notice"),
    "hook-repaired": ("configuration", "change", "warning"),
    "hook-repair-failed": ("configuration", "change", "error"),
    "sink-error": ("process", "info", "error"),
    "sink-recovered": ("process", "info", "notice"),
    "events-dropped": ("process", "info", "warning"),
    "packet-error": ("process", "info", "error"),
    "flow-end-lost": ("process", "info", "warning"),
    "flow-end-failed": ("process", "info", "error"),
    "flow-end-degraded": ("process", "info", "warning"),
    "wan-missing": ("configuration", "info", "error"),
    "wan-found": ("configuration", "info", "notice"),
    "limit-table-full": ("process", "info", "warning"),
    "prequeue-dropped": ("process", "info", "warning"),
    "control-accept-error": ("process", "info", "warning"),
    "resolve-fallback": ("configuration", "change", "warning"),
    "state-error": ("process", "info", "warning"),
    "quarantine-added": ("configuration", "creation", "warning"),
    "quarantine-released": ("configuration", "deletion", "notice"),
    "quarantine-expired": ("configuration", "deletion", "notice"),
}
FAILURES = frozenset(
    {
        "reload-failed",
        "packet-error",
        "reevaluate-failed",
        "hook-repair-failed",
        "sink-error",
        "flow-end-failed",
        "wan-missing",
    }
)


def lifecycle_event(
    action: str, message: str, observer: Observer, now: float, **extra: Any
) -> Event:
    """Daemon lifecycle (start, reload, reload-failed, hook, stop) as an ECS event."""
    category, kind, level = LIFECYCLE_KINDS.get(action, ("process", "info", "info"))
    failed = action in FAILURES
    return {
        "@timestamp": timestamp(now),
        "ecs": {"version": ECS_VERSION},
        "log": {"level": level},
        "message": message,
        "event": {
            "kind": "event",
            "category": [category],
            "type": [kind],
            "action": action,
            "outcome": "failure" if failed else "success",
            "dataset": LIFECYCLE_DATASET,
        },
        "observer": observer.fields(),
        "portguard": extra,
    }
