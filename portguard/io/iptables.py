"""The iptables hook: chain PORTGUARD in the filter table of iptables and ip6tables.

The chain's rules are written in the form ``iptables -S`` prints them, so that ``status`` can
compare what the kernel holds with what the config asks for, line by line. Every change to one
family is a single ``iptables-restore --noflush`` transaction: the chain is never half filled.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from portguard.io.hook import (
    CHAINS,
    COMMAND_NOT_FOUND,
    MARK_ALLOW,
    MARK_DROP,
    MARK_MASK,
    MARK_REJECT,
    VERDICT_MASK,
    HookSpec,
    HookStatus,
    Runner,
    checked,
    run_command,
    succeeded,
)

CHAIN: Final = "PORTGUARD"
FAMILIES: Final = ("iptables", "ip6tables")
MULTIPORT_MAX: Final = 15  # ports one multiport match takes
_SYN_ONLY: Final = "--tcp-flags FIN,SYN,RST,ACK SYN"  # OpenSnitch's trick: no ACK/RST/FIN
_JUMP: Final = f"-p tcp -j {CHAIN}"
_JUMP_TARGET: Final = re.compile(rf"\s-[jg] {CHAIN}(\s|$)")


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


def _port_matches(ports: Sequence[int]) -> Iterator[str]:
    for start in range(0, len(ports), MULTIPORT_MAX):
        group = ports[start : start + MULTIPORT_MAX]
        if len(group) == 1:
            yield f"-p tcp -m tcp --dport {group[0]} {_SYN_ONLY}"
        else:
            yield f"-p tcp -m multiport --dports {','.join(map(str, group))} -m tcp {_SYN_ONLY}"


def _queue_target(spec: HookSpec) -> str:
    if spec.workers == 1:
        target = f"-j NFQUEUE --queue-num {spec.queue_num}"
    else:
        target = f"-j NFQUEUE --queue-balance {spec.queue_num}:{spec.last_queue}"
    return target + (" --queue-bypass" if spec.fail_open else "")


def chain_rules(spec: HookSpec) -> tuple[str, ...]:
    """The rules of chain PORTGUARD, in order, as ``iptables -S PORTGUARD`` prints them."""
    queue = f"-m conntrack --ctstate NEW -m mark --mark {_mark(0)} {_queue_target(spec)}"
    allow, reset = _verdict(MARK_ALLOW), "-j REJECT --reject-with tcp-reset"
    save = f"-j CONNMARK --save-mark --nfmask {MARK_MASK:#x} --ctmask {MARK_MASK:#x}"
    return (
        # Ended connections first. A reset of our own (OUTPUT) carries the connmark: let it out.
        f"-A {CHAIN} -p tcp -m tcp ! --tcp-flags RST RST"
        f" -m connmark --mark {_verdict(MARK_REJECT)} {reset}",
        f"-A {CHAIN} -m connmark --mark {_verdict(MARK_DROP)} -j DROP",
        f"-A {CHAIN} -p tcp -m mark --mark {_verdict(MARK_REJECT)} {reset}",
        f"-A {CHAIN} -m mark --mark {allow} {save}",
        f"-A {CHAIN} -m mark --mark {allow} -j RETURN",
        f"-A {CHAIN} -m connmark --mark {allow} -j RETURN",
        *(f"-A {CHAIN} {ports} {queue}" for ports in _port_matches(spec.sorted_ports)),
    )


def restore_script(spec: HookSpec, jump_edits: Sequence[str]) -> str:
    """``iptables-restore --noflush`` input: chain PORTGUARD replaced whole, plus jump edits."""
    lines = ["*filter", f":{CHAIN} - [0:0]", f"-F {CHAIN}", *chain_rules(spec), *jump_edits]
    return "\n".join([*lines, "COMMIT", ""])


@dataclass(frozen=True, slots=True)
class FilterTable:
    """Our part of one family's filter table, read from ``iptables -S``."""

    chain_exists: bool = False
    chain_rules: tuple[str, ...] = ()
    jumps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # chain -> its jumps
    heads: Mapping[str, str] = field(default_factory=dict)  # chain -> its first rule

    @property
    def installed(self) -> bool:
        return self.chain_exists or any(self.jumps.values())

    def jump_count(self, chain: str) -> int:
        return len(self.jumps.get(_builtin(chain), ()))


def parse_filter_table(listing: str) -> FilterTable:
    """Find chain PORTGUARD, its rules and every rule jumping to it in ``iptables -S`` output."""
    lines = listing.splitlines()
    jumps: dict[str, list[str]] = {}
    heads: dict[str, str] = {}
    for line in lines:
        parts = line.split(maxsplit=2)
        if len(parts) == 3 and parts[0] == "-A":
            heads.setdefault(parts[1], line)
        if len(parts) == 3 and parts[0] == "-A" and parts[1] != CHAIN and _JUMP_TARGET.search(line):
            jumps.setdefault(parts[1], []).append(line)
    return FilterTable(
        chain_exists=f"-N {CHAIN}" in lines,
        chain_rules=tuple(line for line in lines if line.startswith(f"-A {CHAIN} ")),
        jumps={chain: tuple(found) for chain, found in jumps.items()},
        heads=heads,
    )


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
    if spec and table.chain_rules != chain_rules(spec):
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
    """Chain PORTGUARD in iptables and ip6tables, jumped to from FORWARD and/or OUTPUT."""

    name = "iptables"

    def __init__(self, runner: Runner = run_command) -> None:
        self._run = runner

    def render(self, spec: HookSpec) -> str:
        fresh = jump_edits(spec, FilterTable())
        header = "# applied with: iptables-restore -w --noflush; ip6tables-restore -w --noflush\n"
        return header + restore_script(spec, fresh)

    def install(self, spec: HookSpec) -> None:
        for family in FAMILIES:
            edits = jump_edits(spec, self._read(family))
            self._restore(family, restore_script(spec, edits))

    def remove(self) -> None:
        for family in FAMILIES:
            table = self._read(family, missing_ok=True)
            if table.installed:
                self._restore(family, removal_script(table))

    def status(self, spec: HookSpec | None = None) -> HookStatus:
        tables = {family: self._read(family, missing_ok=True) for family in FAMILIES}
        installed = any(table.installed for table in tables.values())
        problems = [p for fam, table in tables.items() for p in family_problems(fam, table, spec)]
        lines = [describe(family, table) for family, table in tables.items()]
        return HookStatus(
            backend=self.name,
            installed=installed,
            complete=not problems,
            detail="\n".join(lines + problems if installed else lines),
            rule_sets=max(t.jump_count(c) for t in tables.values() for c in CHAINS),
        )

    def _restore(self, family: str, script: str) -> None:
        checked(self._run, [f"{family}-restore", "-w", "--noflush"], script)

    def _read(self, family: str, missing_ok: bool = False) -> FilterTable:
        """The family's filter table; empty when the program is missing and ``missing_ok``."""
        argv = [family, "-w", "-t", "filter", "-S"]
        result = self._run(argv, None)
        if missing_ok and result.returncode == COMMAND_NOT_FOUND:
            return FilterTable()
        return parse_filter_table(succeeded(result))
