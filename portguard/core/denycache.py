"""The kernel deny cache, its pure parts: what may be cached, and what a worker remembers.

After a cacheable deny the hook puts ``(source, destination, destination port)`` into a kernel
set (the packet comes back with ``MARK_CACHE``, core/marks.py) that answers that key's later
SYNs with the same verdict without the queue, and counts them per key. Every ``[queue]
deny_cache`` seconds (and at each reload) the worker rotates the cache: the kernel starts an
empty generation, the worker reads the old one's counts and hands them, with the decision of
each key, to the log process, which folds them into flood control (core/events/flood.py).

``cacheable`` decides (the gate sets ``Outcome.cache``); ``CacheBook`` is the worker's memory of
the keys it marked, bounded, so a rotation's counts find their decisions.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from portguard.core.events.record import DecisionRecord
from portguard.core.policy.model import Decision

CacheKey = tuple[int, int, int, int]  # IP version, source, destination, destination port
DEFAULT_CAPACITY: Final = 4 * 65536  # keys a worker remembers at most (four kernel sets)
# A key marked this close before a rotation may have reached the kernel after the switch (the
# rotation runs in a thread): it is kept for the next generation's read too.
MARGIN: Final = 1.0


def cacheable(decision: Decision, period: float) -> bool:
    """Whether the kernel may answer this deny's key for up to ``period`` seconds.

    Every policy deny (logged or not) is; a decision of a rule with a rate limit only when one
    token of its bucket takes at least ``period`` to refill (an element lives at most one
    period, so never longer than one refill). Allows never are; ``period`` 0 turns it off.
    """
    if period <= 0 or decision.action.allows:
        return False
    if decision.limit is None:
        return True
    return 1.0 / decision.limit.limit.per_second >= period


def cache_key(record: DecisionRecord) -> CacheKey:
    return record.version, record.src, record.dst, record.dport


@dataclass(frozen=True, slots=True)
class KernelHits:
    """A key's SYNs the kernel answered in one generation, with the key's decision."""

    record: DecisionRecord
    hits: int
    start: float  # the generation's start (wall clock)
    end: float  # ... and its end (the rotation)


class CacheBook:
    """The decisions of the keys one worker marked cacheable (at most ``capacity``).

    A rotation's counts (``report``) come back with the decision of each key this worker
    marked; keys other workers marked, or that a rule does not log, are not here and are
    skipped. Keys marked before the rotation (less ``MARGIN``) are forgotten after it.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._marked: dict[CacheKey, tuple[DecisionRecord, float]] = {}

    def __len__(self) -> int:
        return len(self._marked)

    def mark(self, record: DecisionRecord, now: float) -> None:
        key = cache_key(record)
        self._marked.pop(key, None)  # the newest last: the oldest goes first when full
        if len(self._marked) >= self.capacity:
            del self._marked[next(iter(self._marked))]
        self._marked[key] = (record, now)

    def report(
        self, hits: Mapping[CacheKey, int], start: float, switched: float
    ) -> list[KernelHits]:
        """The hits of the generation from ``start`` to ``switched`` with their decisions."""
        found = list(self._found(hits, start, switched))
        self._marked = {k: v for k, v in self._marked.items() if v[1] >= switched - MARGIN}
        return found

    def _found(
        self, hits: Mapping[CacheKey, int], start: float, switched: float
    ) -> Iterator[KernelHits]:
        for key, count in hits.items():
            marked = self._marked.get(key)
            if count > 0 and marked is not None:
                yield KernelHits(marked[0], count, start, switched)
