"""The shape of a rule file (``rules.d/*.toml``), validated strictly with pydantic.

Only the keys of docs/rules.md; anything else is an ``unknown key``. Values are
parsed here (addresses, port ranges); references between files (set names, unique ids) are
checked by the compiler.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator

from portguard.core.policy.addresses import Network, parse_network
from portguard.core.policy.detectors import parse_duration
from portguard.core.policy.hosts import host_name_problem
from portguard.core.policy.ports import PortRange, parse_port_entry
from portguard.core.tomlsource import Spec, toml_type, toml_value

RULE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
SET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

ActionName = Literal["allow", "drop", "reject", "log"]
DirectionName = Literal["outbound", "inbound", "internal", "external", "any"]
ExceedName = Literal["reject", "drop", "log"]
PerName = Literal["src", "prefix", "rule"]

MAX_BURST = 1_000_000
MAX_BUCKETS = 16_777_216  # a rule's max_buckets at most (about 4 GiB of buckets: a typo guard)
_RATE = re.compile(r"^\s*([0-9]+)\s*/\s*([a-z]+)\s*$")
_UNITS = {"second": 1, "minute": 60, "hour": 3600}


@dataclass(frozen=True, slots=True)
class SetRef:
    """A reference to a named set in a rule's ``src`` or ``dst``."""

    name: str


AddressRef = Network | SetRef


def looks_like_address(text: str) -> bool:
    """Addresses and CIDRs start with a digit or hold ':' or '/'; set names never do."""
    return bool(text) and (text[0].isdigit() or ":" in text or "/" in text)


def parse_address_ref(value: object) -> AddressRef:
    if not isinstance(value, str):
        raise ValueError(_not_a(value, "a set name, an address or a CIDR"))
    if looks_like_address(value):
        return parse_network(value)
    if SET_NAME.match(value):
        return SetRef(value)
    raise ValueError(f'"{value}" is not a set name, an address or a CIDR')


def _network_entry(value: object) -> Network:
    if not isinstance(value, str):
        raise ValueError(_not_a(value, "an address or a CIDR (in quotes)"))
    return parse_network(value)


class Rate(NamedTuple):
    """``"30/minute"``: 30 connections (tokens) a minute."""

    number: int
    seconds: int  # the unit
    text: str

    @property
    def per_second(self) -> float:
        return self.number / self.seconds


def parse_rate(value: object) -> Rate:
    if not isinstance(value, str):
        raise ValueError(_not_a(value, 'a rate "N/second", "N/minute" or "N/hour"'))
    match = _RATE.match(value)
    if match is None or match[2] not in _UNITS:
        raise ValueError(f'"{value}" is not a rate "N/second", "N/minute" or "N/hour"')
    count = int(match[1])
    if not 1 <= count <= MAX_BURST:
        raise ValueError(f'"{value}": the count must be from 1 to {MAX_BURST}')
    return Rate(count, _UNITS[match[2]], f"{count}/{match[2]}")


def _host_name(value: str) -> str:
    problem = host_name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _set_name(value: str) -> str:
    if not SET_NAME.match(value):
        raise ValueError(f'"{value}" is not a set name')
    return value


def _within(low: int, high: int) -> AfterValidator:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range {low}-{high}")
        return value

    return AfterValidator(check)


def _not_a(value: object, wanted: str) -> str:
    return f"{toml_value(value)} is {toml_type(value)}, not {wanted}"


def _as_list(value: object) -> object:
    """A single value stands for a list of one."""
    return value if isinstance(value, list) else [value]


def _not_empty(values: list[Any]) -> list[Any]:
    if not values:
        raise ValueError("must not be an empty list (leave the key out to match any)")
    return values


def _rule_id(value: str) -> str:
    if value == "default":
        raise ValueError('"default" is reserved for the default action')
    if not RULE_ID.match(value):
        raise ValueError(f'"{value}" may hold only letters, digits, "_", "." and "-"')
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


AddressList = Annotated[
    list[Annotated[AddressRef, PlainValidator(parse_address_ref)]],
    BeforeValidator(_as_list),
    AfterValidator(_not_empty),
]
PortList = Annotated[
    list[Annotated[PortRange, PlainValidator(parse_port_entry)]],
    BeforeValidator(_as_list),
    AfterValidator(_not_empty),
]


class SetSpec(Spec):
    cidrs: list[Annotated[Network, PlainValidator(_network_entry)]] = Field(default=[])
    files: list[Annotated[str, AfterValidator(_not_blank)]] = Field(default=[])
    sets: list[Annotated[str, AfterValidator(_set_name)]] = Field(default=[])
    hosts: list[Annotated[str, AfterValidator(_host_name)]] = Field(default=[])


class LimitSpec(Spec):
    rate: Annotated[Rate, PlainValidator(parse_rate)]
    burst: Annotated[int, _within(1, MAX_BURST)] | None = None  # default: the rate's count
    per: PerName = "src"
    prefix4: Annotated[int, _within(0, 32)] | None = None  # default 24, with per = "prefix"
    prefix6: Annotated[int, _within(0, 128)] | None = None  # default 64, per = "src"/"prefix"
    exceed: ExceedName = "reject"
    max_buckets: Annotated[int, _within(1, MAX_BUCKETS)] | None = None  # default 65,536


class RuleSpec(Spec):
    id: Annotated[str, AfterValidator(_rule_id)]
    description: str = ""
    src: AddressList | None = None
    dst: AddressList | None = None
    dport: PortList | None = None
    direction: DirectionName = "any"
    action: ActionName
    enabled: bool = True
    log: bool = True
    limit: LimitSpec | None = None


class DefaultSpec(Spec):
    action: ActionName = "allow"


MAX_DISTINCT = 65_536  # a detector's `distinct` at most
Duration = Annotated[int, PlainValidator(parse_duration)]


class DetectSpec(Spec):
    """A `[detect.NAME]` table: a fan-out detector (docs/rules.md, "Detection")."""

    dport: PortList
    distinct: Annotated[int, _within(2, MAX_DISTINCT)]
    window: Duration
    action: Literal["alert", "quarantine"] = "alert"
    quarantine: Duration | None = None  # default 1h, with action "quarantine"
    quarantine_ports: PortList | None = None  # default: dport


class RuleFileSpec(Spec):
    sets: dict[str, SetSpec] = Field(default={})
    rule: list[RuleSpec] = Field(default=[])
    default: DefaultSpec | None = None
    detect: dict[str, DetectSpec] = Field(default={})
