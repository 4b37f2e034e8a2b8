"""The compiled, read-only policy: decide a connection, or explain the decision.

``decide`` and ``explain`` share one matching function, ``first_mismatch``, so they cannot
disagree: decide returns the first rule with no mismatch, explain reports each rule's mismatch up
to that rule.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from portguard.core.errors import Problem
from portguard.core.packet.model import to_address
from portguard.core.policy.addresses import AddressSet
from portguard.core.policy.detectors import Detector
from portguard.core.policy.model import Action, Connection, Decision, Direction, Limit
from portguard.core.policy.ports import PortSet
from portguard.core.sourcemap import SourceMap

MAX_CANDIDATES = 4096  # (direction, dport) pairs whose candidate rules a RuleSet remembers


class Condition(StrEnum):
    """The part of a rule that a connection can fail, in the order they are checked."""

    DIRECTION = "direction"
    DPORT = "dport"
    SRC = "src"
    DST = "dst"


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One enabled rule, ready to match. A None condition matches anything."""

    id: str
    ruleset: str  # file name of the rule file
    description: str
    action: Action
    direction: Direction | None
    dport: PortSet | None
    src: AddressSet | None
    dst: AddressSet | None
    decision: Decision  # built once: what decide() returns when this rule matches
    limit: Limit | None = None  # a rate limit: see portguard.core.policy.limits
    log: bool = True  # False: `log = false`, its decisions are not logged
    path: Path | None = None  # the rule file
    index: int = 0  # the rule's place among the [[rule]] tables of its file


def first_mismatch(rule: CompiledRule, conn: Connection) -> Condition | None:
    """The first condition of ``rule`` that ``conn`` fails, or None when the rule matches."""
    if rule.direction is not None and conn.direction != rule.direction:
        return Condition.DIRECTION
    if rule.dport is not None and not rule.dport.contains(conn.dport):
        return Condition.DPORT
    if rule.src is not None and not rule.src.contains(conn.version, conn.src):
        return Condition.SRC
    if rule.dst is not None and not rule.dst.contains(conn.version, conn.dst):
        return Condition.DST
    return None


def match_summary(rule: CompiledRule) -> str:
    """What a connection that matches ``rule`` has in common with it."""
    parts = []
    if rule.src is not None:
        parts.append(f"src in {rule.src.label}")
    if rule.dst is not None:
        parts.append(f"dst in {rule.dst.label}")
    if rule.dport is not None:
        parts.append(f"dport {'' if rule.dport.single else 'in '}{rule.dport.label}")
    if rule.direction is not None:
        parts.append(str(rule.direction))
    return ", ".join(parts) if parts else "the rule matches every connection"


def mismatch_reason(rule: CompiledRule, conn: Connection, condition: Condition) -> str:
    """Why ``conn`` fails ``condition`` of ``rule``, in one line."""
    if condition is Condition.DIRECTION:
        return f"direction is {conn.direction}, rule wants {rule.direction}"
    if condition is Condition.DPORT and rule.dport is not None:
        verb = "is not" if rule.dport.single else "is not in"
        return f"dport {conn.dport} {verb} {rule.dport.label}"
    if condition is Condition.SRC and rule.src is not None:
        return f"src {to_address(conn.version, conn.src)} is not in {rule.src.label}"
    if condition is Condition.DST and rule.dst is not None:
        return f"dst {to_address(conn.version, conn.dst)} is not in {rule.dst.label}"
    raise ValueError(f"rule {rule.id!r} has no {condition} condition")


@dataclass(frozen=True, slots=True)
class RuleCheck:
    """One rule tried by explain: matched, or the one condition that did not match."""

    rule_id: str
    ruleset: str
    matched: bool
    reason: str
    condition: Condition | None  # the failed condition; None when the rule matched
    limit: Limit | None = None  # the matched rule's limit, if it has one


@dataclass(frozen=True, slots=True)
class Explanation:
    """The rules tried in order, up to and including the deciding one, and the decision."""

    connection: Connection
    checks: tuple[RuleCheck, ...]
    decision: Decision
    disabled: tuple[str, ...] = ()  # ids of rules with enabled = false (never tried)
    every: bool = False  # all rules were tried (explain --all), not only up to the decision

    @property
    def matches(self) -> tuple[RuleCheck, ...]:
        return tuple(check for check in self.checks if check.matched)


@dataclass(frozen=True, slots=True)
class ListFile:
    """A parsed list file kept for the next load: unchanged text (same digest) is not parsed
    again."""

    digest: str
    addresses: AddressSet


