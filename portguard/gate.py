"""The pure gate: queued packet bytes in, verdict and decision event out.

This is the sans-io heart of the daemon: decode -> flow -> policy -> event. It takes `now`
and the two interface facts the kernel gives (did the packet arrive on / leave through a WAN
interface) and returns what the edge must do. It never raises for any input bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from portguard.decisionlog.record import (
    Event,
    Observer,
    decision_event,
    malformed_event,
)
from portguard.flow.table import FlowTable
from portguard.packet.decode import decode
from portguard.packet.model import DecodeError
from portguard.policy import RuleSet
from portguard.policy.limits import Limiter
from portguard.policy.model import Action, Connection, Decision, Direction


class Verdict(StrEnum):
    """What the kernel is told about one queued packet."""

    ALLOW = "allow"  # accept and mark the connection: its later packets stay in the kernel
    REJECT = "reject"  # the kernel answers the client with a TCP RST
    DROP = "drop"  # silently discarded
    ACCEPT = "accept"  # accept this packet only, without marking the connection


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    event: Event | None  # the decision event to log, None when nothing new was decided
    direction: Direction | None = None  # the connection's, for the mark the kernel keeps


MALFORMED_LOG_INTERVAL = 1.0  # seconds between two events about malformed packets


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
    """Decides queued packets. `ruleset` may be replaced at any time (a reload)."""

    def __init__(
        self, ruleset: RuleSet, observer: Observer, fail_open: bool, flows: FlowTable | None = None
    ) -> None:
        self.ruleset = ruleset
        self.observer = observer
        self.flows = flows if flows is not None else FlowTable()
        self.limiter = Limiter()  # token buckets outlive reloads
        self.malformed_action = Action.ALLOW if fail_open else Action.DROP
        self.malformed = 0
        self.hits: dict[tuple[str, Action], int] = {}  # (rule id, action) -> new connections
        self._malformed_unlogged = 0
        self._malformed_logged_at = float("-inf")

    def handle(self, data: bytes, arrives_on_wan: bool, leaves_on_wan: bool, now: float) -> Outcome:
        try:
            packet = decode(data)
        except DecodeError as error:
            return self._malformed(str(error), now)
        seen = self.flows.observe(packet, now)
        flow = seen.flow
        if flow.decision is not None:  # a retransmitted SYN: same verdict, no second event
            return Outcome(verdict_for(flow.decision.action), None, flow.direction)
        if not seen.from_initiator:
            arrives_on_wan, leaves_on_wan = leaves_on_wan, arrives_on_wan
        direction = direction_of(arrives_on_wan, leaves_on_wan)
        decision = self.decide(flow.key, direction, now)
        flow.decision, flow.direction = decision, direction
        hit = (decision.rule_id, decision.action)
        self.hits[hit] = self.hits.get(hit, 0) + 1
        verdict = verdict_for(decision.action)
        if not decision.log:  # the rule says `log = false`
            return Outcome(verdict, None, direction)
        event = decision_event(decision, flow, direction, self.ruleset.version, self.observer, now)
        return Outcome(verdict, event, direction)

    def decide(
        self, key: tuple[int, int, int, int, int], direction: Direction, now: float
    ) -> Decision:
        """The rule set's decision, with the deciding rule's rate limit applied."""
        version, src, dst, _sport, dport = key
        return self.limiter.decide(
            self.ruleset, Connection(version, src, dst, dport, direction), now
        )

    def _malformed(self, reason: str, now: float) -> Outcome:
        self.malformed += 1
        self._malformed_unlogged += 1
        verdict = Verdict.ACCEPT if self.malformed_action.allows else Verdict.DROP
        if now - self._malformed_logged_at < MALFORMED_LOG_INTERVAL:
            return Outcome(verdict, None)
        count, self._malformed_unlogged = self._malformed_unlogged, 0
        self._malformed_logged_at = now
        event = malformed_event(reason, self.malformed_action, count, self.observer, now)
        return Outcome(verdict, event)
