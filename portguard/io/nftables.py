"""The nftables hook: one table ``inet portguard``, applied and removed as a whole with ``nft -f``.

Kernels without CONFIG_NFT_QUEUE refuse the ``queue`` statement; ``queue_supported`` asks the
kernel (``nft -c`` sends the batch to the kernel and aborts it) so that "auto" can fall back to
iptables, whose NFQUEUE target works there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from portguard.io.hook import (
    COMMAND_NOT_FOUND,
    MARK_ALLOW,
    MARK_MASK,
    MARK_REJECT,
    HookSpec,
    HookStatus,
    Runner,
    checked,
    run_command,
    succeeded,
)

TABLE: Final = "inet portguard"
# Declaring the table first makes the delete succeed when it is absent: idempotent, one batch.
_RESET: Final = f"table {TABLE}\ndelete table {TABLE}\n"
_NFT_APPLY: Final = ("nft", "-f", "-")
_QUEUE_STATEMENT: Final = re.compile(r"\bqueue\b")
_CHAIN_START: Final = re.compile(r"^chain (\S+) \{$")
_HOOK: Final = re.compile(r"\bhook (\w+)\b")

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


def chain_rules(spec: HookSpec) -> tuple[str, ...]:
    """The rules of each base chain, in order."""
    mark, keep = f"meta mark & {_hex(MARK_MASK)}", _hex(~MARK_MASK & 0xFFFFFFFF)
    ports = ", ".join(map(str, spec.sorted_ports))
    syn_only = "tcp flags & (fin | syn | rst | ack) == syn"
    return (
        f"{mark} == {_hex(MARK_REJECT)} counter reject with tcp reset",
        f"{mark} == {_hex(MARK_ALLOW)} ct mark set ct mark & {keep} | {_hex(MARK_ALLOW)} accept",
        f"ct mark & {_hex(MARK_MASK)} == {_hex(MARK_ALLOW)} accept",
        f"{syn_only} tcp dport {{ {ports} }} ct state new {mark} == {_hex(0)}"
        f" counter {queue_statement(spec)}",
    )


def _base_chain(hook: str) -> str:
    return f"filter hook {hook} priority filter; policy accept;"


def ruleset(spec: HookSpec) -> str:
    """The table: one base chain per hooked netfilter chain, named after its hook."""
    lines = [f"table {TABLE} {{"]
    for chain in spec.sorted_chains:
        lines += [f"\tchain {chain} {{", f"\t\ttype {_base_chain(chain)}"]
        lines += [f"\t\t{rule}" for rule in chain_rules(spec)]
        lines.append("\t}")
    return "\n".join([*lines, "}", ""])


@dataclass(frozen=True, slots=True)
class Table:
    """Table inet portguard as ``nft list table`` shows it: chain name -> (hook, rules)."""

    chains: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)

    def queue_rules(self, chain: str) -> list[str]:
        rules = self.chains.get(chain, ("", ()))[1]
        return [rule for rule in rules if _QUEUE_STATEMENT.search(rule)]


def parse_table(listing: str) -> Table:
    chains: dict[str, tuple[str, tuple[str, ...]]] = {}
    name, hook, rules = "", "", list[str]()
    for line in (raw.strip() for raw in listing.splitlines()):
        if start := _CHAIN_START.match(line):
            name, hook, rules = start[1], "", []
        elif name and line == "}":
            chains[name] = (hook, tuple(rules))
            name = ""
        elif name and line.startswith("type "):
            hook = found[1] if (found := _HOOK.search(line)) else ""
        elif name and line:
            rules.append(line)
    return Table(chains)


def table_problems(table: Table, spec: HookSpec | None) -> list[str]:
    """What is missing or wrong in the table; empty when it is complete."""
    problems: list[str] = []
    if spec:
        problems += [f"no chain {c}" for c in spec.sorted_chains if c not in table.chains]
        unwanted = sorted(set(table.chains) - set(spec.chains))
        problems += [f"chain {c} is not hooked by the config" for c in unwanted]
    elif not table.chains:
        problems.append("no chains")
    for chain in table.chains:
        queue_rules = table.queue_rules(chain)
        if len(queue_rules) != 1:
            problems.append(f"chain {chain} has {len(queue_rules)} queue rules")
        elif spec and ("bypass" in queue_rules[0]) != spec.fail_open:
            problems.append(f"chain {chain}: queue bypass differs from the fail mode")
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
        )

    def _read(self) -> Table | None:
        """The table, or None when it (or nft) is absent."""
        result = self._run(["nft", "list", "table", *TABLE.split()], None)
        if result.returncode == COMMAND_NOT_FOUND or "No such file or directory" in result.stderr:
            return None
        return parse_table(succeeded(result))
