"""Flood control: identical denies inside a window become one logged event and one summary.

A subscriber bot retrying thousands of times a minute must not produce thousands of lines.
Denied decision events with the same source address, rule and action inside `window` seconds
(counted from the first one) become: the first event, logged at once and unchanged, then, when
the window closes, one summary event (a copy of the last denied event) carrying
`portguard.aggregate` = {count, first, last, suppressed} and ECS `event.start` / `event.end`.
A summary is emitted only when something was suppressed.

The kernel's deny cache answers a bot's retries without the daemon and counts them per key;
each rotation's counts come back (`fold`) with the key's decision event: they join the open
window of its key (`count` and `suppressed` grow, and `portguard.aggregate.kernel` says how
many of them the kernel answered), or, with no window open (closed, or flood control off:
`kernel_summary`), become a summary of their own at once. Either way `represented` of every
event adds up to the attempts: decisions plus kernel hits.

Everything else (allowed decisions, lifecycle events, malformed-packet events, connections
ended after a reload) passes through untouched and undelayed. Pure: `now` is passed in.
Memory is bounded: at most `max_keys` windows are tracked; when full, the oldest window is
closed early (its summary emitted) so that no count is ever lost.

The window also keeps where its denies went (core/events/destinations.py): the distinct
destination addresses (exact up to 100, then a sketch), the attempts per port and up to 10
sample destinations; the summary carries them as `portguard.aggregate.destinations`, covering
the whole window (the first deny included), so `portguard report` ranks a folded bot right.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from portguard.core.events.destinations import WindowDestinations
from portguard.core.events.record import DECISION_DATASET, Event

DEFAULT_WINDOW = 60.0  # seconds
DEFAULT_MAX_KEYS = 10_000

DenyKey = tuple[str, str, str]  # source.ip, rule.id, event.action


@dataclass(slots=True)
class _Window:
    """The denies of one key since its first, logged one."""

    destinations: WindowDestinations  # where they went
    start: float  # `now` of the first deny
    first: str  # @timestamp of the first deny
    last: Event  # the latest deny (the summary is a copy of it)
    count: int  # denies in the window, including the first
    kernel: int = 0  # of them, answered by the kernel's deny cache


def deny_key(event: Event) -> DenyKey | None:
    """The aggregation key of a denied connection decision, None for any other event."""
    fields: dict[str, Any] = event.get("event") or {}
    kinds = fields.get("type") or ()
    if fields.get("dataset") != DECISION_DATASET or "denied" not in kinds or "end" in kinds:
        return None  # "end": a connection ended after a reload is reported one by one
    source = event.get("source") or {}
    rule = event.get("rule") or {}
    ip, rule_id, action = source.get("ip"), rule.get("id"), fields.get("action")
    if ip is None or rule_id is None or action is None or rule_id == "malformed-packet":
        return None  # malformed-packet events are rate-limited (one a second, counted) already
    return (str(ip), str(rule_id), str(action))


def represented(event: Event) -> int:
    """How many denies one emitted event stands for: its suppressed count for a summary
    (the first deny of its window was logged on its own), else 1."""
    aggregate = (event.get("portguard") or {}).get("aggregate")
    if aggregate is None:
        return 1
    return int(aggregate["suppressed"])


def _tried(window: _Window, event: Event, attempts: int = 1) -> None:
    """`attempts` denies of the window like `event`: where they went."""
    destination = event.get("destination") or {}
    window.destinations.add(str(destination.get("ip")), int(destination.get("port") or 0),
                            attempts)  # fmt: skip


def with_destinations(event: Event, destinations: WindowDestinations) -> Event:
    """A summary (its own new `aggregate`) with `aggregate.destinations` added."""
    event["portguard"]["aggregate"]["destinations"] = destinations.fields()
    return event


class DenyAggregator:
    """Turns a stream of events into the events to log now (see the module docstring)."""

    def __init__(self, window: float = DEFAULT_WINDOW, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if window <= 0:
            raise ValueError(f"the flood-control window must be positive, not {window}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.window = window
        self.max_keys = max_keys
        self._windows: OrderedDict[DenyKey, _Window] = OrderedDict()  # oldest first
        self.suppressed = 0  # denies not logged individually, since start (for status)

    def __len__(self) -> int:
        """The number of keys tracked now."""
        return len(self._windows)

    def admit(self, event: Event, now: float) -> list[Event]:
        """The events to log now: closed windows' summaries, then `event` unless suppressed."""
        out = self.flush(now)
        key = deny_key(event)
        if key is None:
            out.append(event)
            return out
        window = self._windows.get(key)
        if window is not None:
            window.last = event
            window.count += 1
            self.suppressed += 1
            _tried(window, event)
            return out
        if len(self._windows) >= self.max_keys:
            out.extend(self._end(next(iter(self._windows))))
        window = _Window(WindowDestinations(), now, str(event.get("@timestamp")), event, 1)
        self._windows[key] = window
        _tried(window, event)
        out.append(event)
        return out

    def fold(self, event: Event, hits: int, start: str, end: str) -> list[Event]:
        """`hits` more denies of `event`'s key that the kernel answered between `start` and
        `end` (@timestamp texts): into its open window, else a summary of their own now."""
        key = deny_key(event)
        window = self._windows.get(key) if key is not None else None
        if window is None:
            return [kernel_summary(event, hits, start, end)]
        window.count += hits
        window.kernel += hits
        self.suppressed += hits
        _tried(window, event, hits)  # the ports' attempts still add up to the count
        return []

    def flush(self, now: float) -> list[Event]:
        """Summaries of the windows that closed by `now` (call about once a second)."""
        out: list[Event] = []
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if now < window.start + self.window:
                break  # windows open in order, so the later ones are still open too
            out.extend(self._end(key))
        return out

    def flush_all(self) -> list[Event]:
        """Close every window (shutdown): the summaries of all of them."""
        out: list[Event] = []
        while self._windows:
            out.extend(self._end(next(iter(self._windows))))
        return out

    def _end(self, key: DenyKey) -> list[Event]:
        """Close a window: its summary (if any) with the destinations of its denies."""
        destinations = self._windows[key].destinations
        return [with_destinations(event, destinations) for event in self._close(key)]

    def _close(self, key: DenyKey) -> list[Event]:
        window = self._windows.pop(key)
        if window.count < 2:
            return []
        return [summary(window.last, window.first, window.count, window.kernel)]


def summary(last: Event, first: str, count: int, kernel: int = 0) -> Event:
    """A copy of the last deny of a window that stands for the `count - 1` suppressed ones,
    `kernel` of them answered by the kernel's deny cache."""
    end = str(last.get("@timestamp"))
    aggregate = {"count": count, "first": first, "last": end, "suppressed": count - 1,
                 "kernel": kernel}  # fmt: skip
    return {
        **last,
        "event": {**last["event"], "start": first, "end": end},
        "portguard": {**(last.get("portguard") or {}), "aggregate": aggregate},
    }


def kernel_summary(event: Event, hits: int, start: str, end: str) -> Event:
    """A copy of a key's decision event standing for `hits` retries the kernel answered
    between `start` and `end` (none of them logged before)."""
    aggregate = {"count": hits, "first": start, "last": end, "suppressed": hits, "kernel": hits}
    return {
        **event,
        "@timestamp": end,
        "event": {**event["event"], "start": start, "end": end},
        "portguard": {**(event.get("portguard") or {}), "aggregate": aggregate},
    }
