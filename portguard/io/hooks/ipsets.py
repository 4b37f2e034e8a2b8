"""The iptables backend's deny cache: ipsets of denied (source, port, destination) keys.

Four active sets, one for each IP family and deny verdict (``portguard-r4``, ``-d4``, ``-r6``,
``-d6``: ``hash:ip,port,ip`` with per-element packet counters), each with a spare of the same
type (``portguard-r4-spare``, ...). The hook adds a key to the active set of its verdict when
the daemon repeats a deny with ``MARK_CACHE`` and answers later SYNs of that key from it, each
counted in the element. Elements never time out: a rotation (``IpsetCache``) swaps every
active set with its spare (``ipset swap``: atomic, and the rules, which name the active set,
now see the empty one), reads the spares' members and counters, then flushes the spares.

Every command goes through the backend's ``Runner``; the sets are per network namespace.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Final

from portguard.core.denycache import CacheKey
from portguard.core.marks import MARK_DROP, MARK_REJECT
from portguard.io.hooks.backend import HookSpec
from portguard.io.hooks.runner import COMMAND_NOT_FOUND, Runner, checked, run_command, succeeded

PREFIX: Final = "portguard-"
SPARE: Final = "-spare"
SET_SIZE: Final = 65536  # keys one set holds at most; beyond, a deny is not cached
VERDICT_LETTERS: Final = {MARK_REJECT: "r", MARK_DROP: "d"}
FAMILY_VERSIONS: Final = {"iptables": 4, "ip6tables": 6}
_IPSET_FAMILIES: Final = {4: "inet", 6: "inet6"}


def set_name(verdict: int, version: int, spare: bool = False) -> str:
    """``portguard-r4`` (rejects, IPv4), ``portguard-d6-spare`` (drops, IPv6, the spare)."""
    return f"{PREFIX}{VERDICT_LETTERS[verdict]}{version}{SPARE if spare else ''}"


def active_sets(version: int | None = None) -> tuple[str, ...]:
    """The active sets (the ones the rules name), of one IP version or both."""
    versions = (4, 6) if version is None else (version,)
    return tuple(set_name(v, ver) for ver in versions for v in VERDICT_LETTERS)


def all_sets() -> tuple[str, ...]:
    """Every set the cache uses: the active ones and their spares."""
    return tuple(name + suffix for name in active_sets() for suffix in ("", SPARE))


def create_script() -> str:
    """``ipset -exist restore`` input creating every set (kept when it exists already)."""
    lines = []
    for name in all_sets():
        family = _IPSET_FAMILIES[int(name[len(PREFIX) + 1])]
        lines.append(f"create {name} hash:ip,port,ip family {family} counters maxelem {SET_SIZE}")
    return "\n".join([*lines, ""])


def destroy_script(present: set[str]) -> str:
    """``ipset restore`` input destroying those of the cache's sets that exist."""
    return "".join(f"destroy {name}\n" for name in all_sets() if name in present)


def swap_script() -> str:
    return "".join(f"swap {name} {name}{SPARE}\n" for name in active_sets())


def flush_script() -> str:
    return "".join(f"flush {name}{SPARE}\n" for name in active_sets())


def parse_names(listing: str) -> set[str]:
    """``ipset list -n``: one set name a line."""
    return {line.strip() for line in listing.splitlines() if line.strip()}


def parse_members(listing: str) -> dict[CacheKey, int]:
    """The keys and the SYNs the kernel answered from ``ipset list -o save`` output (``add NAME
    SRC,tcp:PORT,DST packets N bytes M`` lines: N less the adding packet), summed over the
    sets listed."""
    hits: dict[CacheKey, int] = {}
    for key, packets in _members(listing):
        hits[key] = hits.get(key, 0) + packets
    return hits


def _members(listing: str) -> Iterator[tuple[CacheKey, int]]:
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] != "add" or parts[3] != "packets":
            continue
        src, port, dst = parts[2].split(",")
        source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        dport = int(port.rpartition(":")[2])
        # the kernel's add counts the adding packet, which the daemon decided (and logged)
        yield (source.version, int(source), int(destination), dport), max(0, int(parts[4]) - 1)


def set_problems(present: set[str], spec: HookSpec | None) -> list[str]:
    """The deny cache's sets the spec needs and the kernel lacks (or has without need)."""
    if spec is None:
        return []
    if not spec.deny_cache:
        return [f"ipset: set {name} without the deny cache" for name in sorted(present)]
    return [f"ipset: no set {name}" for name in all_sets() if name not in present]


class IpsetCache:
    """The rotation of the iptables deny cache (see the module docstring)."""

    def __init__(self, runner: Runner = run_command) -> None:
        self._run = runner

    def present(self) -> set[str]:
        """The cache's sets that exist (none when ipset is not installed)."""
        result = self._run(["ipset", "list", "-n"], None)
        if result.returncode == COMMAND_NOT_FOUND:
            return set()
        return parse_names(succeeded(result)) & set(all_sets())

    def create(self) -> None:
        checked(self._run, ["ipset", "-exist", "restore"], create_script())

    def destroy(self) -> None:
        script = destroy_script(self.present())
        if script:
            checked(self._run, ["ipset", "restore"], script)

    def rotate(self) -> None:
        """Swap every active set with its (empty) spare: the kernel starts a new generation."""
        checked(self._run, ["ipset", "restore"], swap_script())

    def read_frozen(self) -> dict[CacheKey, int]:
        """The keys of the generation the last rotation froze, with their hits."""
        listings = [checked(self._run, ["ipset", "list", "-o", "save", f"{name}{SPARE}"])
                    for name in active_sets()]  # fmt: skip
        return parse_members("\n".join(listings))

    def flush_frozen(self) -> None:
        checked(self._run, ["ipset", "restore"], flush_script())
