"""A bounded table of the flows the gate decided: one per queued SYN, keyed by its 5-tuple.

The table is pure: it never reads the clock. Every call takes `now` (seconds, float). It gives
each decided SYN its flow id and remembers the decision, so that the gate can tell a
retransmitted dropped SYN (same tuple, same ISN) from a new one. The kernel, not this table,
tracks connections after the SYN (their packets never reach the queue). When the table is full
the least recently opened flow is evicted, so memory stays bounded whatever the packet rate.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from portguard.core.packet.model import ACK, FIN, RST, SYN, Packet
from portguard.core.policy.model import Decision, Direction

# (ip version, initiator address, responder address, initiator port, responder port)
FlowKey = tuple[int, int, int, int, int]


class TcpState(StrEnum):
    SYN_SENT = "syn_sent"  # opened by the initiator's SYN
    SYN_RECEIVED = "syn_received"
    ESTABLISHED = "established"  # opened by a packet without SYN (joined mid-stream)
    CLOSING = "closing"
    CLOSED = "closed"
    RESET = "reset"  # opened by a packet with RST


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Idle seconds after which a flow in each state is forgotten (like conntrack's)."""

    syn_sent: float = 30.0
    syn_received: float = 30.0
    established: float = 3600.0
    closing: float = 120.0
    closed: float = 10.0
    reset: float = 10.0

    def for_state(self, state: TcpState) -> float:
        return float(getattr(self, state.value))

    def shortest(self) -> float:
        return min(self.for_state(state) for state in TcpState)


@dataclass(slots=True)
class Flow:
    key: FlowKey
    flow_id: str
    state: TcpState
    created: float
    last_seen: float
    syn_retransmits: int = 0
    midstream: bool = False  # first seen without the initiator's SYN
    isn: int = 0  # the initiator's initial sequence number (tells a new SYN from a resend)
    decision: Decision | None = None
    direction: Direction | None = None  # set with the decision (the connmark records it)


def packet_key(packet: Packet) -> FlowKey:
    return (packet.version, packet.src, packet.dst, packet.sport, packet.dport)


def is_initial_syn(packet: Packet) -> bool:
    return packet.flags & (SYN | ACK | RST | FIN) == SYN


class FlowTable:
    """Bounded flow table; least recently opened flows are evicted first."""

    def __init__(
        self, capacity: int = 65536, timeouts: Timeouts | None = None, id_prefix: str = ""
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.id_prefix = id_prefix  # makes flow ids unique across workers and restarts
        self.timeouts = timeouts or Timeouts()
        self._flows: OrderedDict[FlowKey, Flow] = OrderedDict()
        self._next_id = 0
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._flows)

    def get(self, key: FlowKey) -> Flow | None:
        return self._flows.get(key)

    def start(self, packet: Packet, now: float) -> Flow:
        """A new flow for the packet's own tuple (its sender is the initiator), replacing any
        flow with that tuple: every SYN the gate decides is a new connection with a new id."""
        key = packet_key(packet)
        self._flows.pop(key, None)
        return self._open(key, packet, now)

    def expire(self, now: float) -> list[Flow]:
        """Remove and return the flows idle longer than their state's timeout.

        The table is ordered by last packet, so only its idle head is looked at: the walk stops
        at the first flow seen within the shortest timeout (a million-flow table costs what
        its expired flows cost, not a full scan every second)."""
        shortest = self.timeouts.shortest()
        gone = []
        for flow in self._flows.values():
            idle = now - flow.last_seen
            if idle <= shortest:
                break
            if idle > self.timeouts.for_state(flow.state):
                gone.append(flow)
        for flow in gone:
            del self._flows[flow.key]
        self.expired += len(gone)
        return gone

    def _open(self, key: FlowKey, packet: Packet, now: float) -> Flow:
        if len(self._flows) >= self.capacity:
            self._flows.popitem(last=False)
            self.evicted += 1
        self._next_id += 1
        midstream = not is_initial_syn(packet)
        state = TcpState.ESTABLISHED if midstream else TcpState.SYN_SENT
        if packet.flags & RST:
            state = TcpState.RESET
        flow_id = f"{self.id_prefix}{self._next_id:x}"
        flow = Flow(key, flow_id, state, now, now, midstream=midstream, isn=packet.seq)
        self._flows[key] = flow
        return flow
