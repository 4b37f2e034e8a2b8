"""The nftables hook: one table ``inet portguard``, applied and removed as a whole with ``nft -f``.

Kernels without CONFIG_NFT_QUEUE refuse the ``queue`` statement; ``queue_supported`` asks the
kernel (``nft -c`` sends the batch to the kernel and aborts it) so that "auto" can fall back to
iptables, whose NFQUEUE target works there.

The table holds its declarations first (``declarations``: named counters, the per-source
meters as dynamic sets), then one base chain per hook whose rules come in stages, as in the
iptables backend: connections already decided, drops before the queue (conntrack INVALID with
SYN; one source over its rate), the queue. Each drop stage counts into a named counter, which
``status`` reads from the same (terse: no set elements) listing it checks the rules in.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from portguard.core.marks import (
    DIRECTION_BITS,
    MARK_ALLOW,
    MARK_DROP,
    MARK_MASK,
    MARK_REJECT,
    VERDICT_MASK,
)
from portguard.io.hooks import nftcache
from portguard.io.hooks.backend import (
    COUNTER_DENY_CACHE,
    COUNTER_INVALID,
    COUNTER_PER_SOURCE,
    HookSpec,
    HookStatus,
)
from portguard.io.hooks.runner import COMMAND_NOT_FOUND, Runner, checked, run_command, succeeded

TABLE: Final = "inet portguard"
# Declaring the table first makes the delete succeed when it is absent: idempotent, one batch.
_RESET: Final = f"table {TABLE}\ndelete table {TABLE}\n"
_NFT_APPLY: Final = ("nft", "-f", "-")
_QUEUE_STATEMENT: Final = re.compile(r"\bqueue\b")
_CHAIN_START: Final = re.compile(r"^chain (\S+) \{$")
_COUNTER_START: Final = re.compile(r"^counter (\S+) \{$")
_COUNTER_VALUE: Final = re.compile(r"^packets (\d+) bytes (\d+)$")
_HOOK: Final = re.compile(r"\bhook (\w+)\b")
# the named counters of the drop stages
COUNTER_NAMES: Final = {
    COUNTER_PER_SOURCE: "per_source_dropped",
    COUNTER_INVALID: "invalid_dropped",
    COUNTER_DENY_CACHE: nftcache.COUNTER,
}
SOURCE_SETS: Final = {4: "per_source4", 6: "per_source6"}  # one meter a family
SOURCE_SET_SIZE: Final = 65536  # sources tracked at once; beyond, new ones are not limited

PROBE_RULESET: Final = """table inet portguard_probe {
\tchain probe {
\t\ttype filter hook output priority filter; policy accept;
\t\tqueue num 0 bypass
\t}
}
"""


def queue_supported(runner: Runner = run_command) -> bool:
    """Whether the kernel accepts an nft queue statement (checked only: nothing is installed)."""
    return runner(["nft", "-c", "-f", "-"], PROBE_RULESET).returncode == 0


def _hex(value: int) -> str:
    return f"{value:#010x}"


def queue_statement(spec: HookSpec) -> str:
    queues = str(spec.queue_num) if spec.workers == 1 else f"{spec.queue_num}-{spec.last_queue}"
    return f"queue num {queues}" + (" bypass" if spec.fail_open else "")


def save_rules() -> tuple[str, ...]:
    """Allowed: copy the mark's bits (verdict and direction) to the connmark, keep its others.

    nft 1.0 takes only a constant on the right of ``|`` (not ``meta mark & MASK``), so there is
    one rule per direction, each with its value as a constant.
    """
    mark, keep = f"meta mark & {_hex(MARK_MASK)}", _hex(~MARK_MASK & 0xFFFFFFFF)
    values = [_hex(MARK_ALLOW | bits) for bits in sorted(DIRECTION_BITS.values())]
    return tuple(f"{mark} == {v} ct mark set ct mark & {keep} | {v} accept" for v in values)


_SYN_ONLY: Final = "tcp flags & (fin | syn | rst | ack) == syn"
_NEW_UNMARKED: Final = f"ct state new meta mark & {_hex(MARK_MASK)} == {_hex(0)}"


def _ports(spec: HookSpec) -> str:
    return f"tcp dport {{ {', '.join(map(str, spec.sorted_ports))} }}"


def _counted(name: str) -> str:
    return f'counter name "{COUNTER_NAMES[name]}"'


def verdict_rules(spec: HookSpec) -> Iterator[str]:
    """Connections already decided: ended ones first, then the marks a verdict set."""
    verdict, ct_verdict = f"meta mark & {_hex(VERDICT_MASK)}", f"ct mark & {_hex(VERDICT_MASK)}"
    # A reset of our own (output) carries the connmark: let it out.
    yield f"tcp flags & rst == 0 {ct_verdict} == {_hex(MARK_REJECT)} counter reject with tcp reset"
    yield f"{ct_verdict} == {_hex(MARK_DROP)} counter drop"
    yield f"{verdict} == {_hex(MARK_REJECT)} counter reject with tcp reset"
    yield f"{verdict} == {_hex(MARK_DROP)} counter drop"  # a deny the cache took
    yield from save_rules()
    yield f"{ct_verdict} == {_hex(MARK_ALLOW)} accept"


def invalid_rules(spec: HookSpec) -> Iterator[str]:
    """A packet with SYN that conntrack finds INVALID (SYN+FIN, ...) never reaches a hooked
    port: it is not NEW, so it would pass the queue unseen."""
    yield f"tcp flags & syn == syn {_ports(spec)} ct state invalid {_counted(COUNTER_INVALID)} drop"


def source_key(version: int, prefix6: int) -> str:
    """What one source is: an IPv4 address, or an IPv6 address cut to ``prefix6`` bits."""
    if version == 4:
        return "ip saddr"
    if prefix6 == 128:
        return "ip6 saddr"
    return f"ip6 saddr & {ipaddress.IPv6Network(f'::/{prefix6}').netmask}"


def per_source_rules(spec: HookSpec) -> Iterator[str]:
    """New SYNs over one source's rate are dropped before the queue, per family's meter."""
    limit = spec.per_source
    if limit is None:
        return
    over = f"limit rate over {limit.rate}/second burst {limit.burst} packets"
    for version, name in SOURCE_SETS.items():
        meter = f"update @{name} {{ {source_key(version, limit.prefix6)} {over} }}"
        match = f"meta nfproto ipv{version} {_SYN_ONLY} {_ports(spec)} {_NEW_UNMARKED}"
        yield f"{match} {meter} {_counted(COUNTER_PER_SOURCE)} drop"


def queue_rules(spec: HookSpec) -> Iterator[str]:
    yield f"{_SYN_ONLY} {_ports(spec)} {_NEW_UNMARKED} counter {queue_statement(spec)}"


Stage = Callable[[HookSpec], Iterator[str]]
STAGES: Final[tuple[Stage, ...]] = (verdict_rules, invalid_rules, per_source_rules, queue_rules)


def chain_rules(spec: HookSpec) -> tuple[str, ...]:
    """The rules of each base chain, in order (the deny cache's generation first)."""
    jump = (nftcache.JUMP_RULE,) if spec.deny_cache else ()
    return jump + tuple(rule for stage in STAGES for rule in stage(spec))


def counters_wanted(spec: HookSpec) -> tuple[str, ...]:
    """The named counters the table declares (nft names)."""
    wanted = [COUNTER_INVALID] + ([COUNTER_PER_SOURCE] if spec.per_source else [])
    wanted += [COUNTER_DENY_CACHE] if spec.deny_cache else []
    return tuple(COUNTER_NAMES[name] for name in wanted)


def declarations(spec: HookSpec) -> list[str]:
    """The table's objects, before its chains: named counters, then the per-source meters."""
    lines: list[str] = []
    for name in counters_wanted(spec):
        lines += [f"\tcounter {name} {{", "\t}"]
    if spec.per_source is not None:
        for version, name in SOURCE_SETS.items():
            lines += [f"\tset {name} {{", f"\t\ttype ipv{version}_addr",
                      f"\t\tsize {SOURCE_SET_SIZE}", "\t\tflags dynamic,timeout",
                      f"\t\ttimeout {spec.per_source.forget_after}s", "\t}"]  # fmt: skip
    return lines + (nftcache.declarations() if spec.deny_cache else [])


def _base_chain(hook: str) -> str:
    return f"filter hook {hook} priority filter; policy accept;"


def ruleset(spec: HookSpec) -> str:
    """The table: one base chain per hooked netfilter chain, named after its hook."""
    lines = [f"table {TABLE} {{", *declarations(spec)]
    lines += nftcache.chains(spec) if spec.deny_cache else []
    for chain in spec.sorted_chains:
        lines += [f"\tchain {chain} {{", f"\t\ttype {_base_chain(chain)}"]
        lines += [f"\t\t{rule}" for rule in chain_rules(spec)]
        lines.append("\t}")
    return "\n".join([*lines, "}", ""])


@dataclass(frozen=True, slots=True)
class Table:
    """Table inet portguard as ``nft list table`` shows it: chain name -> (hook, rules)."""

    chains: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)  # named counter -> packets

    def queue_rules(self, chain: str) -> list[str]:
        rules = self.chains.get(chain, ("", ()))[1]
        return [rule for rule in rules if _QUEUE_STATEMENT.search(rule)]


