"""Kernel hook backends: what they share, and which one to use.

A hook sends the first packet of each new TCP connection to a hooked port into the NFQUEUE and
keeps every later packet of an allowed connection in the kernel (see docs/hooks.md). The daemon
answers a queued packet with a packet mark and NF_REPEAT (allow, log, reject) or NF_DROP. A mark
holds a verdict (``VERDICT_MASK``) and the connection's direction (``DIRECTION_MASK``):

- verdict ``MARK_ALLOW``: the chain saves the mark, direction included, to the conntrack entry
  (connmark) and lets the packet go; later packets of the connection match the connmark and are
  never queued.
- verdict ``MARK_REJECT``: the chain answers with a TCP reset. In a connmark (written there by
  ``portguard.io.conntrack`` to end a connection) every later packet of the connection, from either
  side, is answered with a TCP reset.
- verdict ``MARK_DROP`` (connmark only): every later packet of the connection is dropped.

The marks use the bits of ``MARK_MASK`` only; an operator's own packet and conntrack marks must
leave those bits alone.

Every command runs through a ``Runner``, in the current network namespace.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from portguard.core.policy.model import Direction

MARK_MASK: Final = 0x0F000000  # every bit portguard owns, in packet marks and connmarks
VERDICT_MASK: Final = 0x03000000  # the verdict: 0 (none yet), allow, reject or drop
DIRECTION_MASK: Final = 0x0C000000  # the connection's direction
MARK_ALLOW: Final = 0x01000000
MARK_REJECT: Final = 0x02000000
MARK_DROP: Final = 0x03000000
VERDICT_BITS: Final = (MARK_ALLOW, MARK_REJECT, MARK_DROP)
DIRECTION_BITS: Final = {
    Direction.INTERNAL: 0x00000000,
    Direction.OUTBOUND: 0x04000000,
    Direction.INBOUND: 0x08000000,
    Direction.EXTERNAL: 0x0C000000,
}
_DIRECTIONS: Final = {bits: direction for direction, bits in DIRECTION_BITS.items()}

# what the hook drops in the kernel, before the queue, each counted (HookStatus.counters)
COUNTER_INVALID: Final = "invalid"  # conntrack INVALID packets with SYN set to hooked ports
COUNTER_PER_SOURCE: Final = "per_source"  # new hooked SYNs over one source's rate
COUNTERS: Final = (COUNTER_PER_SOURCE, COUNTER_INVALID)
MIN_SOURCE_MEMORY: Final = 60  # seconds an idle source is remembered at least
MAX_SOURCE_RATE: Final = 100_000  # SYNs a second (iptables' hashlimit is exact up to here)

CHAINS: Final = ("forward", "output")
BACKENDS: Final = ("nftables", "iptables", "auto")
COMMAND_NOT_FOUND: Final = 127
COMMAND_TIMEOUT: Final = 30.0


def mark_bits(verdict_bits: int, direction: Direction | None = None) -> int:
    """portguard's bits of a mark: a verdict and a direction (None counts as internal)."""
    if verdict_bits not in VERDICT_BITS:
        raise ValueError(f"{verdict_bits:#x} is not one of portguard's verdicts")
    return verdict_bits | DIRECTION_BITS[direction or Direction.INTERNAL]


def with_mark_bits(mark: int, bits: int) -> int:
    """``mark`` with portguard's bits replaced by ``bits``; every other bit is kept."""
    return (mark & ~MARK_MASK & 0xFFFFFFFF) | (bits & MARK_MASK)


def direction_of_mark(mark: int) -> Direction | None:
    """The direction a mark records; None when it holds no verdict (not portguard's mark)."""
    if not mark & VERDICT_MASK:
        return None
    return _DIRECTIONS[mark & DIRECTION_MASK]


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


@dataclass(frozen=True, slots=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str], str | None], CommandResult]


def run_command(argv: Sequence[str], stdin: str | None = None) -> CommandResult:
    """Run one command with captured output; a missing program gives exit code 127."""
    try:
        proc = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
    except FileNotFoundError as error:
        return CommandResult(tuple(argv), COMMAND_NOT_FOUND, "", str(error))
    except subprocess.TimeoutExpired as error:
        raise HookError(f"{' '.join(argv)}: no answer in {COMMAND_TIMEOUT:g} s") from error
    return CommandResult(tuple(argv), proc.returncode, proc.stdout, proc.stderr)


def succeeded(result: CommandResult) -> str:
    """The command's stdout, or HookError naming the command and what it printed."""
    if result.returncode != 0:
        stderr = result.stderr.strip() or result.stdout.strip() or "no output"
        raise HookError(f"{' '.join(result.argv)} failed (exit {result.returncode}): {stderr}")
    return result.stdout


def checked(runner: Runner, argv: Sequence[str], stdin: str | None = None) -> str:
    """Run a command through ``runner``; its stdout, or HookError naming command and stderr."""
    return succeeded(runner(argv, stdin))


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


def select_backend(name: str, runner: Runner = run_command) -> HookBackend:
    """The backend called ``name``; "auto" is nftables where the kernel has an nft queue."""
    from portguard.io.iptables import IptablesBackend
    from portguard.io.nftables import NftablesBackend, queue_supported

    if name == "nftables":
        return NftablesBackend(runner)
    if name == "iptables":
        return IptablesBackend(runner)
    if name == "auto":
        return NftablesBackend(runner) if queue_supported(runner) else IptablesBackend(runner)
    raise ValueError(f"hook backend must be one of {BACKENDS}, not {name!r}")


def cleanup_leftovers(runner: Runner = run_command) -> tuple[str, ...]:
    """Remove what any backend left (a crashed run); the names of backends that had something.

    A backend whose tool cannot even list its rules (absent, or a kernel without that subsystem)
    cannot have left anything and is skipped; a failing removal raises HookError.
    """
    from portguard.io.iptables import IptablesBackend
    from portguard.io.nftables import NftablesBackend

    cleaned: list[str] = []
    for backend in (NftablesBackend(runner), IptablesBackend(runner)):
        try:
            installed = backend.status().installed
        except HookError:
            continue
        if installed:
            backend.remove()
            cleaned.append(backend.name)
    return tuple(cleaned)
