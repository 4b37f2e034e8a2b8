"""Interface index -> "is it a WAN interface?" with a small cache (edge: asks the kernel)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable

NameOf = Callable[[int], str]


class WanInterfaces:
    """Answers whether an ifindex from the kernel queue names a WAN interface.

    Names are resolved lazily and cached; `forget()` drops the cache so that interfaces that
    come and go (ppp, vlan) are looked up again.
    """

    def __init__(self, names: Iterable[str], name_of: NameOf = socket.if_indextoname) -> None:
        self.names = frozenset(names)
        self._name_of = name_of
        self._cache: dict[int, bool] = {0: False}

    def is_wan(self, ifindex: int) -> bool:
        known = self._cache.get(ifindex)
        if known is None:
            known = self._lookup(ifindex)
            self._cache[ifindex] = known
        return known

    def forget(self) -> None:
        self._cache = {0: False}

    def _lookup(self, ifindex: int) -> bool:
        try:
            return self._name_of(ifindex) in self.names
        except OSError:
            return False