class RuleSet:
    """A compiled policy: first matching rule wins, else the default. Read-only."""

    __slots__ = (
        "_candidates",
        "_positions",
        "default",
        "detectors",
        "disabled",
        "lists",
        "resolved",
        "rules",
        "sources",
        "texts",
        "version",
        "warnings",
    )

    def __init__(
        self,
        rules: Sequence[CompiledRule],
        default: Decision,
        version: str,
        sources: Sequence[Path],
        disabled: Sequence[str] = (),
        *,
        resolved: Mapping[str, Sequence[str]] | None = None,
        lists: Mapping[Path, ListFile] | None = None,
        warnings: Sequence[Problem] = (),
        texts: Mapping[Path, str] | None = None,
        detectors: Sequence[Detector] = (),
    ) -> None:
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self.default = default
        self.version = version
        self.sources: tuple[Path, ...] = tuple(sources)
        self.disabled: tuple[str, ...] = tuple(disabled)
        self.resolved: dict[str, tuple[str, ...]] = {
            name: tuple(addresses) for name, addresses in (resolved or {}).items()
        }
        self.lists: dict[Path, ListFile] = dict(lists or {})
        self.warnings: tuple[Problem, ...] = tuple(warnings)  # e.g. a host kept from before
        self.texts: dict[Path, str] = dict(texts or {})  # rule files, to locate rules
        self.detectors: tuple[Detector, ...] = tuple(detectors)  # [detect.NAME] tables
        self._positions: dict[Path, SourceMap] = {}
        # (direction, dport) -> the rules whose direction and dport conditions it meets, in
        # order: what `first_match` tries (filled as connections come, at most MAX_CANDIDATES)
        self._candidates: dict[tuple[Direction, int], tuple[CompiledRule, ...]] = {}

    @property
    def has_hosts(self) -> bool:
        """Whether some set names hosts: the daemon then reloads every resolve_interval."""
        return bool(self.resolved)

    def match(self, conn: Connection) -> CompiledRule | None:
        """The first rule that ``conn`` matches (limits aside), or None."""
        return self.first_match(conn.version, conn.src, conn.dst, conn.dport, conn.direction)

    def first_match(
        self, version: int, src: int, dst: int, dport: int, direction: Direction
    ) -> CompiledRule | None:
        """`match` on the connection's fields (the gate's hot path): only the rules whose
        direction and dport conditions the connection meets are tried, on src and dst."""
        candidates = self._candidates.get((direction, dport))
        if candidates is None:
            candidates = self._candidates_for(direction, dport)
        for rule in candidates:
            if rule.src is not None and not rule.src.contains(version, src):
                continue
            if rule.dst is None or rule.dst.contains(version, dst):
                return rule
        return None

    def _candidates_for(self, direction: Direction, dport: int) -> tuple[CompiledRule, ...]:
        """The rules a (direction, dport) can match, by `first_mismatch`'s own conditions."""
        probe = Connection(4, 0, 0, dport, direction)
        found = tuple(
            rule
            for rule in self.rules
            if first_mismatch(rule, probe) not in (Condition.DIRECTION, Condition.DPORT)
        )
        if len(self._candidates) < MAX_CANDIDATES:
            self._candidates[(direction, dport)] = found
        return found

    def decide(self, conn: Connection) -> Decision:
        """The deciding rule's decision, without its limit (see Limiter.decide for that)."""
        rule = self.match(conn)
        return self.default if rule is None else rule.decision

    def explain(self, conn: Connection, every: bool = False) -> Explanation:
        """Each rule tried, up to the deciding one; with ``every``, all of them."""
        checks = []
        decision: Decision | None = None
        for rule in self.rules:
            condition = first_mismatch(rule, conn)
            if condition is not None:
                reason = mismatch_reason(rule, conn, condition)
                checks.append(RuleCheck(rule.id, rule.ruleset, False, reason, condition))
                continue
            summary = match_summary(rule)
            checks.append(RuleCheck(rule.id, rule.ruleset, True, summary, None, rule.limit))
            if decision is None:
                decision = rule.decision
            if not every:
                break
        return Explanation(conn, tuple(checks), decision or self.default, self.disabled, every)

    def unhooked(self, hooked_ports: Collection[int]) -> tuple[CompiledRule, ...]:
        """Rules whose dport names none of the hooked ports: they can never match."""
        return tuple(
            rule
            for rule in self.rules
            if rule.dport is not None and not any(rule.dport.contains(p) for p in hooked_ports)
        )

    def where(self, rule: CompiledRule) -> tuple[Path, int | None, int | None]:
        """The rule file, line and column of ``rule`` (its [[rule]] header)."""
        if rule.path is None or rule.path not in self.texts:
            return Path(rule.ruleset), None, None
        positions = self._positions.get(rule.path)
        if positions is None:
            positions = self._positions[rule.path] = SourceMap.scan(self.texts[rule.path])
        line, col = positions.locate(("rule", rule.index))
        return rule.path, line, col

    def __repr__(self) -> str:
        return f"<RuleSet version={self.version} rules={len(self.rules)}>"
