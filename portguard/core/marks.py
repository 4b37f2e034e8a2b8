"""portguard's packet marks and connmarks: a verdict, the connection's direction, the deny cache.

The daemon answers a queued packet with a packet mark and NF_REPEAT (allow, log, reject, and a
drop to cache) or NF_DROP. A mark holds a verdict (``VERDICT_MASK``), the connection's direction
(``DIRECTION_MASK``) and, on a deny, whether the kernel caches it (``MARK_CACHE``):

- verdict ``MARK_ALLOW``: the hook saves the mark, direction included, to the conntrack entry
  (connmark) and lets the packet go; later packets of the connection match the connmark and are
  never queued.
- verdict ``MARK_REJECT``: the hook answers with a TCP reset. In a connmark (written there by
  ``portguard.io.conntrack`` to end a connection) every later packet of the connection, from either
  side, is answered with a TCP reset.
- verdict ``MARK_DROP``: in a packet mark (with ``MARK_CACHE`` only) the hook drops the packet;
  in a connmark every later packet of the connection is dropped.
- ``MARK_CACHE`` with ``MARK_REJECT`` or ``MARK_DROP`` (packet marks only): the hook first adds
  the packet's (source, destination, destination port) to its deny cache, a kernel set that
  answers that key's later SYNs with the same verdict without the queue (docs/hooks.md).

The marks use the bits of ``MARK_MASK`` only; an operator's own packet and conntrack marks must
leave those bits alone. Used by io/nfqueue.py, both hook backends, io/conntrack.py and
io/ctevents.py.
"""

from __future__ import annotations

from typing import Final

from portguard.core.policy.model import Direction

MARK_MASK: Final = 0x1F000000  # every bit portguard owns, in packet marks and connmarks
VERDICT_MASK: Final = 0x03000000  # the verdict: 0 (none yet), allow, reject or drop
DIRECTION_MASK: Final = 0x0C000000  # the connection's direction
MARK_ALLOW: Final = 0x01000000
MARK_REJECT: Final = 0x02000000
MARK_DROP: Final = 0x03000000
MARK_CACHE: Final = 0x10000000  # a deny the hook puts into its deny cache
VERDICT_BITS: Final = (MARK_ALLOW, MARK_REJECT, MARK_DROP)
DIRECTION_BITS: Final = {
    Direction.INTERNAL: 0x00000000,
    Direction.OUTBOUND: 0x04000000,
    Direction.INBOUND: 0x08000000,
    Direction.EXTERNAL: 0x0C000000,
}
_DIRECTIONS: Final = {bits: direction for direction, bits in DIRECTION_BITS.items()}


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
