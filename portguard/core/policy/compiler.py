"""Rule files (text) -> a compiled RuleSet, or every problem in all the files at once.

Pure: the caller hands in the rule files' text, a function that reads a list file and one that
resolves a host name. Steps: parse each file (TOML), validate its shape (pydantic), check what
spans files (set names, unions and their cycles, rule ids, [default], set references, limits) on
the raw data so that these checks run even in a file with other errors, read the list files,
resolve the host names, and only when nothing is wrong build the RuleSet.

A previous RuleSet (the policy in force) can be passed in: list files whose text did not change
are not parsed again, and a host name that does not resolve keeps its previous addresses (with a
warning) instead of failing the load. On a first load it is an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from portguard.core.errors import HOST_KEPT, PolicyError, Problem, unexpected
from portguard.core.policy.addresses import AddressSet, parse_address_list, parse_network
from portguard.core.policy.checks import cross_file_problems, raw_sets, set_entries
from portguard.core.policy.detectors import DEFAULT_QUARANTINE, Detector
from portguard.core.policy.hosts import (
    Resolver,
    Transient,
    always_transient,
    host_name_problem,
    resolve_problem,
)
from portguard.core.policy.model import DEFAULT_MAX_BUCKETS, Action, Decision, Direction, Limit
from portguard.core.policy.ports import PortSet
from portguard.core.policy.ruleset import CompiledRule, ListFile, RuleSet, match_summary
from portguard.core.policy.schema import (
    AddressRef,
    DetectSpec,
    LimitSpec,
    RuleFileSpec,
    RuleSpec,
    SetRef,
)
from portguard.core.policy.sets import build_sets
from portguard.core.sourcemap import KeyPath
from portguard.core.tomlsource import TextError, TomlSource, parse_toml, validate

ListReader = Callable[[Path], str]  # reads a list file; raises OSError


def no_resolver(name: str) -> Sequence[str]:
    raise OSError(f"no resolver to look up {name}")


@dataclass
class _Unit:
    """Everything learned about the policy so far."""

    previous: RuleSet | None
    sources: list[TomlSource] = field(default_factory=list)
    specs: list[RuleFileSpec] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    complete: bool = True  # every rule file parsed as TOML
    lists: dict[Path, ListFile] = field(default_factory=dict)
    resolved: dict[str, tuple[str, ...]] = field(default_factory=dict)
    current: Path | None = None  # the file being worked on (named by an unexpected error)


def compile_ruleset(
    files: Sequence[tuple[Path, str]],
    read_list: ListReader,
    problems: Sequence[Problem] = (),
    *,
    resolve: Resolver = no_resolver,
    transient: Transient = always_transient,
    previous: RuleSet | None = None,
) -> RuleSet:
    """Compile rule files given as (path, text), in rule order. Raises PolicyError.

    The I/O comes in as functions: ``read_list`` reads a list file, ``resolve`` looks up a
    host name and ``transient`` says whether its failure may keep the addresses in force."""
    unit = _Unit(previous, problems=list(problems))
    try:
        for path, text in files:
            unit.current = path
            _add_file(unit, path, text)
        unit.problems += cross_file_problems(unit.sources, unit.complete)
        _read_lists(unit, read_list)
        _resolve_hosts(unit, resolve, transient)
        if unit.problems:
            raise PolicyError(unit.problems)
        return _build(unit, files)
    except PolicyError:
        raise
    except Exception as error:  # the last resort: name the file, keep the policy in force
        where = unit.current or (files[0][0] if files else Path("rules"))
        raise PolicyError([unexpected(where, error)]) from error


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


# --- list files ----------------------------------------------------------------------------


def _read_lists(unit: _Unit, read_list: ListReader) -> None:
    for source in unit.sources:
        for name in raw_sets(source):
            for key, entry in set_entries(source, name, "files"):
                if entry.strip():
                    _read_list(unit, source, key, entry, read_list)


def _read_list(
    unit: _Unit, source: TomlSource, key: KeyPath, entry: str, read_list: ListReader
) -> None:
    path = unit.current = source.path.parent / entry
    if path in unit.lists:
        return
    try:
        text = read_list(path)
    except TextError as error:
        located = error.line is not None
        unit.problems.append(
            error.problem(path)
            if located
            else source.problem(key, f'files: list file "{entry}" {error.message}')
        )
        return
    except (OSError, UnicodeDecodeError) as error:
        unit.problems.append(source.problem(key, f'files: list file "{entry}" {_why(path, error)}'))
        return
    digest = hashlib.sha256(text.encode()).hexdigest()
    before = unit.previous.lists.get(path) if unit.previous else None
    if before is not None and before.digest == digest:
        unit.lists[path] = before
        return
    addresses, errors = parse_address_list(text, str(path))
    unit.lists[path] = ListFile(digest, addresses)
    unit.problems += [Problem(path, line, message, col) for line, col, message in errors]


def _why(path: Path, error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return f"not found (looked for {path.absolute()})"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not a list file"
    if isinstance(error, OSError):
        return f"cannot be read ({(error.strerror or str(error)).lower()})"
    return "is not UTF-8 text"


# --- host names ----------------------------------------------------------------------------


def _resolve_hosts(unit: _Unit, resolve: Resolver, transient: Transient) -> None:
    for source in unit.sources:
        unit.current = source.path
        for name in raw_sets(source):
            for key, host in set_entries(source, name, "hosts"):
                if host not in unit.resolved and host_name_problem(host) is None:
                    _resolve_host(unit, source, key, host, resolve, transient)


def _resolve_host(
    unit: _Unit,
    source: TomlSource,
    key: KeyPath,
    host: str,
    resolve: Resolver,
    transient: Transient,
) -> None:
    passing = False
    try:
        addresses = _valid_addresses(resolve(host))
        reason = "resolves to no IP address"
    except OSError as error:
        addresses, reason, passing = (), resolve_problem(error), transient(error)
    if addresses:
        unit.resolved[host] = addresses
        return
    # only a transient failure keeps the addresses in force; a definite "no such name" must
    # not leave a decommissioned host's (maybe reassigned) addresses allowed for ever
    kept = unit.previous.resolved.get(host) if unit.previous and passing else None
    if kept:
        unit.resolved[host] = kept
        message = f'hosts: "{host}" did not resolve ({reason}); kept {", ".join(kept)}'
        unit.warnings.append(source.problem(key, message, HOST_KEPT))
        return
    unit.problems.append(source.problem(key, f'hosts: "{host}" does not resolve ({reason})'))


def _valid_addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    valid = []
    for address in addresses:
        try:
            valid.append(str(parse_network(address)))
        except ValueError:
            continue
    return tuple(dict.fromkeys(valid))


# --- building the RuleSet ------------------------------------------------------------------


def _build(unit: _Unit, files: Sequence[tuple[Path, str]]) -> RuleSet:
    unit.current = None
    lists = {path: entry.addresses for path, entry in unit.lists.items()}
    set_specs = [(src.path, spec.sets) for src, spec in zip(unit.sources, unit.specs, strict=True)]
    sets = build_sets(set_specs, lists, unit.resolved)
    rules: list[CompiledRule] = []
    disabled: list[str] = []
    detectors: list[Detector] = []
    default = Action.ALLOW
    for source, spec in zip(unit.sources, unit.specs, strict=True):
        unit.current = source.path
        detectors += [_detector(name, body, source.path) for name, body in spec.detect.items()]
        for index, rule in enumerate(spec.rule):
            if rule.enabled:
                rules.append(_compile_rule(rule, source.path, index, sets))
            else:
                disabled.append(rule.id)
        if spec.default is not None:
            default = Action(spec.default.action)
    decision = Decision(
        default, "default", "default", "no rule matched", "no rule matched; default action"
    )
    return RuleSet(
        rules,
        decision,
        _version(files, unit),
        [path for path, _ in files] + list(unit.lists),
        disabled,
        resolved=unit.resolved,
        lists=unit.lists,
        warnings=unit.warnings,
        texts=dict(files),
        detectors=detectors,
    )


def _detector(name: str, spec: DetectSpec, path: Path) -> Detector:
    ports = PortSet.from_ranges(spec.dport)
    quarantine_ports = ports if spec.quarantine_ports is None else PortSet.from_ranges(
        spec.quarantine_ports)  # fmt: skip
    duration = DEFAULT_QUARANTINE if spec.quarantine is None else spec.quarantine
    return Detector(name, ports, spec.distinct, spec.window, spec.action, duration,
                    quarantine_ports, path.name)  # fmt: skip


def _compile_rule(
    spec: RuleSpec, path: Path, index: int, sets: Mapping[str, AddressSet]
) -> CompiledRule:
    rule = CompiledRule(
        id=spec.id,
        ruleset=path.name,
        description=spec.description,
        action=Action(spec.action),
        direction=None if spec.direction == "any" else Direction(spec.direction),
        dport=PortSet.from_ranges(spec.dport) if spec.dport is not None else None,
        src=_address_match(spec.src, sets),
        dst=_address_match(spec.dst, sets),
        decision=Decision(Action(spec.action), spec.id, path.name, spec.description, ""),
        limit=compile_limit(spec.limit),
        log=spec.log,
        path=path,
        index=index,
    )
    reason = f"matched rule '{spec.id}': {match_summary(rule)}"
    decision = Decision(rule.action, rule.id, rule.ruleset, rule.description, reason, rule.log)
    return dataclasses.replace(rule, decision=decision)


def compile_limit(spec: LimitSpec | None) -> Limit | None:
    """The frozen limit of a rule: per src is an IPv4 address (/32) or an IPv6 /64 (or its
    prefix6: privacy addresses rotate within a /64, RFC 8981, and a subscriber gets at least a
    /64), per prefix /24 and /64 unless given, per rule prefix 0/0."""
    if spec is None:
        return None
    prefix6 = 64 if spec.prefix6 is None else spec.prefix6
    prefixes = {"src": (32, prefix6), "rule": (0, 0)}.get(spec.per)
    if prefixes is None:
        prefixes = (24 if spec.prefix4 is None else spec.prefix4, prefix6)
    burst = spec.rate.number if spec.burst is None else spec.burst
    exceed = Action(spec.exceed)
    buckets = DEFAULT_MAX_BUCKETS if spec.max_buckets is None else spec.max_buckets
    return Limit(spec.rate.text, spec.rate.per_second, burst, spec.per, *prefixes, exceed, buckets)


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


def _version(files: Sequence[tuple[Path, str]], unit: _Unit) -> str:
    """A short digest of every file the policy was built from (names and contents) and of
    the addresses the host names resolved to."""
    digest = hashlib.sha256()
    for path, text in files:
        digest.update(path.name.encode() + b"\0" + text.encode() + b"\0")
    for path, entry in unit.lists.items():
        digest.update(path.name.encode() + b"\0" + entry.digest.encode() + b"\0")
    for host in sorted(unit.resolved):
        digest.update(f"{host}={','.join(sorted(unit.resolved[host]))}\0".encode())
    return digest.hexdigest()[:12]
