"""The pure gate: queued packet bytes in, verdict and decision event out.

This is the sans-io heart of the daemon: decode -> flow -> policy -> event. It takes `now`
and the two interface facts the kernel gives (did the packet arrive on / leave through a WAN
interface) and returns what the edge must do. It never raises for any input bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from portguard.core.denycache import cacheable
from portguard.core.events.record import (
    Loggable,
    Observer,
    decision_record,
    malformed_event,
)
from portguard.core.flow.table import FlowTable, is_initial_syn, packet_key
from portguard.core.packet.decode import decode, endpoints
from portguard.core.packet.model import DecodeError, Packet
from portguard.core.policy import RuleSet
from portguard.core.policy.limits import Limiter
from portguard.core.policy.model import Action, Connection, Decision, Direction


class Verdict(StrEnum):
    """What the kernel is told about one queued packet."""

    ALLOW = "allow"  # accept and mark the connection: its later packets stay in the kernel
    REJECT = "reject"  # the kernel answers the client with a TCP RST
    DROP = "drop"  # silently discarded
    # accept this packet only, without a mark: never the gate's answer, only the queue edge's
    # fallback (fail_mode = "open") when deciding raised
    ACCEPT = "accept"


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    # what to log, None when nothing new was decided: a decision's record (the log process
    # builds its event), or the event of a malformed packet
    event: Loggable | None
    direction: Direction | None = None  # the connection's, for the mark the kernel keeps
    cache: bool = False  # a deny the kernel's deny cache answers again (core/denycache.py)


MALFORMED_LOG_INTERVAL = 1.0  # seconds between two events about malformed packets
# A SYN that repeats a dropped SYN (same tuple, same ISN, same direction) within this many
# seconds of its decision is a retransmission: it is dropped again without a second event.
# Linux resends an unanswered SYN after 1 s and 3 s (then 7, 15, 31 s), so a connection
# attempt's first retries are covered; anything later, or after an allow or a reject (the
# client got an answer), is decided afresh by the policy in force.
RETRANSMISSION_WINDOW = 3.0


def verdict_for(action: Action) -> Verdict:
    if action.allows:
        return Verdict.ALLOW
    return Verdict.REJECT if action is Action.REJECT else Verdict.DROP


def direction_of(arrives_on_wan: bool, leaves_on_wan: bool) -> Direction:
    if arrives_on_wan and leaves_on_wan:
        return Direction.EXTERNAL
    if leaves_on_wan:
        return Direction.OUTBOUND
    if arrives_on_wan:
        return Direction.INBOUND
    return Direction.INTERNAL


class Gate:
    """Decides queued packets. `ruleset` may be replaced at any time (a reload).

    The hook queues only SYNs (without ACK) of connections conntrack sees as NEW and that carry
    no portguard mark, so every queued SYN is decided afresh by the policy in force, on its
    own tuple and direction: a replay of an allowed tuple spends a rate-limit token and gets
    its own event and flow id. The one exception is a retransmitted dropped SYN (see
    RETRANSMISSION_WINDOW). A packet that cannot be decoded is dropped, whatever the fail mode.
    """

    def __init__(
        self, ruleset: RuleSet, observer: Observer, flows: FlowTable | None = None
    ) -> None:
        self.ruleset = ruleset
        self.observer = observer
        self.flows = flows if flows is not None else FlowTable()
        self.limiter = Limiter()  # token buckets outlive reloads
        self.cache_period = 0.0  # [queue] deny_cache: seconds a cached deny lives at most
        self.malformed = 0
        self.hits: dict[tuple[str, Action], int] = {}  # (rule id, action) -> decisions
        self._malformed_unlogged = 0
        self._malformed_logged_at = float("-inf")

    def handle(self, data: bytes, arrives_on_wan: bool, leaves_on_wan: bool, now: float) -> Outcome:
        try:
            packet = decode(data)
        except DecodeError as error:
            return self._malformed(data, str(error), now)
        direction = direction_of(arrives_on_wan, leaves_on_wan)
        if self._retransmits_a_drop(packet, direction, now):
            return Outcome(Verdict.DROP, None, direction)
        flow = self.flows.start(packet, now)
        decision = self.decide(flow.key, direction, now)
        flow.decision, flow.direction = decision, direction
        hit = (decision.rule_id, decision.action)
        self.hits[hit] = self.hits.get(hit, 0) + 1
        verdict = verdict_for(decision.action)
        cache = cacheable(decision, self.cache_period)
        if not decision.log:  # the rule says `log = false`
            return Outcome(verdict, None, direction, cache)
        record = decision_record(decision, flow.key, flow.flow_id, direction,
                                 self.ruleset.version, now)  # fmt: skip
        return Outcome(verdict, record, direction, cache)

    def decide(
        self, key: tuple[int, int, int, int, int], direction: Direction, now: float
    ) -> Decision:
        """The rule set's decision, with the deciding rule's rate limit applied."""
        version, src, dst, _sport, dport = key
        return self.limiter.decide(
            self.ruleset, Connection(version, src, dst, dport, direction), now
        )

    def _retransmits_a_drop(self, packet: Packet, direction: Direction, now: float) -> bool:
        """Whether `packet` resends a SYN dropped less than RETRANSMISSION_WINDOW ago."""
        flow = self.flows.get(packet_key(packet))
        if flow is None or flow.decision is None or flow.decision.action is not Action.DROP:
            return False
        if not is_initial_syn(packet) or packet.seq != flow.isn or flow.direction is not direction:
            return False
        if not 0.0 <= now - flow.created <= RETRANSMISSION_WINDOW:
            return False
        flow.syn_retransmits += 1
        return True

    def _malformed(self, data: bytes, reason: str, now: float) -> Outcome:
        """Dropped in both fail modes (fail_mode is about no daemon answering, not this)."""
        self.malformed += 1
        self._malformed_unlogged += 1
        if now - self._malformed_logged_at < MALFORMED_LOG_INTERVAL:
            return Outcome(Verdict.DROP, None)
        count, self._malformed_unlogged = self._malformed_unlogged, 0
        self._malformed_logged_at = now
        found = endpoints(data)
        event = malformed_event(reason, Action.DROP, count, self.observer, now, found)
        return Outcome(Verdict.DROP, event)
