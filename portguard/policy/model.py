"""What the policy works on and what it returns: connections, actions, decisions."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    ALLOW = "allow"
    DROP = "drop"
    REJECT = "reject"
    LOG = "log"  # allow, and flag the connection in the log

    @property
    def allows(self) -> bool:
        return self in (Action.ALLOW, Action.LOG)


class Direction(StrEnum):
    """A connection's direction relative to the WAN interfaces (ECS network.direction)."""

    OUTBOUND = "outbound"  # leaves through a WAN interface
    INBOUND = "inbound"  # arrives through a WAN interface
    INTERNAL = "internal"  # touches no WAN interface
    EXTERNAL = "external"  # arrives and leaves through WAN interfaces


@dataclass(frozen=True, slots=True)
class Connection:
    """The facts a rule can match: a new TCP connection's addresses, port and direction."""

    version: int  # 4 or 6
    src: int  # address as an integer
    dst: int
    dport: int
    direction: Direction


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one connection."""

    action: Action
    rule_id: str  # "default" when no rule matched
    ruleset: str  # file name of the rule (or "default")
    description: str
    reason: str
