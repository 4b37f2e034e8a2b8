"""A bounded table of TCP flows with a per-connection state machine.

The table is pure: it never reads the clock. Every call takes `now` (seconds, float).
Flows are keyed by the initiator's 5-tuple; a packet from the responder finds its flow
through the reversed tuple. When the table is full the least recently seen flow is
evicted, so memory stays bounded whatever the packet rate.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum

from portguard.packet.model import ACK, FIN, RST, SYN, Packet
from portguard.policy.model import Decision, Direction

# (ip version, initiator address, responder address, initiator port, responder port)
FlowKey = tuple[int, int, int, int, int]


class TcpState(StrEnum):
    SYN_SENT = "syn_sent"  # the initiator's SYN seen
    SYN_RECEIVED = "syn_received"  # the responder's SYN+ACK seen
    ESTABLISHED = "established"  # the handshake completed (or joined mid-stream)
    CLOSING = "closing"  # one side sent FIN
    CLOSED = "closed"  # both sides sent FIN
    RESET = "reset"  # either side sent RST


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
    packets: int = 1
    syn_retransmits: int = 0
    midstream: bool = False  # first seen without the initiator's SYN
    isn: int = 0  # the initiator's initial sequence number (tells a new SYN from a resend)
    fin_from: set[bool] = field(default_factory=set)  # True = initiator sent FIN
    decision: Decision | None = None
    direction: Direction | None = None  # set with the decision (the connmark records it)

    @property
    def initiator_port(self) -> int:
        return self.key[3]


@dataclass(frozen=True, slots=True)
class Observation:
    """What one packet did to the table."""

    flow: Flow
    new: bool  # the packet opened this flow
    from_initiator: bool
    retransmit: bool  # a repeated initial SYN of a flow already seen


def packet_key(packet: Packet) -> FlowKey:
    return (packet.version, packet.src, packet.dst, packet.sport, packet.dport)


def reverse_key(key: FlowKey) -> FlowKey:
    version, src, dst, sport, dport = key
    return (version, dst, src, dport, sport)


def is_initial_syn(packet: Packet) -> bool:
    return packet.flags & (SYN | ACK | RST | FIN) == SYN


class FlowTable:
    """Bounded flow table; least recently seen flows are evicted first."""

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

    def observe(self, packet: Packet, now: float) -> Observation:
        """Account one packet: find or open its flow and advance the state machine."""
        key = packet_key(packet)
        flow = self._flows.get(key)
        if flow is not None:
            self._flows.move_to_end(key)  # the table stays ordered by last packet
            return self._advance(flow, packet, now, from_initiator=True)
        flow = self._flows.get(reverse_key(key))
        if flow is not None:
            self._flows.move_to_end(flow.key)
            return self._advance(flow, packet, now, from_initiator=False)
        return Observation(self._open(key, packet, now), True, True, False)

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

    def _advance(self, flow: Flow, packet: Packet, now: float, from_initiator: bool) -> Observation:
        syn = from_initiator and is_initial_syn(packet)
        if syn and (flow.state in _REUSABLE or packet.seq != flow.isn):
            del self._flows[flow.key]  # the port pair is reused for a new connection
            return Observation(self._open(flow.key, packet, now), True, True, False)
        retransmit = syn and flow.state is TcpState.SYN_SENT
        flow.packets += 1
        flow.syn_retransmits += retransmit
        flow.last_seen = now
        flow.state = next_state(flow, packet.flags, from_initiator)
        self._flows.move_to_end(flow.key)
        return Observation(flow, False, from_initiator, retransmit)


_REUSABLE = frozenset({TcpState.CLOSED, TcpState.RESET})


def next_state(flow: Flow, flags: int, from_initiator: bool) -> TcpState:
    """The TCP state machine: the state after a packet with `flags` from one side."""
    state = flow.state
    if flags & RST:
        return TcpState.RESET
    if flags & FIN:
        flow.fin_from.add(from_initiator)
        return TcpState.CLOSED if len(flow.fin_from) == 2 else TcpState.CLOSING
    if state is TcpState.SYN_SENT and not from_initiator and flags & SYN and flags & ACK:
        return TcpState.SYN_RECEIVED
    if state is TcpState.SYN_RECEIVED and from_initiator and flags & ACK and not flags & SYN:
        return TcpState.ESTABLISHED
    return state
