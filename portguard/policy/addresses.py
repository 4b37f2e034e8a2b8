"""Address sets: CIDRs compiled to merged, sorted integer intervals with a bisect lookup.

A lookup costs O(log n) in the number of intervals, so a set of 100,000 CIDRs answers about as
fast as a set of ten. Parsing of addresses and of list files (one address or CIDR a line) lives
here too, with messages written for the operator.
"""

from __future__ import annotations

import bisect
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from portguard.packet.model import to_address

Interval = tuple[int, int]  # first and last address, inclusive

_FAMILIES = ((4, socket.AF_INET, 32), (6, socket.AF_INET6, 128))


@dataclass(frozen=True, slots=True)
class Network:
    """An address block: IP version, first address as an integer, prefix length."""

    version: int
    first: int
    prefixlen: int

    @property
    def bits(self) -> int:
        return 32 if self.version == 4 else 128

    @property
    def last(self) -> int:
        return self.first + (1 << (self.bits - self.prefixlen)) - 1

    def __str__(self) -> str:
        """A single host as a plain address, anything wider as a CIDR."""
        address = str(to_address(self.version, self.first))
        return address if self.prefixlen == self.bits else f"{address}/{self.prefixlen}"


def parse_network(text: str) -> Network:
    """An address or ``address/prefix``; a CIDR with host bits set is an error (a likely typo).

    Parsed with inet_pton: about ten times faster than ipaddress.ip_network, which matters for
    list files of 100,000 entries.
    """
    address, slash, length = text.partition("/")
    for version, family, bits in _FAMILIES:
        try:
            first = int.from_bytes(socket.inet_pton(family, address), "big")
        except (OSError, ValueError):
            continue
        if not slash:
            return Network(version, first, bits)
        if length.isascii() and length.isdigit() and int(length) <= bits:
            return _block(text, Network(version, first, int(length)))
        raise ValueError(f'"{text}": the prefix length must be a number from 0 to {bits}')
    raise ValueError(f'"{text}" is not a valid IP address or CIDR')


def _block(text: str, network: Network) -> Network:
    host_bits = network.first & ((1 << (network.bits - network.prefixlen)) - 1)
    if host_bits:
        fixed = Network(network.version, network.first - host_bits, network.prefixlen)
        raise ValueError(f'"{text}" has host bits set (the network is {fixed})')
    return network


def parse_address_list(text: str) -> tuple[list[Network], list[tuple[int, str]]]:
    """A list file: one address or CIDR a line, ``#`` comments, blank lines.

    Returns the networks and the errors as (line number, message).
    """
    networks: list[Network] = []
    errors: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        if " " in entry or "\t" in entry:
            errors.append((number, f'"{entry}": write one address or CIDR a line'))
            continue
        try:
            networks.append(parse_network(entry))
        except ValueError as error:
            errors.append((number, str(error)))
    return networks, errors


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sort and merge overlapping or adjacent intervals."""
    merged: list[Interval] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + 1:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


@dataclass(frozen=True, slots=True)
class AddressSet:
    """A read-only set of IPv4 and IPv6 addresses; ``label`` names it in reasons."""

    label: str
    starts4: tuple[int, ...] = ()
    ends4: tuple[int, ...] = ()
    starts6: tuple[int, ...] = ()
    ends6: tuple[int, ...] = ()

    @classmethod
    def from_networks(cls, label: str, networks: Iterable[Network]) -> AddressSet:
        v4: list[Interval] = []
        v6: list[Interval] = []
        for network in networks:
            (v4 if network.version == 4 else v6).append((network.first, network.last))
        return cls.from_intervals(label, v4, v6)

    @classmethod
    def from_intervals(
        cls, label: str, v4: Iterable[Interval], v6: Iterable[Interval]
    ) -> AddressSet:
        merged4, merged6 = merge_intervals(v4), merge_intervals(v6)
        return cls(
            label,
            tuple(s for s, _ in merged4),
            tuple(e for _, e in merged4),
            tuple(s for s, _ in merged6),
            tuple(e for _, e in merged6),
        )

    @classmethod
    def union(cls, label: str, sets: Sequence[AddressSet]) -> AddressSet:
        return cls.from_intervals(
            label,
            (i for s in sets for i in zip(s.starts4, s.ends4, strict=True)),
            (i for s in sets for i in zip(s.starts6, s.ends6, strict=True)),
        )

    def contains(self, version: int, address: int) -> bool:
        if version == 4:
            starts, ends = self.starts4, self.ends4
        else:
            starts, ends = self.starts6, self.ends6
        index = bisect.bisect_right(starts, address) - 1
        return index >= 0 and address <= ends[index]

    @property
    def interval_count(self) -> int:
        return len(self.starts4) + len(self.starts6)
