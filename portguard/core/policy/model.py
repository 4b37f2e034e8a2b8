"""What the policy works on and what it returns: connections, actions, limits, decisions."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

LimitPer = Literal["src", "prefix", "rule"]
DEFAULT_MAX_BUCKETS = 65_536  # buckets a limited rule keeps at most (docs/rules.md: memory)


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
class Limit:
    """A rule's rate limit: a token bucket of ``burst`` tokens refilled at ``rate`` a second.

    Buckets are kept per source (``per = "src"``: an IPv4 address, an IPv6 source's
    ``prefix6`` bits, its /64 by default), per source prefix (``"prefix"``: ``prefix4`` bits
    of an IPv4 source, ``prefix6`` bits of an IPv6 one) or one for the whole rule (``"rule"``).
    A connection takes one token; without one it gets ``exceed``. A rule keeps at most
    ``max_buckets`` buckets; it is not part of a limit's identity, so a reload that changes
    only it keeps the rule's buckets.
    """

    rate: str  # as written: "30/minute"
    per_second: float
    burst: int
    per: LimitPer
    prefix4: int  # bits of an IPv4 source that name its bucket (32 per src, 0 per rule)
    prefix6: int  # the same for IPv6 (64 per src by default, 0 per rule)
    exceed: Action
    max_buckets: int = field(default=DEFAULT_MAX_BUCKETS, compare=False)

    @property
    def per_text(self) -> str:
        if self.per == "prefix":
            return f"src prefix (/{self.prefix4}, /{self.prefix6})"
        return self.per

    def describe(self) -> str:
        """``5/minute per src, burst 5, exceed reject``."""
        return f"{self.rate} per {self.per_text}, burst {self.burst}, exceed {self.exceed}"


@dataclass(frozen=True, slots=True)
class LimitResult:
    """One connection's turn at a rule's limit: the bucket it used and what was left in it."""

    allowed: bool  # a token was taken
    key: str  # the bucket: the source address, "203.0.113.0/24" per prefix, or "rule"
    tokens: float  # tokens left in the bucket after this connection
    limit: Limit
    table_full: bool = False  # refused because the rule's table is full of unrefilled buckets

    def fields(self) -> dict[str, object]:
        """For the decision event (``portguard.limit``)."""
        return {
            "rate": self.limit.rate,
            "burst": self.limit.burst,
            "per": self.limit.per,
            "key": self.key,
            "tokens": round(self.tokens, 3),
            "exceeded": not self.allowed,
            "table_full": self.table_full,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's answer for one connection."""

    action: Action
    rule_id: str  # "default" when no rule matched
    ruleset: str  # file name of the rule (or "default")
    description: str
    reason: str
    log: bool = True  # False: the rule says `log = false`, the decision is not logged
    limit: LimitResult | None = None  # set when the deciding rule has a limit
