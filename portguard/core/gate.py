"""The pure gate: queued packet bytes in, verdict and decision event out.

This is the sans-io heart of the daemon: decode -> flow -> policy -> event. It takes `now`
and the two interface facts the kernel gives (did the packet arrive on / leave through a WAN
interface) and returns what the edge must do. It never raises for any input bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple

from portguard.core.denycache import cacheable
from portguard.core.detect.fanout import Alert, Detection
from portguard.core.detect.quarantine import Entry, Quarantine, entry
from portguard.core.events.record import (
    Loggable,
    Observer,
    decision_record,
    malformed_event,
)
from portguard.core.packet.decode import decode_syn, endpoints
from portguard.core.packet.model import ACK, FIN, RST, SYN, DecodeError
from portguard.core.policy import RuleSet
from portguard.core.policy.limits import Limiter, limited_decision
from portguard.core.policy.model import Action, Connection, Decision, Direction


class Verdict(StrEnum):
    """What the kernel is told about one queued packet."""

    ALLOW = "allow"  # accept and mark the connection: its later packets stay in the kernel
    REJECT = "reject"  # the kernel answers the client with a TCP RST
    DROP = "drop"  # silently discarded
    # accept this packet only, without a mark: never the gate's answer, only the queue edge's
    # fallback (fail_mode = "open") when deciding raised
    ACCEPT = "accept"


class Outcome(NamedTuple):
    """What the edge must do with one queued packet (a NamedTuple: one is built per packet,
    several times cheaper than a frozen dataclass)."""

    verdict: Verdict
    # what to log, None when nothing new was decided: a decision's record (the log process
    # builds its event), or the event of a malformed packet
    event: Loggable | None
    direction: Direction | None = None  # the connection's, for the mark the kernel keeps
    # what the policy decided (None when nothing was: a malformed packet, a retransmission);
    # the queue edge needs only the verdict, `portguard replay` the rule too
    decision: Decision | None = None
    cache: bool = False  # a deny the kernel's deny cache answers again (core/denycache.py)


MALFORMED_LOG_INTERVAL = 1.0  # seconds between two events about malformed packets
# A SYN that repeats a dropped SYN (same tuple, same ISN, same direction) within this many
# seconds of its decision is a retransmission: it is dropped again without a second event.
# Linux resends an unanswered SYN after 1 s and 3 s (then 7, 15, 31 s), so a connection
# attempt's first retries are covered; anything later, or after an allow or a reject (the
# client got an answer), is decided afresh by the policy in force.
RETRANSMISSION_WINDOW = 3.0
RECENT_DROPS = 65536  # dropped SYNs remembered for RETRANSMISSION_WINDOW, at most

FlowKey = tuple[int, int, int, int, int]  # (ip version, src, dst, sport, dport) of a SYN
_INITIAL_SYN = (SYN | ACK | RST | FIN, SYN)  # (mask, value): a SYN without ACK, RST or FIN


_VERDICTS = {
    Action.ALLOW: Verdict.ALLOW,
    Action.LOG: Verdict.ALLOW,
    Action.REJECT: Verdict.REJECT,
    Action.DROP: Verdict.DROP,
}
# (arrives on a WAN interface, leaves through one) -> the connection's direction
_DIRECTIONS = {
    (True, True): Direction.EXTERNAL,
    (False, True): Direction.OUTBOUND,
    (True, False): Direction.INBOUND,
    (False, False): Direction.INTERNAL,
}


class Detected(NamedTuple):
    """A detector's alert, and the quarantine it added (None: action "alert", or the table
    was full): what the worker logs and keeps."""

    alert: Alert
    quarantined: Entry | None


def verdict_for(action: Action) -> Verdict:
    return _VERDICTS[action]


def direction_of(arrives_on_wan: bool, leaves_on_wan: bool) -> Direction:
    return _DIRECTIONS[bool(arrives_on_wan), bool(leaves_on_wan)]


class _Drop(NamedTuple):
    """A dropped SYN, remembered to tell its retransmissions from new attempts."""

    seq: int
    direction: Direction
    at: float


class Gate:
    """Decides queued packets. `ruleset` may be replaced at any time (a reload).

    The hook queues only SYNs (without ACK) of connections conntrack sees as NEW and that carry
    no portguard mark, so every queued SYN is decided afresh by the policy in force, on its
    own tuple and direction: a replay of an allowed tuple spends a rate-limit token and gets
    its own event and flow id. The one exception is a retransmitted dropped SYN (see
    RETRANSMISSION_WINDOW). A packet that cannot be decoded is dropped, whatever the fail mode.

    The kernel's conntrack tracks every connection after its SYN, so the gate keeps no flow
    table: only a flow id counter, and the SYNs it dropped in the last RETRANSMISSION_WINDOW
    seconds (at most RECENT_DROPS of them).
    """

    def __init__(self, ruleset: RuleSet, observer: Observer, id_prefix: str = "") -> None:
        self.ruleset = ruleset
        self.observer = observer
        self.id_prefix = id_prefix  # makes flow ids unique across workers and restarts
        self.limiter = Limiter()  # token buckets outlive reloads
        self.cache_period = 0.0  # [queue] deny_cache: seconds a cached deny lives at most
        self.malformed = 0
        self.decided = 0  # SYNs decided by the policy (the last one's flow id is its number)
        self.retransmissions = 0  # dropped SYNs resent within the window, dropped again
        self.hits: dict[tuple[str, Action], int] = {}  # (rule id, action) -> decisions
        self.recent_drops: OrderedDict[FlowKey, _Drop] = OrderedDict()  # oldest first
        self._malformed_unlogged = 0
        self._malformed_logged_at = float("-inf")
        # sources refused before the policy is asked (empty: one len() per SYN), and the
        # detectors' counts of denied attempts; both outlive reloads
        self.quarantine = Quarantine()
        self.detection = Detection()
        self.detected: list[Detected] = []  # alerts the caller has not taken yet
        # told of each SYN dropped (its 5-tuple, when): the queue edge's fast path leaves its
        # retransmissions to this gate (io/fastpath.py)
        self.on_drop: Callable[[FlowKey, float], object] | None = None

    def handle(self, data: bytes, arrives_on_wan: bool, leaves_on_wan: bool, now: float) -> Outcome:
        try:
            version, src, dst, sport, dport, flags, seq = decode_syn(data)
        except DecodeError as error:
            return self._malformed(data, str(error), now)
        direction = _DIRECTIONS[bool(arrives_on_wan), bool(leaves_on_wan)]
        key = (version, src, dst, sport, dport)
        if self.recent_drops and self._retransmits_a_drop(key, flags, seq, direction, now):
            return Outcome(Verdict.DROP, None, direction)
        decision = self.decide(key, direction, now)
        hit = (decision.rule_id, decision.action)
        self.hits[hit] = self.hits.get(hit, 0) + 1
        self.decided += 1
        verdict = _VERDICTS[decision.action]
        if verdict is not Verdict.ALLOW and self.ruleset.detectors:
            self._detect(version, src, dst, dport, now)
        if verdict is Verdict.DROP:
            self._remember_drop(key, _Drop(seq, direction, now))
        elif self.recent_drops:
            self.recent_drops.pop(key, None)  # answered this time: a resend is a new attempt
        cache = verdict is not Verdict.ALLOW and cacheable(decision, self.cache_period)
        if not decision.log:  # the rule says `log = false`
            return Outcome(verdict, None, direction, decision, cache)
        flow_id = f"{self.id_prefix}{self.decided:x}"
        record = decision_record(decision, key, flow_id, direction, self.ruleset.version, now)
        return Outcome(verdict, record, direction, decision, cache)

    def decide(self, key: FlowKey, direction: Direction, now: float) -> Decision:
        """The rule set's decision, with the deciding rule's rate limit applied."""
        version, src, dst, _sport, dport = key
        if self.quarantine.entries:  # the dict itself: no Python-level __len__ per SYN
            refused = self.quarantine.refusal(version, src, dport, now)
            if refused is not None:
                return refused
        ruleset = self.ruleset
        rule = ruleset.first_match(version, src, dst, dport, direction)
        if rule is None:
            return ruleset.default
        if rule.limit is None:
            return rule.decision
        conn = Connection(version, src, dst, dport, direction)
        return limited_decision(rule, self.limiter.take(rule, conn, now))

    def _detect(self, version: int, src: int, dst: int, dport: int, now: float) -> None:
        """A denied attempt counted by the detectors; a crossed threshold quarantines."""
        for alert in self.detection.observe(self.ruleset.detectors, version, src, dst, dport, now):
            detector, added = alert.detector, None
            if detector.action == "quarantine":
                added = entry(alert.key, detector.name, now, now + detector.quarantine,
                              detector.refused_ports)  # fmt: skip
                if not self.quarantine.add(added):
                    added = None
            self.detected.append(Detected(alert, added))

    def take_detected(self) -> list[Detected]:
        """The alerts since the last call (the worker logs them and keeps the quarantine)."""
        detected, self.detected = self.detected, []
        return detected

    def forget_drops(self, now: float) -> int:
        """Forget the dropped SYNs older than RETRANSMISSION_WINDOW (call about once a
        second); how many were forgotten."""
        drops, forgotten = self.recent_drops, 0
        while drops:
            key, drop = next(iter(drops.items()))
            if 0.0 <= now - drop.at <= RETRANSMISSION_WINDOW:
                break  # remembered in order: the later ones are younger
            del drops[key]
            forgotten += 1
        return forgotten

    def _remember_drop(self, key: FlowKey, drop: _Drop) -> None:
        if self.on_drop is not None:
            self.on_drop(key, drop.at)
        drops = self.recent_drops
        drops.pop(key, None)  # to the end: the order stays the order of the drops
        if len(drops) >= RECENT_DROPS:
            drops.popitem(last=False)
        drops[key] = drop

    def _retransmits_a_drop(
        self, key: FlowKey, flags: int, seq: int, direction: Direction, now: float
    ) -> bool:
        """Whether this SYN resends one dropped less than RETRANSMISSION_WINDOW ago."""
        drop = self.recent_drops.get(key)
        if drop is None or flags & _INITIAL_SYN[0] != _INITIAL_SYN[1]:
            return False
        if seq != drop.seq or drop.direction is not direction:
            return False
        if not 0.0 <= now - drop.at <= RETRANSMISSION_WINDOW:
            return False
        self.retransmissions += 1
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
