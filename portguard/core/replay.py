"""Replay: captured frames through the daemon's own gate, with the capture's time as `now`.

`portguard replay` reads a capture (io/capture.py) and hands every frame to a `Replayer`, which
does what the kernel hook and the daemon would have done with it, in time order:

1. the link layer is stripped (core/packet/linklayer.py); a frame the capture saw leaving this
   host (Linux cooked capture "outgoing", pcapng "outbound") is the second copy of a forwarded
   packet and is skipped;
2. only a TCP SYN without ACK, FIN or RST to a hooked port goes on (the hook's own match);
3. a SYN that repeats an allowed connection's tuple and ISN is skipped: the kernel keeps that
   connection (its connmark), so the daemon never sees its retransmissions;
4. the direction comes from the address space behind the gateway (`[network] internal` or
   `--inside`): inside to outside is outbound, outside to inside inbound, inside to inside
   internal, outside to outside external; it becomes the two WAN facts the gate takes;
5. the gate decides (decode, rule set, rate limit, resent drops) exactly as in the daemon;
   its housekeeping and the limiter's run once a second of capture time, as the worker's.

Each decision comes out as a `Decided` (in capture order, so in time order); whatever else
consumes decisions (the totals, the event log, a detector) takes them one by one from there.
Pure: `now` is each frame's capture time, no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from portguard.core.events.detection import alert_event, quarantine_event
from portguard.core.events.record import Event, Loggable
from portguard.core.gate import FlowKey, Gate, Verdict
from portguard.core.packet.decode import decode
from portguard.core.packet.linklayer import LinkError, ip_packet
from portguard.core.packet.model import ACK, FIN, IPPROTO_TCP, RST, SYN, DecodeError, Packet
from portguard.core.policy.addresses import AddressSet
from portguard.core.policy.model import Direction

HOUSEKEEPING_INTERVAL = 1.0  # seconds of capture time, as the worker's housekeeping tick
SYN_MASK = FIN | SYN | RST | ACK  # the hook queues SYNs with none of the other three
ALLOWED_MEMORY = 1 << 18  # allowed connections remembered (tuple and ISN), oldest forgotten

# the gate's two interface facts (arrives on a WAN interface, leaves through one)
WAN_FACTS: dict[Direction, tuple[bool, bool]] = {
    Direction.OUTBOUND: (False, True),
    Direction.INBOUND: (True, False),
    Direction.INTERNAL: (False, False),
    Direction.EXTERNAL: (True, True),
}


def is_initial_syn(packet: Packet) -> bool:
    """A SYN without ACK, FIN or RST: what the hook queues."""
    return packet.flags & SYN_MASK == SYN


class Frame(NamedTuple):
    """One captured frame: its number in the capture (from 1), time and link type."""

    number: int
    now: float
    linktype: int
    data: bytes
    outgoing: bool = False  # the capture format itself says the frame left (pcapng flags)


@dataclass(frozen=True, slots=True)
class Decided:
    """One SYN the policy decided, as the daemon would have."""

    number: int  # the frame's number in the capture
    now: float
    key: FlowKey  # version, source, destination, source port, destination port
    direction: Direction
    verdict: Verdict
    rule_id: str
    record: Loggable | None  # what the daemon would have logged; None: the rule has log = false
    alerts: tuple[Event, ...] = ()  # a detector's alert (and quarantine) this SYN raised


@dataclass(slots=True)
class Counts:
    """What became of the frames: every frame is counted in exactly one of these."""

    not_ip: int = 0  # ARP, LLDP, ...: no IPv4 or IPv6 packet
    outgoing: int = 0  # the copy of a forwarded packet the capture saw leave
    broken: int = 0  # shorter than its link-layer header, or an IP packet that does not decode
    other: int = 0  # not a SYN to a hooked port: the hook would not have queued it
    kept: int = 0  # a retransmitted SYN of an allowed connection: the kernel keeps it
    retransmissions: int = 0  # a dropped SYN sent again: dropped without an event
    decided: int = 0
    first_broken: str = ""  # "packet N: reason" of the first broken frame

    @property
    def frames(self) -> int:
        return (self.not_ip + self.outgoing + self.broken + self.other + self.kept
                + self.retransmissions + self.decided)  # fmt: skip


def maybe_queued(data: bytes, ports: frozenset[int]) -> bool:
    """False when the hook surely would not queue this IP packet (a TCP segment that is not a
    bare SYN, or not to a hooked port): a look at three bytes instead of a full decode for
    most of a capture. True when it may: the decoder then reads the whole header."""
    if len(data) < 40:
        return True
    version = data[0] >> 4
    if version == 4 and data[9] == IPPROTO_TCP and not data[6] & 0x1F and not data[7]:
        tcp = (data[0] & 0x0F) * 4  # not a fragment: the TCP header follows the IP header
    elif version == 6 and data[6] == IPPROTO_TCP:
        tcp = 40
    else:
        return True  # extension headers, fragments, not TCP: the decoder decides
    if len(data) < tcp + 14:
        return True  # cut short: the decoder words why
    return data[tcp + 13] & SYN_MASK == SYN and (data[tcp + 2] << 8 | data[tcp + 3]) in ports


def direction_between(inside: AddressSet, version: int, src: int, dst: int) -> Direction:
    """A connection's direction as seen from the address space behind the gateway."""
    src_in, dst_in = inside.contains(version, src), inside.contains(version, dst)
    if src_in:
        return Direction.INTERNAL if dst_in else Direction.OUTBOUND
    return Direction.INBOUND if dst_in else Direction.EXTERNAL


