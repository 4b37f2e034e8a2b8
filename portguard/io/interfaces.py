"""Interface index -> "is it a WAN interface?" with a small cache (edge: asks the kernel), and
which configured WAN interfaces do not exist (a typo, or a ppp0 that is not up yet)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

NameOf = Callable[[int], str]
IndexOf = Callable[[str], int]
Change = tuple[str, str, list[str]]  # lifecycle action, message, interface names


def missing_interfaces(names: Iterable[str], index_of: IndexOf | None = None) -> list[str]:
    """The names that no interface of this network namespace has (in the given order)."""
    return _absent(names, index_of or socket.if_nametoindex)


def _absent(names: Iterable[str], index_of: IndexOf) -> list[str]:
    missing = []
    for name in names:
        try:
            index_of(name)
        except (OSError, ValueError):  # ENODEV; a name the kernel could never hold
            missing.append(name)
    return missing


def wan_changes(before: Iterable[str], now: Iterable[str]) -> list[Change]:
    """Lifecycle events for a change in the missing WAN interfaces: ``wan-missing`` (an error:
    traffic through them is not seen as outbound or inbound) and ``wan-found``."""
    gone = [name for name in now if name not in before]
    back = [name for name in before if name not in now]
    changes: list[Change] = []
    if gone:
        listed = ", ".join(gone)
        changes.append(("wan-missing", f"WAN interface {listed} does not exist: connections "
                        "through it count as internal, not outbound or inbound", gone))  # fmt: skip
    if back:
        changes.append(("wan-found", f"WAN interface {', '.join(back)} exists now", back))
    return changes


class WanInterfaces:
    """Answers whether an ifindex from the kernel queue names a WAN interface.

    Names are resolved lazily and cached; `forget()` drops the cache so that interfaces that
    come and go (ppp, vlan) are looked up again.
    """

    def __init__(
        self,
        names: Iterable[str],
        name_of: NameOf = socket.if_indextoname,
        index_of: IndexOf = socket.if_nametoindex,
    ) -> None:
        self.ordered = tuple(names)
        self.names = frozenset(self.ordered)
        self._name_of = name_of
        self._index_of = index_of
        self.known = _Known(self._lookup)  # `is_wan` as a dict: one subscript per lookup
        self.missing: list[str] = []  # as of the last recheck()

    def recheck(self) -> list[Change]:
        """Look up the WAN names again (every housekeeping round: one ioctl per name); the
        changes since the last look as lifecycle events. A change also drops the cache."""
        now = _absent(self.ordered, self._index_of)
        changes = wan_changes(self.missing, now)
        if changes:
            self.missing = now
            self.forget()
        return changes

    def is_wan(self, ifindex: int) -> bool:
        return self.known[ifindex]

    def forget(self) -> None:
        self.known = _Known(self._lookup)

    def _lookup(self, ifindex: int) -> bool:
        try:
            return self._name_of(ifindex) in self.names
        except OSError:
            return False


class _Known(dict[int, bool]):
    """ifindex -> WAN or not, each looked up the first time it is asked for (0: no interface)."""

    def __init__(self, lookup: Callable[[int], bool]) -> None:
        super().__init__({0: False})
        self._lookup = lookup

    def __missing__(self, ifindex: int) -> bool:
        known = self[ifindex] = self._lookup(ifindex)
        return known
