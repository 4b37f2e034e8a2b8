"""Destination-port matchers: single ports and "from-to" ranges."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from portguard.core.tomlsource import toml_type, toml_value

PortRange = tuple[int, int]  # first and last port, inclusive

MAX_PORT = 65535
_EXPAND_LIMIT = 1024  # ranges up to this size become set members; wider ones stay ranges
_RANGE = re.compile(r"^\s*([0-9]+)\s*-\s*([0-9]+)\s*$")


def parse_port_entry(value: object) -> PortRange:
    """A ``dport`` entry: an integer port or a ``"from-to"`` string."""
    if isinstance(value, int) and not isinstance(value, bool):
        _check_port(value)
        return (value, value)
    if isinstance(value, str):
        return _parse_range(value)
    raise ValueError(f'{toml_value(value)} is {toml_type(value)}, not a port or a "from-to" range')


def _parse_range(text: str) -> PortRange:
    match = _RANGE.match(text)
    if match is None:
        if text.strip().isdigit():
            raise ValueError(f'"{text}" is a string: write a single port as an integer')
        raise ValueError(f'"{text}" is not a port range "from-to"')
    first, last = int(match[1]), int(match[2])
    _check_port(first)
    _check_port(last)
    if first > last:
        raise ValueError(f'"{text}": the range starts above its end ({first} > {last})')
    return (first, last)


def _check_port(port: int) -> None:
    if not 1 <= port <= MAX_PORT:
        raise ValueError(f"port {port} is out of range 1-{MAX_PORT}")


def format_ports(ranges: Sequence[PortRange]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


@dataclass(frozen=True, slots=True)
class PortSet:
    """Ports a rule matches: a frozenset for single ports and short ranges, wide ranges apart."""

    label: str  # "25", "465, 587", "1024-65535"
    single: bool
    members: frozenset[int]
    ranges: tuple[PortRange, ...] = ()

    @classmethod
    def from_ranges(cls, ranges: Sequence[PortRange]) -> PortSet:
        members: set[int] = set()
        wide: list[PortRange] = []
        for first, last in ranges:
            if last - first < _EXPAND_LIMIT:
                members.update(range(first, last + 1))
            else:
                wide.append((first, last))
        single = len(members) == 1 and not wide
        return cls(format_ports(ranges), single, frozenset(members), tuple(wide))

    def contains(self, port: int) -> bool:
        if port in self.members:
            return True
        return any(first <= port <= last for first, last in self.ranges)
