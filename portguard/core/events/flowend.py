"""Flow-end events: an allowed connection's duration, packets and bytes, as an ECS event (pure).

portguard decides only a connection's first packet; the rest of an allowed connection stays in the
kernel. When conntrack forgets the connection, its DESTROY event (``portguard.io.ctevents``) tells
how long it lived and what it carried each way; ``flow_end_event`` turns that into one ECS event
(dataset ``portguard.flow``, ``event.type: [connection, end]``, ``event.action: flow-end``).

Conntrack forgets a closed TCP connection only after TIME_WAIT (``nf_conntrack_tcp_timeout_
time_wait``, 120 s by default) or, after a reset, CLOSE (10 s): the event arrives that much after
the connection closed, and ``event.end`` / ``event.duration`` include that wait.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from portguard.core.events.communityid import community_id_of
from portguard.core.events.record import (
    ECS_VERSION,
    FLOW_DATASET,
    Event,
    Observer,
    Timestamps,
    address_text,
    observer_fields,
)
from portguard.core.policy.model import Direction

NS_PER_S = 1_000_000_000


class Counters(NamedTuple):
    """What one direction of a connection carried (conntrack accounting: IP packets and bytes)."""

    packets: int
    bytes: int


class EndedFlow(NamedTuple):
    """An allowed TCP connection that conntrack has forgotten (original direction = the client's).

    ``original`` and ``reply`` are None when the entry had no accounting (it was created before
    ``nf_conntrack_acct`` was on); ``start_ns``/``stop_ns`` (nanoseconds since the epoch) are None
    without ``nf_conntrack_timestamp``.
    """

    version: int  # 4 or 6
    src: int  # the client's address as an integer
    dst: int
    sport: int
    dport: int
    direction: Direction  # recorded in the connmark when the connection was allowed
    original: Counters | None  # client -> server
    reply: Counters | None  # server -> client
    start_ns: int | None
    stop_ns: int | None
    mark: int = 0  # the entry's whole connmark
    entry_id: int | None = None  # the kernel's id of the entry
    zone: int = 0

    @property
    def key(self) -> tuple[int, int, int, int, int]:
        """(version, src, dst, sport, dport), like ``Flow.key``."""
        return (self.version, self.src, self.dst, self.sport, self.dport)

    @property
    def duration_ns(self) -> int | None:
        """From the first packet until conntrack forgot the connection; None when unknown."""
        if self.start_ns is None or self.stop_ns is None or self.stop_ns < self.start_ns:
            return None
        return self.stop_ns - self.start_ns


@dataclass(frozen=True, slots=True)
class FlowOrigin:
    """The decision that allowed the connection, when the caller still knows it."""

    rule_id: str
    ruleset: str
    flow_id: str | None = None
    policy_version: str | None = None


def flow_end_event(
    ended: EndedFlow,
    observer: Observer,
    now: float,
    origin: FlowOrigin | None = None,
    stamps: Timestamps | None = None,
) -> Event:
    """One ended connection as an ECS event (ECS fields only, plus ``portguard.*``). `stamps`:
    a builder's own timestamp cache (one thread), for many events."""
    stamps = stamps or Timestamps()
    source: dict[str, Any] = {"ip": address_text(ended.version, ended.src), "port": ended.sport}
    destination: dict[str, Any] = {
        "ip": address_text(ended.version, ended.dst),
        "port": ended.dport,
    }
    network: dict[str, Any] = {
        "transport": "tcp",
        "iana_number": "6",
        "type": f"ipv{ended.version}",
        "direction": ended.direction.value,
    }
    _add_counters(ended, source, destination, network)
    network["community_id"] = community_id_of(*ended.key)  # from the integers: no parsing
    event: Event = {
        "@timestamp": stamps(now),
        "ecs": {"version": ECS_VERSION},
        "log": {"level": "info"},
        "event": _event_fields(ended, stamps),
        "source": source,
        "destination": destination,
        "network": network,
        "observer": observer_fields(observer),
    }
    if origin is not None:
        event.update(_origin_fields(origin))
    return event


def _event_fields(ended: EndedFlow, stamps: Timestamps) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "kind": "event",
        "category": ["network"],
        "type": ["connection", "end"],
        "action": "flow-end",
        "outcome": "success",
        "dataset": FLOW_DATASET,
    }
    start, duration = ended.start_ns, ended.duration_ns
    if start is not None:
        fields["start"] = iso_ns(start, stamps)
    if start is not None and duration is not None:
        fields["end"] = iso_ns(start + duration, stamps)
        fields["duration"] = duration
    return fields


def _add_counters(
    ended: EndedFlow,
    source: dict[str, Any],
    destination: dict[str, Any],
    network: dict[str, Any],
) -> None:
    """ECS source.* (what the client sent), destination.* (the replies), network.* (both)."""
    if ended.original is None or ended.reply is None:
        return
    source.update(packets=ended.original.packets, bytes=ended.original.bytes)
    destination.update(packets=ended.reply.packets, bytes=ended.reply.bytes)
    network.update(
        packets=ended.original.packets + ended.reply.packets,
        bytes=ended.original.bytes + ended.reply.bytes,
    )


def _origin_fields(origin: FlowOrigin) -> Event:
    fields: Event = {"rule": {"id": origin.rule_id, "ruleset": origin.ruleset}}
    details = {"flow_id": origin.flow_id, "policy_version": origin.policy_version}
    present = {key: value for key, value in details.items() if value is not None}
    if present:
        fields["portguard"] = present
    return fields


def iso_ns(ns: int, stamps: Timestamps | None = None) -> str:
    """Nanoseconds since the epoch as an ECS date (like ``timestamp``), exact to the microsecond
    (truncated, never rounded up)."""
    seconds, rest = divmod(ns, NS_PER_S)
    return (stamps or Timestamps()).exact(seconds, rest // 1000)
