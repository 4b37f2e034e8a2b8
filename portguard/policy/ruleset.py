"""The compiled, read-only policy: decide a connection, or explain the decision.

``decide`` and ``explain`` share one matching function, ``first_mismatch``, so they cannot
disagree: decide returns the first rule with no mismatch, explain reports each rule's mismatch up
to that rule.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from portguard.packet.model import to_address
from portguard.policy.addresses import AddressSet
from portguard.policy.model import Action, Connection, Decision, Direction
from portguard.policy.ports import PortSet


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


@dataclass(frozen=True, slots=True)
class Explanation:
    """The rules tried in order, up to and including the deciding one, and the decision."""

    connection: Connection
    checks: tuple[RuleCheck, ...]
    decision: Decision
    disabled: tuple[str, ...] = ()  # ids of rules with enabled = false (never tried)


class RuleSet:
    """A compiled policy: first matching rule wins, else the default. Read-only."""

    __slots__ = ("default", "disabled", "rules", "sources", "version")

    def __init__(
        self,
        rules: Sequence[CompiledRule],
        default: Decision,
        version: str,
        sources: Sequence[Path],
        disabled: Sequence[str] = (),
    ) -> None:
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self.default = default
        self.version = version
        self.sources: tuple[Path, ...] = tuple(sources)
        self.disabled: tuple[str, ...] = tuple(disabled)

    def decide(self, conn: Connection) -> Decision:
        for rule in self.rules:
            if first_mismatch(rule, conn) is None:
                return rule.decision
        return self.default

    def explain(self, conn: Connection) -> Explanation:
        checks = []
        for rule in self.rules:
            condition = first_mismatch(rule, conn)
            if condition is None:
                checks.append(RuleCheck(rule.id, rule.ruleset, True, match_summary(rule), None))
                return Explanation(conn, tuple(checks), rule.decision, self.disabled)
            reason = mismatch_reason(rule, conn, condition)
            checks.append(RuleCheck(rule.id, rule.ruleset, False, reason, condition))
        return Explanation(conn, tuple(checks), self.default, self.disabled)

    def unhooked(self, hooked_ports: Collection[int]) -> tuple[CompiledRule, ...]:
        """Rules whose dport names none of the hooked ports: they can never match."""
        return tuple(
            rule
            for rule in self.rules
            if rule.dport is not None and not any(rule.dport.contains(p) for p in hooked_ports)
        )

    def __repr__(self) -> str:
        return f"<RuleSet version={self.version} rules={len(self.rules)}>"
