"""Rule files (text) -> a compiled RuleSet, or every problem in all the files at once.

Pure: the caller hands in the rule files' text and a function that reads a list file. Steps:
parse each file (TOML), validate its shape (pydantic), check what spans files (set names, rule
ids, [default], set references) on the raw data so that these checks run even in a file with
other errors, read the list files, and only when nothing is wrong build the RuleSet.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portguard.errors import PolicyError, Problem
from portguard.policy.addresses import AddressSet, Network, parse_address_list
from portguard.policy.model import Action, Decision, Direction
from portguard.policy.ports import PortSet
from portguard.policy.ruleset import CompiledRule, RuleSet, match_summary
from portguard.policy.schema import (
    SET_NAME,
    AddressRef,
    RuleFileSpec,
    RuleSpec,
    SetRef,
    looks_like_address,
)
from portguard.sourcemap import KeyPath
from portguard.tomlsource import TomlSource, parse_toml, validate

ListReader = Callable[[Path], str]  # reads a list file; raises OSError


@dataclass
class _Unit:
    """Everything learned about the policy so far."""

    sources: list[TomlSource] = field(default_factory=list)
    specs: list[RuleFileSpec] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    complete: bool = True  # every rule file parsed as TOML
    lists: dict[Path, list[Network]] = field(default_factory=dict)
    list_texts: dict[Path, str] = field(default_factory=dict)


def compile_ruleset(
    files: Sequence[tuple[Path, str]],
    read_list: ListReader,
    problems: Sequence[Problem] = (),
) -> RuleSet:
    """Compile rule files given as (path, text), in rule order. Raises PolicyError."""
    unit = _Unit(problems=list(problems))
    for path, text in files:
        _add_file(unit, path, text)
    unit.problems += _cross_file_problems(unit)
    _read_lists(unit, read_list)
    if unit.problems:
        raise PolicyError(unit.problems)
    return _build(unit, files)


def _add_file(unit: _Unit, path: Path, text: str) -> None:
    source = parse_toml(path, text)
    if isinstance(source, Problem):
        unit.problems.append(source)
        unit.complete = False
        return
    unit.sources.append(source)
    spec = validate(source, RuleFileSpec)
    if isinstance(spec, list):
        unit.problems += spec
    else:
        unit.specs.append(spec)


# --- checks across files (on the raw data) -------------------------------------------------


def _raw_sets(source: TomlSource) -> dict[str, Any]:
    sets = source.data.get("sets")
    return sets if isinstance(sets, dict) else {}


def _raw_rules(source: TomlSource) -> Iterator[tuple[int, dict[str, Any]]]:
    rules = source.data.get("rule")
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        if isinstance(rule, dict):
            yield index, rule


def _cross_file_problems(unit: _Unit) -> list[Problem]:
    problems: list[Problem] = []
    set_names: dict[str, str] = {}
    rule_ids: dict[str, str] = {}
    default_at: str | None = None
    for source in unit.sources:
        problems += _set_problems(source, set_names)
        problems += _id_problems(source, rule_ids)
        if "default" in source.data:
            if default_at is not None:
                message = f"[default] is already set at {default_at}"
                problems.append(source.problem(("default",), message))
            default_at = default_at or source.where(("default",))
    if unit.complete:
        for source in unit.sources:
            problems += _reference_problems(source, set_names)
    return problems


def _set_problems(source: TomlSource, seen: dict[str, str]) -> Iterator[Problem]:
    for name, body in _raw_sets(source).items():
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
        if isinstance(body, dict) and set(body) <= {"cidrs", "files"} and not any(body.values()):
            yield source.problem(key, f"set '{name}' is empty: give it 'cidrs' or 'files'")


def _id_problems(source: TomlSource, seen: dict[str, str]) -> Iterator[Problem]:
    for index, rule in _raw_rules(source):
        rule_id = rule.get("id")
        if not isinstance(rule_id, str):
            continue
        key: KeyPath = ("rule", index, "id")
        if rule_id in seen:
            yield source.problem(
                key, f"duplicate rule id '{rule_id}' (first defined at {seen[rule_id]})"
            )
        seen.setdefault(rule_id, source.where(key))


def _reference_problems(source: TomlSource, known: Mapping[str, str]) -> Iterator[Problem]:
    for index, rule in _raw_rules(source):
        for name in ("src", "dst"):
            for key, value in _raw_refs(rule.get(name), ("rule", index, name)):
                if looks_like_address(value) or not SET_NAME.match(value) or value in known:
                    continue
                close = difflib.get_close_matches(value, list(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                yield source.problem(key, f"{name}: unknown set '{value}'{hint}")


def _raw_refs(value: object, key: KeyPath) -> Iterator[tuple[KeyPath, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                yield (*key, index), item


# --- list files ----------------------------------------------------------------------------


def _read_lists(unit: _Unit, read_list: ListReader) -> None:
    for source in unit.sources:
        for name, body in _raw_sets(source).items():
            files = body.get("files") if isinstance(body, dict) else None
            for index, entry in enumerate(files if isinstance(files, list) else []):
                if isinstance(entry, str) and entry.strip():
                    key: KeyPath = ("sets", name, "files", index)
                    _read_list(unit, source, key, entry, read_list)


def _read_list(
    unit: _Unit, source: TomlSource, key: KeyPath, entry: str, read_list: ListReader
) -> None:
    path = source.path.parent / entry
    if path in unit.lists:
        return
    try:
        text = read_list(path)
    except (OSError, UnicodeDecodeError) as error:
        unit.problems.append(source.problem(key, f'files: list file "{entry}" {_why(path, error)}'))
        return
    networks, errors = parse_address_list(text)
    unit.lists[path] = networks
    unit.list_texts[path] = text
    unit.problems += [Problem(path, line, message) for line, message in errors]


def _why(path: Path, error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return f"not found (looked for {path.absolute()})"
    if isinstance(error, OSError):
        return f"cannot be read ({(error.strerror or str(error)).lower()})"
    return "is not UTF-8 text"


# --- building the RuleSet ------------------------------------------------------------------


def _build(unit: _Unit, files: Sequence[tuple[Path, str]]) -> RuleSet:
    sets = _build_sets(unit)
    rules: list[CompiledRule] = []
    disabled: list[str] = []
    default = Action.ALLOW
    for source, spec in zip(unit.sources, unit.specs, strict=True):
        for rule in spec.rule:
            if rule.enabled:
                rules.append(_compile_rule(rule, source.path.name, sets))
            else:
                disabled.append(rule.id)
        if spec.default is not None:
            default = Action(spec.default.action)
    decision = Decision(
        default, "default", "default", "no rule matched", "no rule matched; default action"
    )
    sources = [path for path, _ in files] + list(unit.lists)
    return RuleSet(rules, decision, _version(files, unit.list_texts), sources, disabled)


def _build_sets(unit: _Unit) -> dict[str, AddressSet]:
    sets = {}
    for source, spec in zip(unit.sources, unit.specs, strict=True):
        for name, body in spec.sets.items():
            networks = list(body.cidrs)
            for entry in body.files:
                networks += unit.lists[source.path.parent / entry]
            sets[name] = AddressSet.from_networks(f"set '{name}'", networks)
    return sets


def _compile_rule(spec: RuleSpec, ruleset: str, sets: Mapping[str, AddressSet]) -> CompiledRule:
    rule = CompiledRule(
        id=spec.id,
        ruleset=ruleset,
        description=spec.description,
        action=Action(spec.action),
        direction=None if spec.direction == "any" else Direction(spec.direction),
        dport=PortSet.from_ranges(spec.dport) if spec.dport is not None else None,
        src=_address_match(spec.src, sets),
        dst=_address_match(spec.dst, sets),
        decision=Decision(Action(spec.action), spec.id, ruleset, spec.description, ""),
    )
    reason = f"matched rule '{spec.id}': {match_summary(rule)}"
    return dataclasses.replace(rule, decision=dataclasses.replace(rule.decision, reason=reason))


def _address_match(
    refs: Sequence[AddressRef] | None, sets: Mapping[str, AddressSet]
) -> AddressSet | None:
    if refs is None:
        return None
    parts = [
        sets[ref.name] if isinstance(ref, SetRef) else AddressSet.from_networks(str(ref), [ref])
        for ref in refs
    ]
    if len(parts) == 1:
        return parts[0]
    return AddressSet.union(" or ".join(part.label for part in parts), parts)


def _version(files: Sequence[tuple[Path, str]], lists: Mapping[Path, str]) -> str:
    """A short digest of every file the policy was built from (names and contents)."""
    digest = hashlib.sha256()
    for path, text in [*files, *lists.items()]:
        digest.update(path.name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()[:12]