@dataclass(slots=True)
class Replayer:
    """The hook and the daemon for captured frames (see the module docstring)."""

    gate: Gate
    inside: AddressSet
    ports: frozenset[int]
    counts: Counts = field(default_factory=Counts)
    _allowed: OrderedDict[FlowKey, int] = field(default_factory=OrderedDict)
    _clock: float = float("-inf")
    _next_housekeeping: float = float("-inf")

    def offer(self, frame: Frame) -> Decided | None:
        """The decision on one frame, None when the daemon would have decided nothing."""
        try:
            stripped = ip_packet(frame.linktype, frame.data)
        except LinkError as error:
            self._broken(frame, str(error))
            return None
        if stripped is None:
            self.counts.not_ip += 1
            return None
        if stripped.outgoing or frame.outgoing:
            self.counts.outgoing += 1
            return None
        return self.offer_packet(frame.number, frame.now, stripped.data)

    def offer_packet(self, number: int, now: float, data: bytes) -> Decided | None:
        """The decision on one IP packet captured at `now`."""
        if not maybe_queued(data, self.ports):
            self.counts.other += 1
            return None
        try:
            packet = decode(data)
        except DecodeError as error:
            self._broken(Frame(number, now, 0, data), f"not decodable: {error}")
            return None
        if not is_initial_syn(packet) or packet.dport not in self.ports:
            self.counts.other += 1
            return None
        key = (packet.version, packet.src, packet.dst, packet.sport, packet.dport)
        if self._allowed.get(key) == packet.seq:
            self.counts.kept += 1
            return None
        now = self._tick(now)
        direction = direction_between(self.inside, packet.version, packet.src, packet.dst)
        outcome = self.gate.handle(data, *WAN_FACTS[direction], now)
        if outcome.decision is None:  # a retransmitted dropped SYN
            self.counts.retransmissions += 1
            return None
        if outcome.verdict is Verdict.ALLOW:
            self._remember(key, packet.seq)
        self.counts.decided += 1
        alerts = self._alerts(now) if self.gate.detected else ()
        return Decided(number, now, key, direction, outcome.verdict, outcome.decision.rule_id,
                       outcome.event, alerts)  # fmt: skip

    def _alerts(self, now: float) -> tuple[Event, ...]:
        """The events of the detectors' alerts and the quarantines they added, as the worker
        logs them."""
        observer, events = self.gate.observer, []
        for alert, added in self.gate.take_detected():
            events.append(alert_event(alert, observer, now))
            if added is not None:
                events.append(quarantine_event("quarantine-added", added, observer, now,
                                               "detector"))  # fmt: skip
        return tuple(events)

    def _tick(self, now: float) -> float:
        """The gate's clock: the capture's time, never backwards (a merged capture's frames
        may be out of order by a little); housekeeping once a second of it."""
        now = self._clock = max(now, self._clock)
        if now >= self._next_housekeeping:
            self._next_housekeeping = now + HOUSEKEEPING_INTERVAL
            self.gate.forget_drops(now)
            self.gate.limiter.housekeeping(now)
            for found in self.gate.quarantine.expire(now):  # replay prints alerts and the
                self.gate.detection.forget(found.key)  # quarantines they add, not expiries
            self.gate.detection.housekeeping(self.gate.ruleset.detectors, now)
        return now

    def _remember(self, key: FlowKey, isn: int) -> None:
        self._allowed.pop(key, None)
        self._allowed[key] = isn
        if len(self._allowed) > ALLOWED_MEMORY:
            self._allowed.popitem(last=False)

    def _broken(self, frame: Frame, reason: str) -> None:
        self.counts.broken += 1
        if not self.counts.first_broken:
            self.counts.first_broken = f"packet {frame.number}: {reason}"


def decisions(frames: Iterable[Frame], replayer: Replayer) -> Iterator[Decided]:
    """The decisions on `frames`, in their order."""
    for frame in frames:
        decided = replayer.offer(frame)
        if decided is not None:
            yield decided


class Difference(NamedTuple):
    """A SYN two policies decide differently (by verdict or by deciding rule)."""

    old: Decided
    new: Decided


def compare(frames: Iterable[Frame], old: Replayer, new: Replayer) -> Iterator[Difference]:
    """The SYNs `old` and `new` both decide, differently. Each policy runs on its own gate
    and limiter; a SYN only one of them decides (a retransmission the other allowed or
    dropped first) follows from an earlier difference and is not reported again."""
    for frame in frames:
        before, after = old.offer(frame), new.offer(frame)
        if before is None or after is None:
            continue
        if (before.verdict, before.rule_id) != (after.verdict, after.rule_id):
            yield Difference(before, after)