def parse_table(listing: str) -> Table:
    chains: dict[str, tuple[str, tuple[str, ...]]] = {}
    counters: dict[str, int] = {}
    name, hook, rules, counter = "", "", list[str](), ""
    for line in (raw.strip() for raw in listing.splitlines()):
        if start := _COUNTER_START.match(line):
            counter = start[1]
            counters[counter] = 0
        elif counter and (value := _COUNTER_VALUE.match(line)):
            counters[counter], counter = int(value[1]), ""
        elif start := _CHAIN_START.match(line):
            name, hook, rules = start[1], "", []
        elif name and line == "}":
            chains[name] = (hook, tuple(rules))
            name = ""
        elif name and line.startswith("type "):
            hook = found[1] if (found := _HOOK.search(line)) else ""
        elif name and line:
            rules.append(line)
    return Table(chains, counters)


def table_problems(table: Table, spec: HookSpec | None) -> list[str]:
    """What is missing or wrong in the table; empty when it is complete."""
    problems: list[str] = []
    cache = {nftcache.chain_name(gen): gen for gen in nftcache.GENERATIONS}
    if spec:
        wanted = [*spec.sorted_chains, *(cache if spec.deny_cache else ())]
        problems += [f"no chain {c}" for c in wanted if c not in table.chains]
        unwanted = sorted(set(table.chains) - set(wanted))
        problems += [f"chain {c} is not hooked by the config" for c in unwanted]
        missing = [name for name in counters_wanted(spec) if name not in table.counters]
        problems += [f"no counter {name}" for name in missing]
    elif not table.chains:
        problems.append("no chains")
    for chain, (_hook, rules) in table.chains.items():
        if chain in cache:  # a generation of the deny cache (nft prints rules its own way)
            expected = len(list(nftcache.cache_rules(spec, cache[chain]))) if spec else len(rules)
            if len(rules) != expected:
                problems.append(f"chain {chain} has {len(rules)} rules, {expected} expected")
            continue
        queue_rules = table.queue_rules(chain)
        if len(queue_rules) != 1:
            problems.append(f"chain {chain} has {len(queue_rules)} queue rules")
        elif spec and ("bypass" in queue_rules[0]) != spec.fail_open:
            problems.append(f"chain {chain}: queue bypass differs from the fail mode")
        if spec and len(rules) != len(chain_rules(spec)):  # nft prints rules its own way
            problems.append(
                f"chain {chain} has {len(rules)} rules, {len(chain_rules(spec))} expected"
            )
    return problems


