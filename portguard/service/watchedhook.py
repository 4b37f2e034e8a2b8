"""The hook as the hook watch last saw it, and the kernel's drops before the queue.

``WatchedHook`` wraps the hook backend the daemon uses: every full check the hook watch makes
(a ``status`` with the spec) is remembered (``HookState``, for `portguard status`) and its drop
counters are added up across reinstalls (``DropTotals``) and logged now and then
(``DropReport``) as ``prequeue-dropped`` events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from portguard.io.hooks.backend import (
    COUNTER_INVALID,
    COUNTER_PER_SOURCE,
    PREQUEUE_DROPS,
    HookBackend,
    HookSpec,
    HookStatus,
)
from portguard.io.hooks.watch import repair_reason


@dataclass(frozen=True, slots=True)
class HookState:
    backend: str
    installed: bool
    complete: bool  # exactly as installed: every rule and jump, in order, one copy
    checked_at: float


class DropTotals:
    """The hook's drop counters (HookStatus.counters) added up across reinstalls: a repair or
    a restore starts the kernel's counters at 0 again, and a total must never go down."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self._seen: dict[str, int] = {}

    def update(self, counters: Mapping[str, int]) -> dict[str, int]:
        for name, value in counters.items():
            seen = self._seen.get(name, 0)
            grown = value - seen if value >= seen else value  # below: counting began anew
            self.totals[name] = self.totals.get(name, 0) + grown
            self._seen[name] = value
        return dict(self.totals)


DROP_REPORT_INTERVAL: Final = 60.0  # seconds between `prequeue-dropped` events, at most


class DropReport:
    """When to log the kernel's drops: the first change at once, then at most one event every
    DROP_REPORT_INTERVAL seconds, and only when a count changed (pure: `now` comes in)."""

    def __init__(self, interval: float = DROP_REPORT_INTERVAL) -> None:
        self.interval = interval
        self.reported: dict[str, int] = {}
        self._next = float("-inf")

    def due(self, totals: Mapping[str, int], now: float) -> dict[str, int] | None:
        """What grew since the last report (name -> packets), when a report is due now."""
        grown = {k: v - self.reported.get(k, 0) for k, v in totals.items()}
        if now < self._next or not any(grown.values()):
            return None
        self.reported, self._next = dict(totals), now + self.interval
        return grown


MakeEvent = Callable[..., Any]  # (action, message, **fields) -> an event


class WatchedHook:
    """A hook backend that remembers its last full check (a `status` with the spec).

    The daemon's HookWatch checks every few seconds, so `status` reports the hook without
    running nft or iptables itself. Every other call is passed on unchanged. Each full check
    also reads the hook's drop counters (`dropped`: totals since start) and, once
    `report_drops_to` was called, logs them as `prequeue-dropped` events (DropReport).
    """

    def __init__(self, backend: HookBackend, clock: Callable[[], float] = time.time) -> None:
        self.inner = backend
        self.clock = clock
        self.last: HookState | None = None
        self._totals = DropTotals()
        self.dropped: dict[str, int] | None = None  # None: not read yet
        self._report = DropReport()
        self._submit: Callable[[Any], object] | None = None
        self._make_event: MakeEvent | None = None

    def report_drops_to(self, submit: Callable[[Any], object], make_event: MakeEvent) -> None:
        """Log the kernel's drops through `submit(make_event(action, message, **fields))`."""
        self._submit, self._make_event = submit, make_event

    @property
    def name(self) -> str:
        return self.inner.name

    def render(self, spec: HookSpec) -> str:
        return self.inner.render(spec)

    def install(self, spec: HookSpec) -> None:
        self.inner.install(spec)

    def remove(self) -> None:
        self.inner.remove()

    def status(self, spec: HookSpec | None = None) -> HookStatus:
        status = self.inner.status(spec)
        if spec is not None:
            intact = repair_reason(status) is None
            self.last = HookState(status.backend, status.installed, intact, self.clock())
            if status.counters:
                self._count(status.counters)
        return status

    def _count(self, counters: Mapping[str, int]) -> None:
        totals = self.dropped = self._totals.update(counters)
        # the deny cache's answers are logged as kernel hits in the flood summaries instead
        dropped: dict[str, int] = {n: totals[n] for n in PREQUEUE_DROPS if n in totals}
        grown = self._report.due(dropped, self.clock())
        if grown is None or self._submit is None or self._make_event is None:
            return
        per_source, invalid = grown.get(COUNTER_PER_SOURCE, 0), grown.get(COUNTER_INVALID, 0)
        message = (f"the kernel dropped {per_source} SYNs over the per-source limit and "
                   f"{invalid} INVALID packets with SYN before the queue")  # fmt: skip
        self._submit(self._make_event("prequeue-dropped", message, dropped=grown,
                                      dropped_total=dropped))  # fmt: skip
