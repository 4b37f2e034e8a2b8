"""Named sets, built once the files are known to be valid: each set's own CIDRs, list files and
resolved host names, then the unions (``sets = [...]``) in dependency order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from portguard.core.policy.addresses import AddressSet, AddressTable, parse_network
from portguard.core.policy.schema import SetSpec

SetSpecs = Sequence[tuple[Path, Mapping[str, SetSpec]]]  # (rule file, its [sets.*]) in order


def build_sets(
    specs: SetSpecs,
    lists: Mapping[Path, AddressSet],
    resolved: Mapping[str, Sequence[str]],
) -> dict[str, AddressSet]:
    """Every named set. ``lists`` holds the parsed list files by path, ``resolved`` the
    addresses of every host name. The union graph has no cycle (checked before)."""
    own: dict[str, AddressSet] = {}
    members: dict[str, list[str]] = {}
    for path, sets in specs:
        for name, body in sets.items():
            own[name] = _own(name, body, path.parent, lists, resolved)
            members[name] = list(body.sets)
    built: dict[str, AddressSet] = {}
    for name in dependency_order(members):
        parts = [own[name], *(built[member] for member in members[name])]
        built[name] = AddressSet.union(own[name].label, parts)
    return built


def dependency_order(members: Mapping[str, Sequence[str]]) -> list[str]:
    """Every set after the sets it includes (a depth-first search with its own stack: a chain
    of 10,000 unions must not exhaust Python's recursion limit). Raises ValueError on a cycle,
    which the checks report before (with its place in the files)."""
    order: list[str] = []
    state: dict[str, bool] = {}  # True while on the path, False when placed
    for root in members:
        stack = [(root, iter(members[root]))] if root not in state else []
        state.setdefault(root, True)
        while stack:
            name, pending = stack[-1]
            member = next(pending, None)
            if member is None:
                stack.pop()
                state[name] = False
                order.append(name)
            elif state.get(member) is True:
                raise ValueError(f"set '{member}' includes itself through its members")
            elif member not in state:
                state[member] = True
                stack.append((member, iter(members[member])))
    return order


def _own(
    name: str,
    body: SetSpec,
    base: Path,
    lists: Mapping[Path, AddressSet],
    resolved: Mapping[str, Sequence[str]],
) -> AddressSet:
    table = AddressTable()
    for network in body.cidrs:
        table.add(network)
    for host in body.hosts:
        for address in resolved[host]:
            table.add(parse_network(address))
    label = f"set '{name}'"
    return AddressSet.union(label, [table.freeze(label), *(lists[base / f] for f in body.files)])
