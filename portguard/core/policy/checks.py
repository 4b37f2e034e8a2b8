"""Checks that span rule files, run on the raw TOML data so that they also run in a file with
other errors: set names and their definitions, unions of sets and their cycles, rule ids,
references to sets, a single [default], and what a rule's keys say together (limit, log)."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from portguard.core.errors import Problem
from portguard.core.policy.schema import RULE_ID, SET_NAME, looks_like_address
from portguard.core.sourcemap import KeyPath
from portguard.core.tomlsource import TomlSource, toml_value

SET_KEYS = frozenset({"cidrs", "files", "sets", "hosts"})
ALLOWING = ("allow", "log")


def raw_sets(source: TomlSource) -> dict[str, Any]:
    sets = source.data.get("sets")
    return sets if isinstance(sets, dict) else {}


def raw_rules(source: TomlSource) -> Iterator[tuple[int, dict[str, Any]]]:
    rules = source.data.get("rule")
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        if isinstance(rule, dict):
            yield index, rule


def raw_strings(value: object, key: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    """The strings of a value that is a string or an array (with each one's key path)."""
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                yield (*key, index), item


def set_entries(source: TomlSource, name: str, entry: str) -> Iterator[tuple[KeyPath, str]]:
    """The strings of ``[sets.NAME] ENTRY = [...]`` (files, sets or hosts)."""
    body = raw_sets(source).get(name)
    if isinstance(body, dict) and isinstance(body.get(entry), list):
        yield from raw_strings(body[entry], ("sets", name, entry))


@dataclass
class _Seen:
    sets: dict[str, str] = field(default_factory=dict)  # name -> path:line of the definition
    rules: dict[str, str] = field(default_factory=dict)
    detectors: dict[str, str] = field(default_factory=dict)
    default: str | None = None


def cross_file_problems(sources: Sequence[TomlSource], complete: bool) -> list[Problem]:
    """Every problem across files. References to sets are checked only when every file parsed
    (``complete``): a set may be defined in the file with the syntax error."""
    seen = _Seen()
    problems: list[Problem] = []
    for source in sources:
        problems += _set_problems(source, seen.sets)
        problems += _id_problems(source, seen.rules)
        problems += _default_problems(source, seen)
        problems += _rule_problems(source)
        problems += _detect_problems(source, seen.detectors)
    if complete:
        for source in sources:
            problems += _reference_problems(source, seen.sets)
        problems += _cycle_problems(sources, seen.sets)
    return problems


def _set_problems(source: TomlSource, seen: dict[str, str]) -> Iterator[Problem]:
    for name, body in raw_sets(source).items():
        key: KeyPath = ("sets", name)
        if not SET_NAME.match(name):
            yield source.problem(
                key,
                f'set name "{name}" must start with a letter or "_" '
                'and hold only letters, digits, "_" and "-"',
            )
        if name in seen:
            yield source.problem(key, f"set '{name}' is already defined at {seen[name]}")
        seen.setdefault(name, source.where(key))
        if isinstance(body, dict) and set(body) <= SET_KEYS and not any(body.values()):
            yield source.problem(
                key, f"set '{name}' is empty: give it 'cidrs', 'files', 'hosts' or 'sets'"
            )


def _id_problems(source: TomlSource, seen: dict[str, str]) -> Iterator[Problem]:
    for index, rule in raw_rules(source):
        rule_id = rule.get("id")
        if not isinstance(rule_id, str):
            continue
        key: KeyPath = ("rule", index, "id")
        if rule_id in seen:
            yield source.problem(
                key, f"duplicate rule id '{rule_id}' (first defined at {seen[rule_id]})"
            )
        seen.setdefault(rule_id, source.where(key))


def _default_problems(source: TomlSource, seen: _Seen) -> Iterator[Problem]:
    if "default" not in source.data:
        return
    if seen.default is not None:
        yield source.problem(("default",), f"[default] is already set at {seen.default}")
    seen.default = seen.default or source.where(("default",))


def _rule_problems(source: TomlSource) -> Iterator[Problem]:
    for index, rule in raw_rules(source):
        if rule.get("log") is False and rule.get("action") == "log":
            message = 'log: a rule with action "log" is always logged (use action "allow")'
            yield source.problem(("rule", index, "log"), message)
        limit = rule.get("limit")
        if not isinstance(limit, dict):
            continue
        key: KeyPath = ("rule", index, "limit")
        action = rule.get("action")
        if isinstance(action, str) and action not in ALLOWING:
            yield source.problem(
                key,
                'limit: only a rule that allows (action "allow" or "log") can have a limit, '
                f"not action {toml_value(action)}",
            )
        yield from _limit_key_problems(source, key, limit)


def raw_detectors(source: TomlSource) -> dict[str, Any]:
    detect = source.data.get("detect")
    return detect if isinstance(detect, dict) else {}


def _detect_problems(source: TomlSource, seen: dict[str, str]) -> Iterator[Problem]:
    """Detector names (unique, rule-id characters) and the keys only quarantine uses."""
    for name, body in raw_detectors(source).items():
        key: KeyPath = ("detect", name)
        if not RULE_ID.match(name):
            yield source.problem(key, f'detector name "{name}" may hold only letters, digits, '
                                 '"_", "." and "-"')  # fmt: skip
        if name in seen:
            yield source.problem(key, f"detector '{name}' is already defined at {seen[name]}")
        seen.setdefault(name, source.where(key))
        if not isinstance(body, dict) or body.get("action", "alert") != "alert":
            continue
        for only in ("quarantine", "quarantine_ports"):
            if only in body:
                yield source.problem((*key, only), f'{only}: applies only with action = '
                                     '"quarantine"')  # fmt: skip


_LIMIT_KEY_PERS = {  # limit keys that mean something only with some values of `per`
    "prefix4": ("prefix",),
    "prefix6": ("src", "prefix"),
    "max_buckets": ("src", "prefix"),
}


def _limit_key_problems(
    source: TomlSource, key: KeyPath, limit: Mapping[str, Any]
) -> Iterator[Problem]:
    per = limit.get("per", "src")
    for name, pers in _LIMIT_KEY_PERS.items():
        if name in limit and per in ("src", "prefix", "rule") and per not in pers:
            allowed = " or ".join(f'"{p}"' for p in pers)
            yield source.problem((*key, name), f"{name}: applies only with per = {allowed}")


def _reference_problems(source: TomlSource, known: Mapping[str, str]) -> Iterator[Problem]:
    for index, rule in raw_rules(source):
        for name in ("src", "dst"):
            for key, value in raw_strings(rule.get(name), ("rule", index, name)):
                if not (looks_like_address(value) or not SET_NAME.match(value)):
                    yield from _unknown(source, key, name, value, known)
    for set_name in raw_sets(source):
        for key, member in set_entries(source, set_name, "sets"):
            if SET_NAME.match(member):
                yield from _unknown(source, key, "sets", member, known)


def _unknown(
    source: TomlSource, key: KeyPath, name: str, value: str, known: Mapping[str, str]
) -> Iterator[Problem]:
    if value in known:
        return
    close = difflib.get_close_matches(value, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    yield source.problem(key, f"{name}: unknown set '{value}'{hint}")


# --- cycles between sets (sets = [...]) -----------------------------------------------------

Edge = tuple[str, str, TomlSource, KeyPath]  # set, member, where the member is named


def _union_edges(sources: Sequence[TomlSource], known: Mapping[str, str]) -> dict[str, list[Edge]]:
    edges: dict[str, list[Edge]] = {}
    for source in sources:
        for name in raw_sets(source):
            for key, member in set_entries(source, name, "sets"):
                if member in known:
                    edges.setdefault(name, []).append((name, member, source, key))
    return edges


def _cycle_problems(sources: Sequence[TomlSource], known: Mapping[str, str]) -> Iterator[Problem]:
    for cycle in find_cycles(_union_edges(sources, known)):
        names = " -> ".join([cycle[0][0], *(edge[1] for edge in cycle)])
        _, member, source, key = cycle[-1]
        if len(cycle) == 1:
            yield source.problem(key, f"sets: set '{member}' includes itself")
            continue
        via = ", ".join(edge[2].where(edge[3]) for edge in cycle[:-1])
        yield source.problem(key, f"sets: cycle between sets: {names} (also at {via})")


def find_cycles(edges: Mapping[str, Sequence[Edge]]) -> list[list[Edge]]:
    """Each cycle once, as the edges that form it (found by a depth-first search, with its own
    stack: a chain of 10,000 sets must not exhaust Python's recursion limit)."""
    state: dict[str, bool] = {}  # True while on the path, False when done
    cycles: list[list[Edge]] = []
    for root in edges:
        if root in state:
            continue
        state[root] = True
        path: list[Edge] = []  # the edges taken from root to the node on top of `pending`
        pending: list[Iterator[Edge]] = [iter(edges.get(root, ()))]
        while pending:
            edge = next(pending[-1], None)
            if edge is None:  # every member of this node seen: leave it
                pending.pop()
                state[path.pop()[1] if path else root] = False
                continue
            member = edge[1]
            if state.get(member) is True:
                start = next((i for i, taken in enumerate(path) if taken[0] == member), len(path))
                cycles.append([*path[start:], edge])
            elif member not in state:
                state[member] = True
                path.append(edge)
                pending.append(iter(edges.get(member, ())))
    return cycles
