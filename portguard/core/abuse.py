"""The abuse desk's report: decision-log events in, sources ranked by denied SMTP-port attempts.

`AbuseReport.add` takes each parsed log line (any JSON value) in any order, file after file:
every figure is a sum, a minimum, a maximum or a union, so rotated files may come in any
order. Per source (an IPv4 address, or an IPv6 /64 as the detector and per-source rate limits
count it) it keeps the attempts, the distinct destinations (core/events/destinations.py: exact
up to 100, then a sketch: bounded memory per source), the SMTP ports tried, the first and last
time, up to 10 sample destinations, and the alerts and quarantines.

What counts as an attempt: a denied decision (`event.type` denied, not a connection ended
after a reload, not a malformed packet) to one of the report's ports. A plain event is one
attempt; a flood summary stands for `represented()` attempts (the first deny of its window was
logged on its own) and brings its window's destinations (`portguard.aggregate.destinations`).
A summary whose window mixed report ports and others counts only its attempts to report ports.
An alert (`event.kind` alert) and a `quarantine-added` event count for their `source.ip`.
Lines that are not portguard events are counted (`skipped`), never an error. Pure: `now`
comes in as the `since` text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from portguard.core import inet
from portguard.core.events.destinations import SAMPLES, DistinctAddresses, sketch_of
from portguard.core.events.flood import deny_key, represented
from portguard.core.events.record import timestamp
from portguard.core.policy.detectors import parse_duration

SMTP_PORTS = frozenset({25, 465, 587})
QUARANTINE_ADDED = "quarantine-added"
_ALLOWED = frozenset({"allow", "log"})  # the verdicts of allowed decisions
_GROUPS_CACHED = 65_536  # source addresses whose group text is remembered


def parse_since(text: str) -> int:
    """``"24h"``, ``"90m"``, ``"7d"``, ``"3600s"`` as seconds (the detectors' durations);
    ValueError if not."""
    return parse_duration(text)


def since_text(now: float, seconds: int) -> str:
    """The @timestamp text `seconds` before `now` (events compare as text: a fixed format)."""
    return timestamp(now - seconds)


def source_group(address: str) -> str | None:
    """The source an address counts for: itself (IPv4), its /64 (IPv6); None if no address."""
    try:
        if ":" not in address:
            inet.inet_pton(inet.AF_INET, address)
            return address
        packed = inet.inet_pton(inet.AF_INET6, address)
    except (OSError, ValueError, TypeError):
        return None
    return inet.inet_ntop(inet.AF_INET6, packed[:8] + bytes(8)) + "/64"


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One line of the report."""

    source: str
    attempts: int
    destinations: int
    exact: bool  # False: `destinations` is an estimate (over 100 distinct)
    ports: tuple[int, ...]
    first_seen: str
    last_seen: str
    alerts: int
    quarantines: int
    sample: tuple[str, ...]


class _Source:
    __slots__ = ("addresses", "alerts", "attempts", "first", "last", "ports", "quarantines",
                 "sample")  # fmt: skip

    def __init__(self, first: str, last: str) -> None:
        self.attempts = self.alerts = self.quarantines = 0
        self.addresses = DistinctAddresses()
        self.ports: set[int] = set()
        self.sample: list[str] = []
        self.first, self.last = first, last

    def seen(self, first: str, last: str) -> None:
        self.first, self.last = min(self.first, first), max(self.last, last)

    def tried(self, samples: Iterable[str]) -> None:
        for sample in samples:
            if len(self.sample) >= SAMPLES:
                return
            if sample not in self.sample:
                self.sample.append(sample)

    def row(self, name: str) -> SourceRow:
        addresses = self.addresses
        return SourceRow(name, self.attempts, addresses.count, addresses.exact,
                         tuple(sorted(self.ports)), self.first, self.last, self.alerts,
                         self.quarantines, tuple(self.sample))  # fmt: skip


class AbuseReport:
    """The running tallies of one report (see the module docstring)."""

    def __init__(self, ports: Iterable[int] = SMTP_PORTS, since: str | None = None) -> None:
        self.ports = frozenset(ports)
        self.since = since  # @timestamp text: older events are left out
        self.events = 0  # portguard events read
        self.earlier = 0  # of them, older than `since`
        self.skipped = 0  # lines that are no portguard event
        self._sources: dict[str, _Source] = {}
        self._groups: dict[str, str | None] = {}

    def __len__(self) -> int:
        return len(self._sources)

    def add(self, event: Any) -> None:
        """One parsed log line: counted if it is a portguard event the report is about."""
        fields = event.get("event") if isinstance(event, dict) else None
        if not isinstance(fields, dict):
            self.skipped += 1
            return
        stamp, dataset = event.get("@timestamp"), fields.get("dataset")
        if not (isinstance(dataset, str) and dataset.startswith("portguard.")
                and isinstance(stamp, str)):  # fmt: skip
            self.skipped += 1
            return
        self.events += 1
        if self.since is not None and stamp < self.since:
            self.earlier += 1
            return
        try:
            self._count(event, fields, stamp)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.skipped += 1  # a portguard-looking line with fields of the wrong shape

    def rows(self, top: int = 0) -> list[SourceRow]:
        """The sources, most attempts first (then most destinations); `top` 0: all."""
        rows = [source.row(name) for name, source in self._sources.items()]
        rows.sort(key=lambda row: (-row.attempts, -row.destinations, row.source))
        return rows[:top] if top > 0 else rows

    def _count(self, event: dict[str, Any], fields: dict[str, Any], stamp: str) -> None:
        if fields.get("action") in _ALLOWED:
            return  # an allowed decision: most lines of a log
        if fields.get("kind") == "alert":
            self._source(event, stamp, stamp).alerts += 1
        elif fields.get("action") == QUARANTINE_ADDED:
            self._source(event, stamp, stamp).quarantines += 1
        elif deny_key(event) is not None:
            self._deny(event, stamp)

    def _deny(self, event: dict[str, Any], stamp: str) -> None:
        destination = event.get("destination") or {}
        ip, port = str(destination["ip"]), int(destination["port"])
        aggregate = (event.get("portguard") or {}).get("aggregate")
        tried = aggregate.get("destinations") if isinstance(aggregate, dict) else None
        if isinstance(tried, dict):
            attempts, ports = _summary_attempts(event, tried, self.ports)
        else:  # a plain deny, or a summary without destinations (an older log)
            attempts, ports = (represented(event), {port}) if port in self.ports else (0, set())
        if attempts <= 0:
            return
        first, last = stamp, stamp
        if isinstance(aggregate, dict):
            first, last = str(aggregate.get("first", stamp)), str(aggregate.get("last", stamp))
        source = self._source(event, first, last)
        source.attempts += attempts
        source.ports |= ports
        if isinstance(tried, dict):
            sketch = tried.get("sketch")
            source.addresses.merge(list(tried.get("addresses") or ()),
                                   None if sketch is None else sketch_of(str(sketch)))  # fmt: skip
            source.tried(str(sample) for sample in tried.get("sample") or ())
        else:
            source.addresses.add(ip)
            source.tried([f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"])

    def _source(self, event: dict[str, Any], first: str, last: str) -> _Source:
        address = str(event["source"]["ip"])
        name = self._groups.get(address)
        if name is None:
            name = source_group(address)
            if name is None:
                raise ValueError(f"not an address: {address!r}")
            if len(self._groups) >= _GROUPS_CACHED:
                self._groups.clear()
            self._groups[address] = name
        source = self._sources.get(name)
        if source is None:
            source = self._sources[name] = _Source(first, last)
        else:
            source.seen(first, last)
        return source


def _summary_attempts(
    event: dict[str, Any], tried: dict[str, Any], wanted: frozenset[int]
) -> tuple[int, set[int]]:
    """The attempts a summary stands for on `wanted` ports, and those ports. Its
    `port_attempts` cover the whole window; the first deny (``sample[0]``) was logged alone."""
    by_port = dict(zip(map(int, tried["ports"]), map(int, tried["port_attempts"]), strict=True))
    ports = {port for port in by_port if port in wanted}
    if not ports:
        return 0, set()
    if len(ports) == len(by_port):  # all of them (kernel-cache hits included)
        return represented(event), ports
    first_port = int(str(tried["sample"][0]).rsplit(":", 1)[1])
    return sum(by_port[port] for port in ports) - (first_port in ports), ports
