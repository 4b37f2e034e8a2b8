"""What a `[detect.NAME]` table compiles to (a read-only part of the RuleSet), durations, and the
source key of an address.

A source is counted by its key: an IPv4 address, or the /64 of an IPv6 address (privacy
addresses rotate within a /64, RFC 8981, and a subscriber gets at least a /64).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from portguard.core.policy.ports import PortSet
from portguard.core.tomlsource import toml_type, toml_value

DetectAction = Literal["alert", "quarantine"]
DEFAULT_QUARANTINE = 3600  # seconds, when a quarantining detector names no duration
SourceKey = tuple[int, int]  # (ip version, address: the IPv4 address or the IPv6 /64's top bits)
MAX_DURATION = 366 * 86_400  # seconds: a year at most (a typo guard)
_DURATION = re.compile(r"^\s*([0-9]+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(value: object) -> int:
    """``"30s"``, ``"10m"``, ``"1h"`` or ``"2d"`` as seconds (1 s to a year)."""
    if not isinstance(value, str):
        wanted = 'a duration like "30s", "10m", "1h" or "2d"'
        raise ValueError(f"{toml_value(value)} is {toml_type(value)}, not {wanted}")
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f'"{value}" is not a duration like "30s", "10m", "1h" or "2d"')
    seconds = int(match[1]) * _UNITS[match[2]]
    if not 1 <= seconds <= MAX_DURATION:
        raise ValueError(f'"{value}": a duration is from 1 second to 366 days')
    return seconds


def source_key(version: int, address: int) -> SourceKey:
    """The key a source is counted and quarantined by: IPv4 address, IPv6 /64."""
    return (4, address) if version == 4 else (6, address >> 64)


def key_text(key: SourceKey) -> str:
    """``100.64.10.10`` or ``2001:db8:64:10::/64``."""
    version, value = key
    if version == 4:
        return str(ipaddress.IPv4Address(value))
    return f"{ipaddress.IPv6Address(value << 64)}/64"


def parse_source(text: str) -> SourceKey:
    """An address (or an IPv6 /64 written as a CIDR) as its source key; ValueError if not."""
    network = ipaddress.ip_network(text.strip(), strict=False)
    if network.version == 6 and network.prefixlen < 64:
        raise ValueError(f"{text}: an IPv6 source is quarantined by its /64, not a shorter prefix")
    if network.version == 4 and network.prefixlen != 32:
        raise ValueError(f"{text}: give one IPv4 address, not a network")
    return source_key(network.version, int(network.network_address))


@dataclass(frozen=True, slots=True)
class Detector:
    """A compiled `[detect.NAME]` table (read-only; part of the RuleSet)."""

    name: str
    dport: PortSet  # denied attempts to these ports count
    distinct: int  # distinct destination addresses that make an alert ...
    window: int  # ... within this many seconds, per source key
    action: DetectAction
    quarantine: int  # seconds a quarantine lasts (action "quarantine")
    quarantine_ports: PortSet  # the ports a quarantined source may not connect to
    ruleset: str = ""  # the rule file's name

    @property
    def refused_ports(self) -> frozenset[int]:
        """Every port of `quarantine_ports` (its wide ranges expanded)."""
        ports = self.quarantine_ports
        wide = (port for first, last in ports.ranges for port in range(first, last + 1))
        return ports.members | frozenset(wide)

    @property
    def rule_id(self) -> str:
        """The rule id of the decisions a quarantine by this detector makes."""
        return f"quarantine:{self.name}"

    def describe(self) -> str:
        text = f"{self.distinct} distinct destinations on port {self.dport.label} within "
        text += f"{self.window} s"
        if self.action == "quarantine":
            text += f", then quarantine for {self.quarantine} s on {self.quarantine_ports.label}"
        return text