def describe(table: Table) -> str:
    chains = ", ".join(
        f"{name} (hook {hook}, {len(rules)} rules)" for name, (hook, rules) in table.chains.items()
    )
    return f"nftables: table {TABLE}, chains: {chains or 'none'}"


class NftablesBackend:
    """Table inet portguard with base chains ``forward`` and/or ``output``."""

    name = "nftables"

    def __init__(self, runner: Runner = run_command) -> None:
        self._run = runner

    def render(self, spec: HookSpec) -> str:
        return "# applied atomically with: nft -f -\n" + _RESET + ruleset(spec)

    def install(self, spec: HookSpec) -> None:
        checked(self._run, _NFT_APPLY, self.render(spec))

    def remove(self) -> None:
        result = self._run(_NFT_APPLY, _RESET)
        if result.returncode != COMMAND_NOT_FOUND:
            succeeded(result)

    def status(self, spec: HookSpec | None = None) -> HookStatus:
        table = self._read()
        if table is None:
            return HookStatus(self.name, False, False, f"nftables: no table {TABLE}", 0)
        problems = table_problems(table, spec)
        return HookStatus(
            backend=self.name,
            installed=True,
            complete=not problems,
            detail="\n".join([describe(table), *problems]),
            rule_sets=max((len(table.queue_rules(c)) for c in table.chains), default=0),
            counters={key: table.counters.get(name, 0) for key, name in COUNTER_NAMES.items()},
        )

    def _read(self) -> Table | None:
        """The table, or None when it (or nft) is absent."""
        # terse: without the meters' elements (up to SOURCE_SET_SIZE of them)
        result = self._run(["nft", "-t", "list", "table", *TABLE.split()], None)
        if result.returncode == COMMAND_NOT_FOUND or "No such file or directory" in result.stderr:
            return None
        return parse_table(succeeded(result))
