"""The fan-out detector: denied attempts in, an Alert when one source has tried too many
distinct destinations within a window.

Fed each denied decision (a policy deny, a rate-limit deny, a quarantine refusal) whose
destination port a detector counts. Per source key (IPv4 address, IPv6 /64) it keeps the
distinct destinations of the last `window` seconds (sliding: a destination not tried for
`window` seconds is forgotten), the attempts, the first and last time. When the distinct
count reaches the threshold it raises one Alert and forgets the source's destinations; the
source raises no second alert before `window` seconds have passed (or it was released).

Memory is bounded: at most MAX_SOURCES sources per detector (the least recently seen is
evicted and counted) and fewer than `threshold` destinations per source (reaching it raises
the alert and empties the set). Measured with tracemalloc (CPython 3.11,
tests/unit/test_detect_fanout.py): about 500 bytes a source with one destination, plus about
50 bytes per further destination; the worst case for one detector is
MAX_SOURCES x (500 + 50 x (threshold - 2)) bytes: ~59 MB for `distinct = 10`, ~92 MB for
`distinct = 20`; a spoofed flood (one destination a source) holds ~33 MB. A spoofed flood
of more sources than MAX_SOURCES evicts the real sources quiet the longest: a bot that keeps
trying stays near the recent end and is still caught; one slower than the flood's turn
through MAX_SOURCES sources is evicted (and counted in `evicted`) before it reaches the threshold.

Pure: `now` is passed in.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from portguard.core.policy.detectors import Detector, SourceKey, source_key

MAX_SOURCES = 65_536  # sources one detector tracks at most
MAX_SAMPLES = 10  # sample destinations an alert carries


@dataclass(frozen=True, slots=True)
class Alert:
    """One source crossed a detector's threshold."""

    detector: Detector
    key: SourceKey
    version: int
    src: int  # the address of the attempt that crossed it
    distinct: int
    attempts: int
    samples: tuple[int, ...]  # destination addresses (same version), at most MAX_SAMPLES
    first: float
    last: float


class _Source:
    """What one source did within the window: destination -> last attempt, oldest first."""

    __slots__ = ("attempts", "destinations", "first", "quiet_until")

    def __init__(self, now: float) -> None:
        self.destinations: dict[int, float] = {}
        self.attempts = 0
        self.first = now
        self.quiet_until = 0.0  # no second alert before this time


@dataclass
class FanoutTable:
    """One detector's sources (see the module docstring)."""

    detector: Detector
    threshold: int
    max_sources: int = MAX_SOURCES
    sources: OrderedDict[SourceKey, _Source] = field(default_factory=OrderedDict)
    evicted: int = 0  # sources forgotten to make room
    alerts: int = 0

    def observe(self, version: int, src: int, dst: int, now: float) -> Alert | None:
        """A denied attempt from `src` to `dst`; the Alert when it crosses the threshold."""
        key = source_key(version, src)
        entry = self.sources.get(key)
        if entry is None:
            entry = self._track(key, now)
        else:
            self.sources.move_to_end(key)
        window = self.detector.window
        if now < entry.quiet_until:
            return None
        destinations = entry.destinations
        while destinations:
            oldest, seen = next(iter(destinations.items()))
            if now - seen <= window:
                break
            del destinations[oldest]
        if not destinations:
            entry.first, entry.attempts = now, 0
        destinations.pop(dst, None)  # to the end: the order stays the order of last attempts
        destinations[dst] = now
        entry.attempts += 1
        if len(destinations) < self.threshold:
            return None
        return self._alert(key, entry, version, src, now)

    def _track(self, key: SourceKey, now: float) -> _Source:
        if len(self.sources) >= self.max_sources:
            self.sources.popitem(last=False)
            self.evicted += 1
        entry = self.sources[key] = _Source(now)
        return entry

    def _alert(self, key: SourceKey, entry: _Source, version: int, src: int, now: float) -> Alert:
        samples = tuple(entry.destinations)[:MAX_SAMPLES]
        alert = Alert(self.detector, key, version, src, len(entry.destinations), entry.attempts,
                      samples, entry.first, now)  # fmt: skip
        entry.destinations = {}
        entry.attempts = 0
        entry.quiet_until = now + self.detector.window
        self.alerts += 1
        return alert

    def forget(self, key: SourceKey) -> None:
        """A released source starts afresh."""
        self.sources.pop(key, None)

    def prune(self, now: float) -> int:
        """Forget the sources idle for a whole window (call about once a second, bounded by
        the sources' own order: least recently seen first); how many were forgotten."""
        forgotten = 0
        window = self.detector.window
        while self.sources:
            key, entry = next(iter(self.sources.items()))
            last = max(entry.destinations.values(), default=entry.first)
            if now - last <= window or now < entry.quiet_until:
                break
            del self.sources[key]
            forgotten += 1
        return forgotten


def threshold_for(detector: Detector, workers: int) -> int:
    """Each of `workers` workers sees a disjoint share of a source's destinations (the kernel
    spreads connections by a hash of the address pair), so each counts to
    ceil(distinct / workers) (at least 2 when distinct is)."""
    share = math.ceil(detector.distinct / max(1, workers))
    return max(min(2, detector.distinct), share)


class Detection:
    """The detectors' tables across reloads: a reload that keeps a detector's table (same
    spec) keeps what it counted; a changed or removed one starts afresh."""

    def __init__(self, workers: int = 1, max_sources: int = MAX_SOURCES) -> None:
        self.workers = workers
        self.max_sources = max_sources
        self.tables: dict[Detector, FanoutTable] = {}
        self.alerts = 0  # alerts raised since start (for status)

    def observe(
        self, detectors: Iterable[Detector], version: int, src: int, dst: int, dport: int,
        now: float,
    ) -> list[Alert]:  # fmt: skip
        """A denied attempt, counted by every detector whose dport holds `dport`."""
        alerts: list[Alert] = []
        for detector in detectors:
            if not detector.dport.contains(dport):
                continue
            table = self.tables.get(detector)
            if table is None:
                table = self.tables[detector] = FanoutTable(
                    detector, threshold_for(detector, self.workers), self.max_sources
                )
            alert = table.observe(version, src, dst, now)
            if alert is not None:
                alerts.append(alert)
                self.alerts += 1
        return alerts

    def forget(self, key: SourceKey) -> None:
        for table in self.tables.values():
            table.forget(key)

    def housekeeping(self, detectors: Iterable[Detector], now: float) -> None:
        """Drop the tables of detectors no longer in force; forget idle sources."""
        keep = set(detectors)
        for detector in [d for d in self.tables if d not in keep]:
            del self.tables[detector]
        for table in self.tables.values():
            table.prune(now)

    @property
    def tracked(self) -> int:
        return sum(len(table.sources) for table in self.tables.values())

    @property
    def evicted(self) -> int:
        return sum(table.evicted for table in self.tables.values())
