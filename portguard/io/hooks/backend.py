"""The hook backends' contract: what to hook (``HookSpec``), what a backend finds installed
(``HookStatus``), and the ``HookBackend`` protocol that iptables.py and nftables.py implement.

A hook sends the first packet of each new TCP connection to a hooked port into the NFQUEUE and
keeps every later packet of an allowed connection in the kernel (see docs/hooks.md); the marks
it matches are core/marks.py's. Every command a backend runs goes through a ``Runner``
(runner.py), in the current network namespace, so the rules are unit-tested without root.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from portguard.core.denycache import CacheKey

# what the hook drops in the kernel, before the queue, each counted (HookStatus.counters)
COUNTER_INVALID: Final = "invalid"  # conntrack INVALID packets with SYN set to hooked ports
COUNTER_PER_SOURCE: Final = "per_source"  # new hooked SYNs over one source's rate
COUNTER_DENY_CACHE: Final = "deny_cache"  # new hooked SYNs the deny cache answered
COUNTERS: Final = (COUNTER_PER_SOURCE, COUNTER_INVALID, COUNTER_DENY_CACHE)
PREQUEUE_DROPS: Final = (COUNTER_PER_SOURCE, COUNTER_INVALID)  # drops the policy never saw
MIN_SOURCE_MEMORY: Final = 60  # seconds an idle source is remembered at least
MAX_SOURCE_RATE: Final = 100_000  # SYNs a second (iptables' hashlimit is exact up to here)

CHAINS: Final = ("forward", "output")
BACKENDS: Final = ("nftables", "iptables", "auto")


class HookError(Exception):
    """A hook command failed; the message names the command and what it printed."""


@dataclass(frozen=True, slots=True)
class SourceLimit:
    """New hooked SYNs one source may send before the queue: ``rate`` a second, ``burst`` at
    once; a source is one IPv4 address or one IPv6 prefix of ``prefix6`` bits."""

    rate: int
    burst: int
    prefix6: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.rate <= MAX_SOURCE_RATE or self.burst < 1:
            raise ValueError(f"a source limit needs rate 1-{MAX_SOURCE_RATE} and burst >= 1")
        if not 1 <= self.prefix6 <= 128:
            raise ValueError(f"prefix6 must be 1-128, not {self.prefix6}")

    @property
    def forget_after(self) -> int:
        """Seconds a source must be idle before the kernel forgets it: never less than its
        bucket takes to refill from empty, so forgetting a source never hands it a fresh burst."""
        return max(MIN_SOURCE_MEMORY, -(-self.burst // self.rate))

    @property
    def tag(self) -> str:
        """Five hex digits naming these settings: a kernel table keyed by name (hashlimit)
        must not keep an old rate when the settings change."""
        text = f"{self.rate}/{self.burst}/{self.prefix6}"
        return hashlib.sha256(text.encode()).hexdigest()[:5]


@dataclass(frozen=True, slots=True)
class HookSpec:
    """What to hook: queues ``queue_num .. queue_num + workers - 1``, ports, netfilter chains."""

    queue_num: int
    workers: int
    ports: tuple[int, ...]
    chains: tuple[str, ...]  # "forward" (gateway traffic), "output" (this host's own)
    fail_open: bool  # no daemon bound: the packet passes (queue bypass) instead of being dropped
    per_source: SourceLimit | None = None  # None: no limit before the queue
    deny_cache: bool = False  # the kernel answers cached denies itself (core/denycache.py)

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= 0xFFFF or not 0 <= self.queue_num <= 0x10000 - self.workers:
            raise ValueError(f"queues {self.queue_num}+{self.workers} are outside 0..65535")
        if not self.ports or any(not 1 <= port <= 0xFFFF for port in self.ports):
            raise ValueError(f"ports must be 1..65535 and at least one, not {self.ports}")
        if not self.chains or any(chain not in CHAINS for chain in self.chains):
            raise ValueError(f"chains must be one or both of {CHAINS}, not {self.chains}")

    @property
    def last_queue(self) -> int:
        return self.queue_num + self.workers - 1

    @property
    def sorted_ports(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.ports)))

    @property
    def sorted_chains(self) -> tuple[str, ...]:
        return tuple(chain for chain in CHAINS if chain in self.chains)


@dataclass(frozen=True, slots=True)
class HookStatus:
    """What a backend finds installed. ``rule_sets`` counts copies of the hook (1 when sane)."""

    backend: str
    installed: bool
    complete: bool
    detail: str
    rule_sets: int
    counters: Mapping[str, int] = field(default_factory=dict)  # COUNTERS -> packets dropped


class HookBackend(Protocol):
    @property
    def name(self) -> str: ...

    def render(self, spec: HookSpec) -> str:
        """The rules that ``install(spec)`` applies, as text."""
        ...

    def install(self, spec: HookSpec) -> None:
        """Make the kernel hold exactly the hook for ``spec`` (idempotent)."""
        ...

    def remove(self) -> None:
        """Remove everything this backend installs; nothing installed is fine."""
        ...

    def status(self, spec: HookSpec | None = None) -> HookStatus:
        """What is installed; ``complete`` compares against ``spec`` when given."""
        ...


class DenyCacheSets(Protocol):
    """A backend's deny cache (ipsets.py, nftcache.py): generations of kernel sets of denied
    keys whose elements count their hits (core/denycache.py)."""

    def rotate(self) -> None:
        """Start an empty generation; the one in force until now is frozen."""
        ...

    def read_frozen(self) -> dict[CacheKey, int]:
        """The frozen generation's keys, each with the SYNs the kernel answered."""
        ...

    def flush_frozen(self) -> None:
        """Empty the frozen generation (the next rotation puts it in force)."""
        ...
