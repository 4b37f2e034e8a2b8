"""Decision records to the events a log writes: each ECS event built once, then flood control.

One object does it for the log process (`logloop.Outputs`) and for `portguard replay`, so a
replay prints exactly the events the daemon would have written for the same decisions.
Pure apart from its own timestamp cache: `now` is passed in.
"""

from __future__ import annotations

from portguard.core.denycache import KernelHits
from portguard.core.events.flood import DenyAggregator, kernel_summary
from portguard.core.events.lines import LineRenderer, LogItem
from portguard.core.events.record import (
    DENIES,
    DecisionRecord,
    Event,
    Observer,
    Timestamps,
    connection_event,
)


class EventFlow:
    """Records and events in, the events to write now out (`[log] flood_window` seconds of
    flood control; 0 = every deny is written). With `lines` (the log process's outputs all
    write ECS), a decision flood control lets through untouched comes out as its rendered
    line (`core/events/lines.py`), never built as a dict."""

    def __init__(self, observer: Observer, flood_window: float = 0.0, lines: bool = False) -> None:
        self.observer = observer
        self._stamp = Timestamps()  # the builder's own cache (one thread)
        # a bot's 10,000 identical denies become a few lines
        self.floods = DenyAggregator(flood_window) if flood_window > 0 else None
        self.lines = LineRenderer(observer) if lines else None

    def decision(self, record: DecisionRecord) -> list[LogItem]:
        """A decision's event, through flood control (at the decision's own time)."""
        if self.lines is None or (self.floods is not None and record.action in DENIES):
            event = connection_event(record, self.observer, self._stamp)
            return [*self.admit(event, record.now)]
        rendered: list[LogItem] = [*self.flush(record.now)]  # flood control passes it by
        rendered.append(self.lines.decision(record))
        return rendered

    def admit(self, event: Event, now: float) -> list[Event]:
        """Any event through flood control: closed windows' summaries first, then the event
        unless flood control holds it back."""
        if self.floods is None:
            return [event]
        return self.floods.admit(event, now)

    def kernel_hits(self, found: KernelHits) -> list[Event]:
        """A key's retries the kernel's deny cache answered: folded into its flood window, or
        a summary of their own at once (no window open, or flood control off)."""
        event = connection_event(found.record, self.observer, self._stamp)
        start, end = self._stamp(found.start), self._stamp(found.end)
        if self.floods is None:
            return [kernel_summary(event, found.hits, start, end)]
        return self.floods.fold(event, found.hits, start, end)

    def flush(self, now: float) -> list[Event]:
        """The summaries of the flood-control windows closed by `now`."""
        return self.floods.flush(now) if self.floods is not None else []

    def flush_all(self) -> list[Event]:
        """The summaries of every open window (at the end)."""
        return self.floods.flush_all() if self.floods is not None else []
