"""The iptables hook: chain PORTGUARD in the filter table of iptables and ip6tables.

The chain's rules are written in the form ``iptables -S`` prints them, so that ``status`` can
compare what the kernel holds with what the config asks for, line by line. Every change to one
family is a single ``iptables-restore --noflush`` transaction: the chain is never half filled.

The chain is built in stages (``STAGES``): denies the daemon asks to cache (their key into the
deny cache's ipset, ipsets.py), connections already ended, the verdict marks, then what is
answered or dropped before the queue (conntrack INVALID with SYN; keys in the deny cache; one
source's SYNs over its ``hashlimit`` rate), then the queue. ``status`` reads ``iptables -v -S``:
the per-rule packet counters (``-c N M``) are taken out before rules are compared, and those of
the counted stages are summed into ``HookStatus.counters``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from portguard.core.marks import (
    MARK_ALLOW,
    MARK_CACHE,
    MARK_DROP,
    MARK_MASK,
    MARK_REJECT,
    VERDICT_MASK,
)
from portguard.io.hooks.backend import (
    CHAINS,
    COUNTER_DENY_CACHE,
    COUNTER_INVALID,
    COUNTER_PER_SOURCE,
    COUNTERS,
    HookSpec,
    HookStatus,
)
from portguard.io.hooks.ipsets import (
    FAMILY_VERSIONS,
    IpsetCache,
    create_script,
    set_name,
    set_problems,
)
from portguard.io.hooks.runner import COMMAND_NOT_FOUND, Runner, checked, run_command, succeeded

CHAIN: Final = "PORTGUARD"
FAMILIES: Final = ("iptables", "ip6tables")
MULTIPORT_MAX: Final = 15  # ports one multiport match takes
_SYN_ONLY: Final = "--tcp-flags FIN,SYN,RST,ACK SYN"  # OpenSnitch's trick: no ACK/RST/FIN
_JUMP: Final = f"-p tcp -j {CHAIN}"
_JUMP_TARGET: Final = re.compile(rf"\s-[jg] {CHAIN}(\s|$)")
_RULE_COUNTER: Final = re.compile(r" -c (\d+) (\d+)(?= |$)")  # `-v -S`: packets, bytes
HASHLIMIT_PREFIX: Final = "portguard-"  # + the settings' tag: /proc/net/ip{,6}t_hashlimit/NAME
# sources tracked at once: as many as conntrack keeps by default, so a spoofed flood fills
# conntrack before it fills this table (a full hashlimit table drops every new source)
HASHLIMIT_MAX: Final = 262144
HASHLIMIT_SCALE: Final = 1_000_000  # the kernel keeps a hashlimit rate as a period in µs


def _mark(value: int, mask: int = MARK_MASK) -> str:
    return f"{value:#x}/{mask:#x}"


def _verdict(value: int) -> str:
    """Any mark with this verdict, whatever direction it records."""
    return _mark(value, VERDICT_MASK)


def _builtin(chain: str) -> str:
    return chain.upper()


def jump_rule(chain: str) -> str:
    """The jump from a built-in chain ("forward", "output") as ``iptables -S`` prints it."""
    return f"-A {_builtin(chain)} {_JUMP}"


def _port_groups(ports: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ports), MULTIPORT_MAX):
        yield ports[start : start + MULTIPORT_MAX]


def _ports(group: Sequence[int]) -> str:
    """SYN-only TCP to the ports of one group (at most MULTIPORT_MAX)."""
    if len(group) == 1:
        return f"-p tcp -m tcp --dport {group[0]} {_SYN_ONLY}"
    return f"-p tcp -m multiport --dports {','.join(map(str, group))} -m tcp {_SYN_ONLY}"


def _queue_target(spec: HookSpec) -> str:
    if spec.workers == 1:
        target = f"-j NFQUEUE --queue-num {spec.queue_num}"
    else:
        target = f"-j NFQUEUE --queue-balance {spec.queue_num}:{spec.last_queue}"
    return target + (" --queue-bypass" if spec.fail_open else "")


_NEW_UNMARKED: Final = f"-m conntrack --ctstate NEW -m mark --mark {_mark(0)}"
_RESET: Final = "-j REJECT --reject-with tcp-reset"
_CACHE_TARGETS: Final = {MARK_REJECT: _RESET, MARK_DROP: "-j DROP"}


def _cached(verdict: int) -> str:
    """A packet mark of `verdict` with MARK_CACHE, whatever direction it records."""
    return _mark(verdict | MARK_CACHE, VERDICT_MASK | MARK_CACHE)


def cache_add_rules(spec: HookSpec, family: str) -> Iterator[str]:
    """A deny repeated with MARK_CACHE: its key into the deny cache of its verdict (the
    verdict rules then reject or drop it). Only a key not there yet: the kernel's add sets
    the element's counter to 1 (this packet, which the daemon decided), re-adding would
    reset it (ipsets.py counts an element's hits as its packets less one)."""
    if not spec.deny_cache:
        return
    for verdict in _CACHE_TARGETS:
        name = set_name(verdict, FAMILY_VERSIONS[family])
        absent = f"-m set ! --match-set {name} src,dst,dst ! --update-counters"
        add = f"-j SET --add-set {name} src,dst,dst --exist"
        yield f"-A {CHAIN} -m mark --mark {_cached(verdict)} {absent} {add}"


def cache_lookup_rules(spec: HookSpec, family: str) -> Iterator[str]:
    """A new SYN whose (source, destination, port) the deny cache holds gets the cached
    verdict without the queue, counted in the set's element."""
    if not spec.deny_cache:
        return
    for verdict, target in _CACHE_TARGETS.items():
        match = f"-m set --match-set {set_name(verdict, FAMILY_VERSIONS[family])} src,dst,dst"
        for group in _port_groups(spec.sorted_ports):
            yield f"-A {CHAIN} {_ports(group)} {_NEW_UNMARKED} {match} {target}"


def verdict_rules(spec: HookSpec, family: str) -> Iterator[str]:
    """Connections already decided: ended ones first, then the marks a verdict set."""
    allow, reset = _verdict(MARK_ALLOW), _RESET
    save = f"-j CONNMARK --save-mark --nfmask {MARK_MASK:#x} --ctmask {MARK_MASK:#x}"
    # A reset of our own (OUTPUT) carries the connmark: let it out.
    yield f"-A {CHAIN} -p tcp -m tcp ! --tcp-flags RST RST -m connmark --mark " + (
        f"{_verdict(MARK_REJECT)} {reset}"
    )
    yield f"-A {CHAIN} -m connmark --mark {_verdict(MARK_DROP)} -j DROP"
    yield f"-A {CHAIN} -p tcp -m mark --mark {_verdict(MARK_REJECT)} {reset}"
    yield f"-A {CHAIN} -m mark --mark {_verdict(MARK_DROP)} -j DROP"  # a deny to cache
    yield f"-A {CHAIN} -m mark --mark {allow} {save}"
    yield f"-A {CHAIN} -m mark --mark {allow} -j RETURN"
    yield f"-A {CHAIN} -m connmark --mark {allow} -j RETURN"


def invalid_rules(spec: HookSpec, family: str) -> Iterator[str]:
    """A packet with SYN that conntrack finds INVALID (SYN+FIN, SYN+RST, ...) never reaches
    a hooked port: it is not NEW, so it would pass the queue unseen."""
    for group in _port_groups(spec.sorted_ports):
        ports = _ports(group).replace(_SYN_ONLY, "--tcp-flags SYN SYN")
        yield f"-A {CHAIN} {ports} -m conntrack --ctstate INVALID -j DROP"


def hashlimit_rate(rate: int) -> int:
    """The rate as the kernel keeps it and ``iptables -S`` prints it (a whole period in µs)."""
    return HASHLIMIT_SCALE // (HASHLIMIT_SCALE // rate)


def per_source_rules(spec: HookSpec, family: str) -> Iterator[str]:
    """New SYNs over one source's rate are dropped before the queue (one IPv4 address, one
    IPv6 prefix of ``prefix6`` bits)."""
    limit = spec.per_source
    if limit is None:
        return
    v6_prefix = family == "ip6tables" and limit.prefix6 < 128  # 128: the default, not printed
    mask = f" --hashlimit-srcmask {limit.prefix6}" if v6_prefix else ""
    hashlimit = (
        f"-m hashlimit --hashlimit-above {hashlimit_rate(limit.rate)}/sec --hashlimit-burst "
        f"{limit.burst} --hashlimit-mode srcip --hashlimit-name {HASHLIMIT_PREFIX}{limit.tag}"
        f" --hashlimit-htable-max {HASHLIMIT_MAX}"
        f" --hashlimit-htable-expire {limit.forget_after * 1000}{mask}"
    )
    for group in _port_groups(spec.sorted_ports):
        yield f"-A {CHAIN} {_ports(group)} {_NEW_UNMARKED} {hashlimit} -j DROP"


def queue_rules(spec: HookSpec, family: str) -> Iterator[str]:
    for group in _port_groups(spec.sorted_ports):
        yield f"-A {CHAIN} {_ports(group)} {_NEW_UNMARKED} {_queue_target(spec)}"


Stage = Callable[[HookSpec, str], Iterator[str]]
STAGES: Final[tuple[Stage, ...]] = (
    cache_add_rules,
    verdict_rules,
    invalid_rules,
    cache_lookup_rules,
    per_source_rules,
    queue_rules,
)
# which counter a stage's rules add to (every packet they match ends there)
COUNTED: Final[Mapping[str, Stage]] = {
    COUNTER_INVALID: invalid_rules,
    COUNTER_PER_SOURCE: per_source_rules,
    COUNTER_DENY_CACHE: cache_lookup_rules,
}


def chain_rules(spec: HookSpec, family: str = "iptables") -> tuple[str, ...]:
    """The rules of chain PORTGUARD, in order, as ``iptables -S PORTGUARD`` prints them."""
    return tuple(rule for stage in STAGES for rule in stage(spec, family))


def restore_script(spec: HookSpec, jump_edits: Sequence[str], family: str = "iptables") -> str:
    """``iptables-restore --noflush`` input: chain PORTGUARD replaced whole, plus jump edits."""
    rules = chain_rules(spec, family)
    lines = ["*filter", f":{CHAIN} - [0:0]", f"-F {CHAIN}", *rules, *jump_edits]
    return "\n".join([*lines, "COMMIT", ""])


@dataclass(frozen=True, slots=True)
class FilterTable:
    """Our part of one family's filter table, read from ``iptables -S``."""

    chain_exists: bool = False
    chain_rules: tuple[str, ...] = ()
    jumps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # chain -> its jumps
    heads: Mapping[str, str] = field(default_factory=dict)  # chain -> its first rule
    packets: tuple[int, ...] = ()  # each of chain_rules' packet counter (``-v -S``), if listed

    @property
    def installed(self) -> bool:
        return self.chain_exists or any(self.jumps.values())

    def jump_count(self, chain: str) -> int:
        return len(self.jumps.get(_builtin(chain), ()))


def parse_filter_table(listing: str) -> FilterTable:
    """Find chain PORTGUARD, its rules and every rule jumping to it in ``iptables -S`` output
    (``-v -S`` too: the counters are taken out of the rules, PORTGUARD's kept in ``packets``)."""
    lines, counts = _without_counters(listing.splitlines())
    jumps: dict[str, list[str]] = {}
    heads: dict[str, str] = {}
    for line in lines:
        parts = line.split(maxsplit=2)
        if len(parts) == 3 and parts[0] == "-A":
            heads.setdefault(parts[1], line)
        if len(parts) == 3 and parts[0] == "-A" and parts[1] != CHAIN and _JUMP_TARGET.search(line):
            jumps.setdefault(parts[1], []).append(line)
    ours = [index for index, line in enumerate(lines) if line.startswith(f"-A {CHAIN} ")]
    return FilterTable(
        chain_exists=f"-N {CHAIN}" in lines,
        chain_rules=tuple(lines[index] for index in ours),
        jumps={chain: tuple(found) for chain, found in jumps.items()},
        heads=heads,
        packets=tuple(counts[index] for index in ours),
    )


def _without_counters(lines: Sequence[str]) -> tuple[list[str], list[int]]:
    """Each line without its ``-c PACKETS BYTES``, and its packets (0 when none)."""
    rules: list[str] = []
    packets: list[int] = []
    for line in lines:
        found = _RULE_COUNTER.search(line) if line.startswith("-") else None
        rules.append(line[: found.start()] + line[found.end() :] if found else line)
        packets.append(int(found[1]) if found else 0)
    return rules, packets


def drop_counters(family: str, table: FilterTable, spec: HookSpec) -> dict[str, int]:
    """Packets each counted drop stage dropped (COUNTERS), from the rules' own counters."""
    counted = {rule: name for name, stage in COUNTED.items() for rule in stage(spec, family)}
    totals = dict.fromkeys(COUNTERS, 0)
    for rule, packets in zip(table.chain_rules, table.packets, strict=False):
        if rule in counted:
            totals[counted[rule]] += packets
    return totals


def jump_edits(spec: HookSpec, table: FilterTable) -> list[str]:
    """Restore lines leaving exactly one jump from each hooked chain and none from the others."""
    edits: list[str] = []
    for chain in CHAINS:
        surplus = list(table.jumps.get(_builtin(chain), ()))
        if chain in spec.chains:
            # keep our jump only where it is the chain's first rule: a rule above it (another
            # tool's ACCEPT) would let connections bypass the policy
            if table.heads.get(_builtin(chain)) == jump_rule(chain):
                surplus.remove(jump_rule(chain))
                edits.extend("-D" + line[2:] for line in surplus)
                continue
            edits.extend("-D" + line[2:] for line in surplus)  # deletes first: same rule text
            edits.append(f"-I {_builtin(chain)} 1 {_JUMP}")
            continue
        edits.extend("-D" + line[2:] for line in surplus)
    return edits


def removal_script(table: FilterTable) -> str:
    """``iptables-restore --noflush`` input deleting every jump, then the chain."""
    lines = ["*filter"]
    lines += ["-D" + line[2:] for found in table.jumps.values() for line in found]
    if table.chain_exists:
        lines += [f"-F {CHAIN}", f"-X {CHAIN}"]
    return "\n".join([*lines, "COMMIT", ""])


def family_problems(family: str, table: FilterTable, spec: HookSpec | None) -> list[str]:
    """What is missing or wrong in one family; empty when it is complete."""
    if not table.chain_exists:
        return [f"{family}: no chain {CHAIN}"]
    problems: list[str] = []
    hooked = spec.chains if spec else [c for c in CHAINS if table.jump_count(c)]
    if not hooked:
        problems.append(f"{family}: no jump to {CHAIN} from FORWARD or OUTPUT")
    for chain in CHAINS:
        count, builtin = table.jump_count(chain), _builtin(chain)
        if chain in hooked and count != 1:
            problems.append(f"{family}: {count} jumps from {builtin}, one expected")
        elif chain in hooked and table.heads.get(builtin) != jump_rule(chain):
            # a rule above the jump (another tool's ACCEPT) lets connections bypass the policy
            problems.append(f"{family}: {builtin} does not begin with the jump to {CHAIN}")
        elif chain not in hooked and count:
            problems.append(f"{family}: jump from {builtin}, which the config does not hook")
    if spec and table.chain_rules != chain_rules(spec, family):
        problems.append(f"{family}: the rules of {CHAIN} differ from the config")
    if not spec and not any("-j NFQUEUE" in rule for rule in table.chain_rules):
        problems.append(f"{family}: {CHAIN} has no NFQUEUE rule")
    return problems


def describe(family: str, table: FilterTable) -> str:
    if not table.installed:
        return f"{family}: nothing installed"
    jumps = ", ".join(f"{chain} x{len(found)}" for chain, found in sorted(table.jumps.items()))
    return f"{family}: chain {CHAIN} ({len(table.chain_rules)} rules), jumps: {jumps or 'none'}"


class IptablesBackend:
    """Chain PORTGUARD in iptables and ip6tables, jumped to from FORWARD and/or OUTPUT, and
    the deny cache's ipsets (ipsets.py) when the spec asks for the cache."""

    name = "iptables"

    def __init__(self, runner: Runner = run_command) -> None:
        self._run = runner
        self.cache = IpsetCache(runner)

    def render(self, spec: HookSpec) -> str:
        fresh = jump_edits(spec, FilterTable())
        sets = f"# applied with: ipset -exist restore\n{create_script()}" if spec.deny_cache else ""
        return sets + "".join(
            f"# applied with: {family}-restore -w --noflush\n" + restore_script(spec, fresh, family)
            for family in FAMILIES
        )

    def install(self, spec: HookSpec) -> None:
        if spec.deny_cache:
            self.cache.create()  # before the rules that name them
        for family in FAMILIES:
            edits = jump_edits(spec, self._read(family))
            self._restore(family, restore_script(spec, edits, family))
        if not spec.deny_cache:
            self.cache.destroy()  # a former config's, no rule names them any more

    def remove(self) -> None:
        for family in FAMILIES:
            table = self._read(family, missing_ok=True)
            if table.installed:
                self._restore(family, removal_script(table))
        self.cache.destroy()  # after the rules: a set a rule names cannot be destroyed

    def status(self, spec: HookSpec | None = None) -> HookStatus:
        tables = {family: self._read(family, missing_ok=True) for family in FAMILIES}
        sets = self.cache.present()
        installed = bool(sets) or any(table.installed for table in tables.values())
        problems = [p for fam, table in tables.items() for p in family_problems(fam, table, spec)]
        problems += set_problems(sets, spec)
        lines = [describe(family, table) for family, table in tables.items()]
        lines += [f"ipset: {len(sets)} deny-cache sets"] if sets else []
        counters = dict.fromkeys(COUNTERS, 0)
        for family, table in tables.items():
            for name, packets in drop_counters(family, table, spec).items() if spec else ():
                counters[name] += packets
        return HookStatus(
            backend=self.name,
            installed=installed,
            complete=not problems,
            detail="\n".join(lines + problems if installed else lines),
            rule_sets=max(t.jump_count(c) for t in tables.values() for c in CHAINS),
            counters=counters if spec else {},
        )

    def _restore(self, family: str, script: str) -> None:
        checked(self._run, [f"{family}-restore", "-w", "--noflush"], script)

    def _read(self, family: str, missing_ok: bool = False) -> FilterTable:
        """The family's filter table; empty when the program is missing and ``missing_ok``."""
        argv = [family, "-w", "-t", "filter", "-v", "-S"]  # -v: with the rules' counters
        result = self._run(argv, None)
        if missing_ok and result.returncode == COMMAND_NOT_FOUND:
            return FilterTable()
        return parse_filter_table(succeeded(result))
