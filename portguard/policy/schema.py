"""The shape of a rule file (``rules.d/*.toml``), validated strictly with pydantic.

Only the keys of the contract in DESIGN.md; anything else is an ``unknown key``. Values are
parsed here (addresses, port ranges); references between files (set names, unique ids) are
checked by the compiler.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PlainValidator

from portguard.policy.addresses import Network, parse_network
from portguard.policy.ports import PortRange, parse_port_entry
from portguard.tomlsource import Spec, toml_type, toml_value

RULE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
SET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

ActionName = Literal["allow", "drop", "reject", "log"]
DirectionName = Literal["outbound", "inbound", "any"]


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


class RuleSpec(Spec):
    id: Annotated[str, AfterValidator(_rule_id)]
    description: str = ""
    src: AddressList | None = None
    dst: AddressList | None = None
    dport: PortList | None = None
    direction: DirectionName = "any"
    action: ActionName
    enabled: bool = True


class DefaultSpec(Spec):
    action: ActionName = "allow"


class RuleFileSpec(Spec):
    sets: dict[str, SetSpec] = Field(default={})
    rule: list[RuleSpec] = Field(default=[])
    default: DefaultSpec | None = None
