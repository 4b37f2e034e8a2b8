"""Warnings about a valid policy: rules that can never match.

- a rule whose ``dport`` names no hooked port (the kernel never hands it a connection);
- a rule whose ``src`` or ``dst`` is an empty set (list files with no entry);
- a shadowed rule: one earlier rule matches every connection it could match, so it never
  decides. A rule with a limit shadows too: past its limit it still decides (with its exceed
  action), it never passes a connection on to later rules.

Coverage is proven rule against rule and block against block; a rule covered only by several
earlier rules together, or a CIDR covered only by several smaller ones, is not reported (a
warning is never wrong, some shadowed rules go unnoticed).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from portguard.core.errors import Problem
from portguard.core.policy.addresses import AddressSet
from portguard.core.policy.ruleset import CompiledRule, RuleSet


def lint(ruleset: RuleSet, hooked_ports: Collection[int]) -> list[Problem]:
    """Every warning, located at the rule it is about."""
    hooked = sorted(set(hooked_ports))
    warnings = list(ruleset.warnings)
    cache: _Cache = {}  # a big set is compared with another once, not once per rule pair
    for position, rule in enumerate(ruleset.rules):
        message = _never_matches(rule, hooked) or _shadowed(ruleset, position, hooked, cache)
        if message:
            path, line, col = ruleset.where(rule)
            warnings.append(Problem(path, line, f"rule '{rule.id}' {message}", col))
    return warnings


def _never_matches(rule: CompiledRule, hooked: Sequence[int]) -> str | None:
    if not _ports(rule, hooked):
        ports = ", ".join(map(str, hooked))
        return f"names no hooked port ({ports}): it can never match"
    for name, addresses in (("src", rule.src), ("dst", rule.dst)):
        if addresses is not None and addresses.empty:
            return f"can never match: its {name} ({addresses.label}) holds no address"
    return None


def _shadowed(ruleset: RuleSet, position: int, hooked: Sequence[int], cache: _Cache) -> str | None:
    rule = ruleset.rules[position]
    ports = _ports(rule, hooked)
    for earlier in ruleset.rules[:position]:
        if covers(earlier, rule, ports, cache):
            path, line, _ = ruleset.where(earlier)
            where = f"{path}:{line}" if line is not None else str(path)
            return (
                f"can never match: rule '{earlier.id}' ({where}) comes first and matches "
                "every connection it would"
            )
    return None


def _ports(rule: CompiledRule, hooked: Sequence[int]) -> list[int]:
    """The hooked ports a rule can see."""
    return [port for port in hooked if rule.dport is None or rule.dport.contains(port)]


_Cache = dict[tuple[int, int], bool]  # (id of the earlier set, id of the later one) -> covers


def covers(
    earlier: CompiledRule,
    later: CompiledRule,
    ports: Collection[int],
    cache: _Cache | None = None,
) -> bool:
    """Whether every connection to ``ports`` that matches ``later`` matches ``earlier``."""
    if earlier.direction is not None and earlier.direction != later.direction:
        return False
    if earlier.dport is not None and not all(earlier.dport.contains(p) for p in ports):
        return False
    pairs = sorted(((earlier.src, later.src), (earlier.dst, later.dst)), key=_cost)
    return all(_addresses_cover(a, b, {} if cache is None else cache) for a, b in pairs)


def _cost(pair: tuple[AddressSet | None, AddressSet | None]) -> int:
    """Check the cheap address condition first: a big set's check may not be needed."""
    earlier, later = pair
    if earlier is None or later is None:
        return 0
    return later.size


def _addresses_cover(earlier: AddressSet | None, later: AddressSet | None, cache: _Cache) -> bool:
    if earlier is None or earlier is later:
        return True
    if later is None:
        return False
    if earlier.v4 is later.v4 and earlier.v6 is later.v6:
        return True
    key = (id(earlier), id(later))
    if key not in cache:
        cache[key] = earlier.covers(later)
    return cache[key]
