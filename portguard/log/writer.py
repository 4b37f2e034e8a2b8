"""The event writer: a bounded queue and a thread for every sink.

The packet loop only calls `submit`, which never blocks: each sink whose minimum level the
event reaches gets it in its own queue; a full queue drops the event and counts it for that
sink. A sink that is slow or down (a collector restarting) therefore fills its own queue only,
never delays a verdict and never holds up the other sinks. Every event a sink was given is
either written or counted as dropped: `submitted == written + dropped` once the writer closed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from portguard.core.events.lines import LineBlock, Queued, RenderedEvent
from portguard.core.events.record import LIFECYCLE_DATASET, Event
from portguard.log.sinks import LEVELS, EventSink, prepare, severity

DEFAULT_BUFFER = 65536  # events a sink may have waiting
FLUSH_EVERY = 256  # events a sink writes at most between two flushes (and counts)
LIFECYCLE_RESERVE = 256  # more places for lifecycle events only
# seconds a sink's thread waits, after a run, for more to gather before it sleeps until woken:
# while events keep coming it wakes this often and is never woken by a submit (a wake-up costs
# the submitting thread and a context switch a block); a lone event is still written at once
LINGER = 0.002
_STOP = object()
_REOPEN = object()


def _is_lifecycle(event: Queued) -> bool:
    if isinstance(event, RenderedEvent | LineBlock):
        return False  # decisions and flow ends only
    return bool(event.get("event", {}).get("dataset") == LIFECYCLE_DATASET)


def _weight(item: object) -> int:
    """The events a queued item counts as."""
    return len(item) if isinstance(item, LineBlock) else 1


class EventQueue(Protocol):
    """Where events are handed over: the writer itself, or the log process in front of it."""

    def submit(self, event: Event) -> bool: ...


# (sink name, up, reason): a sink went down (up False) or came back
SinkStateCallback = Callable[[str, bool, str], None]


@dataclass(frozen=True, slots=True)
class SinkStats:
    """One sink's counters: events given to it, written by it, dropped on its way."""

    name: str
    submitted: int
    written: int
    dropped: int

    def fields(self) -> dict[str, object]:
        return {"name": self.name, "submitted": self.submitted, "written": self.written,
                "dropped": self.dropped}  # fmt: skip


class Channel:
    """One sink, its bounded queue, its minimum level and the thread that writes to it.

    The queue is a deque: `submit` appends (and wakes the thread only when it sleeps), the
    thread takes whatever has gathered, writes it and flushes once per run, so a burst of
    events costs the two threads a few lock operations, not several per event. A `LineBlock`
    is one item for a sink that writes it whole (`sink.blocks`), its events one each for any
    other; it counts as the events it holds everywhere (buffer, counters)."""

    def __init__(self, sink: EventSink, buffer: int = DEFAULT_BUFFER, level: str = "debug") -> None:
        self.sink = sink
        self.max_severity = LEVELS[level]  # events of a higher number (less severe) are skipped
        self.blocks = bool(getattr(sink, "blocks", False))  # it writes a LineBlock whole
        self.submitted = self.written = self.dropped = 0
        self.up = True
        self.on_state: SinkStateCallback | None = None
        self.buffer = buffer
        # lifecycle events (an outage, drop counts, stop) may use a small reserve beyond the
        # buffer, so the collector still learns what happened when decisions filled it
        self._items: deque[object] = deque()
        # events queued beyond one per item (blocks): added by `submit`'s thread, taken off by
        # the sink's, each counter written by one thread only
        self._extra_in = self._extra_out = 0
        self._lock = threading.Lock()  # counters are bumped from several threads
        self._ready = threading.Condition(threading.Lock())  # the thread waits for items
        self._sleeping = False  # the thread waits on _ready (set and read under it)
        self._closing = threading.Event()
        self._abandoned = False
        self.closed = False
        self._reopen_due = False  # a reopen that found the queue full: done before the next write
        self._thread = threading.Thread(target=self._drain, name=f"log-{sink.name}", daemon=True)
        if hasattr(sink, "on_state"):
            sink.on_state = self._state

    @property
    def name(self) -> str:
        return self.sink.name

    def start(self) -> None:
        self._thread.start()

    @property
    def waiting(self) -> int:
        """Events queued, not yet taken by the sink's thread."""
        return len(self._items) + self._extra_in - self._extra_out

    def submit(self, event: Queued) -> bool:
        """Queue the event (a block: its events) if it reaches this sink's level; never
        blocks. False when some had to be dropped."""
        if self.closed:
            return True
        if isinstance(event, LineBlock) and (
            not self._takes_whole(event) or self.waiting + len(event) > self.buffer
        ):  # event by event: what fits of it is queued, the rest dropped, as without blocks
            return self.submit_many(event.events()) == 0
        if severity(event) > self.max_severity:
            return True
        weight, waiting = _weight(event), self.waiting
        if waiting + weight > self.buffer + LIFECYCLE_RESERVE or (
            waiting + weight > self.buffer and not _is_lifecycle(event)
        ):
            self._count(submitted=weight, dropped=weight)
            return False
        self._count(submitted=weight)
        if weight > 1:  # only the packet loop's side submits blocks (sinks' threads: events)
            self._extra_in += weight - 1
        self._put(event)
        return True

    def submit_many(self, events: Sequence[Queued]) -> int:
        """`submit` for each event, in order, counted and queued together; how many were
        dropped. Never blocks."""
        if self.closed:
            return 0
        taken = self._taken(events)
        weight = sum(_weight(event) for event in taken)
        if self.waiting + weight > self.buffer:  # near full: the reserve's rules
            return sum(_weight(event) for event in taken if not self.submit(event))
        self._count(submitted=weight)
        if weight != len(taken):
            self._extra_in += weight - len(taken)
        self._items.extend(taken)
        if self._sleeping:
            with self._ready:
                self._ready.notify()
        return 0

    def _takes_whole(self, block: LineBlock) -> bool:
        return self.blocks and severity(block) <= self.max_severity

    def _taken(self, events: Sequence[Queued]) -> list[Queued]:
        """The events that reach this sink's level, blocks it cannot take whole split up."""
        taken: list[Queued] = []
        for event in events:
            if isinstance(event, LineBlock) and not self._takes_whole(event):
                taken += self._taken(event.events())
            elif severity(event) <= self.max_severity:
                taken.append(event)
        return taken

    def reopen(self) -> None:
        if len(self._items) >= self.buffer + LIFECYCLE_RESERVE:
            self._reopen_due = True  # never wait: the thread reopens before its next write
            return
        self._put(_REOPEN)

    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(self.name, self.submitted, self.written, self.dropped)

    @property
    def settled(self) -> bool:
        """Every event given to it is written or counted as dropped (nothing in flight)."""
        with self._lock:
            return self.submitted == self.written + self.dropped

    def begin_close(self) -> None:
        """Ask the thread to stop once it has written what is queued."""
        self._closing.set()
        self._put(_STOP)

    def finish_close(self, deadline: float) -> None:
        """Wait until `deadline` (monotonic); what a stuck sink still holds then is dropped."""
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abandoned = True
            self.sink.interrupt()
            self._thread.join(1.0)
        self._count(dropped=sum(_weight(item) for item in list(self._items)
                                if item is not _STOP and item is not _REOPEN))  # fmt: skip
        self._items.clear()
        self.closed = True
        self.sink.close()

    def _count(self, submitted: int = 0, written: int = 0, dropped: int = 0) -> None:
        with self._lock:
            self.submitted += submitted
            self.written += written
            self.dropped += dropped

    def _put(self, item: object) -> None:
        self._items.append(item)
        if self._sleeping:
            with self._ready:
                self._ready.notify()

    def _wait(self, lingering: bool) -> None:
        """Sleep until an item comes (at most a moment, to notice a close); `lingering` (a run
        was just written): first a LINGER-long nap no submit wakes."""
        if lingering:
            time.sleep(LINGER)
            if self._items:
                return
        with self._ready:
            self._sleeping = True
            if not self._items:
                self._ready.wait(0.2)
            self._sleeping = False

    def _drain(self) -> None:
        lingering = False
        while True:
            self._wait(lingering)
            if not self._items:
                if self._closing.is_set():
                    return
                lingering = False
                continue
            if not self._write_run():
                return
            lingering = True

    def _write_run(self) -> bool:
        """Write what has gathered, then flush once; False once the stop marker came."""
        written = dropped = 0
        items = self._items
        while items:
            if written + dropped >= FLUSH_EVERY:  # a long run: out with what it wrote so far
                self._end_run(written, dropped)
                written = dropped = 0
            item = items.popleft()
            weight = _weight(item)
            self._extra_out += weight - 1
            if item is _STOP:
                self._end_run(written, dropped)
                return False
            if self._reopen_due:
                self._reopen_due = False
                self._attempt(self.sink.reopen)
            if item is _REOPEN:
                self._attempt(self.sink.reopen)
            elif self._abandoned:
                dropped += weight
            elif self._attempt(self.sink.write, item):
                written += weight
            else:
                dropped += weight
        self._end_run(written, dropped)
        return True

    def _end_run(self, written: int, dropped: int) -> None:
        """A run is over: out with it (the flush failing drops what it held), then count."""
        if written and not self._attempt(self.sink.flush):
            written, dropped = 0, dropped + written
        self._count(written=written, dropped=dropped)

    def _attempt(self, action: Callable[..., None], *args: object) -> bool:
        try:
            action(*args)
        except Exception as error:  # OSError, or a sink's bug: never the end of the thread
            self._state(False, str(error) or type(error).__name__)
            return False
        if not self.up:
            self._state(True, "")
        return True

    def _state(self, up: bool, reason: str) -> None:
        """Report a change (down once per outage, then up again) to the writer's owner."""
        if up == self.up:
            return
        self.up = up
        if self.on_state is not None:
            self.on_state(self.name, up, reason)


class EventWriter:
    """Bounded, non-blocking event queues, one writer thread per sink."""

    def __init__(
        self, sinks: Sequence[EventSink | Channel], capacity: int = DEFAULT_BUFFER
    ) -> None:
        self.channels = [s if isinstance(s, Channel) else Channel(s, capacity) for s in sinks]

    @property
    def on_sink_state(self) -> SinkStateCallback | None:
        return self.channels[0].on_state if self.channels else None

    @on_sink_state.setter
    def on_sink_state(self, callback: SinkStateCallback | None) -> None:
        for channel in self.channels:
            channel.on_state = callback

    def start(self) -> None:
        for channel in self.channels:
            channel.start()

    def submit(self, event: Queued) -> bool:
        """Queue an event for every sink that takes its level; never blocks. False when some
        sink had to drop it."""
        accepted = True
        prepared = prepare(event)  # community ID and field order once, not once per sink
        for channel in self.channels:
            accepted = channel.submit(prepared) and accepted
        return accepted

    def submit_many(self, events: Sequence[Queued]) -> bool:
        """`submit` for each event, in order, with one lock per sink; False when some sink
        had to drop some."""
        prepared = [prepare(event) for event in events]
        dropped = 0
        for channel in self.channels:
            dropped += channel.submit_many(prepared)
        return dropped == 0

    def reopen(self) -> None:
        """Reopen file sinks (SIGUSR1 after logrotate), in order with the events around them."""
        for channel in self.channels:
            channel.reopen()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (each sink gets `timeout`), then stop the threads."""
        deadline = time.monotonic() + timeout
        open_channels = [channel for channel in self.channels if not channel.closed]
        for channel in open_channels:
            channel.begin_close()
        for channel in open_channels:
            channel.finish_close(deadline)

    def stats(self) -> list[SinkStats]:
        return [channel.stats() for channel in self.channels]

    @property
    def ecs_only(self) -> bool:
        """Whether every output writes ECS (then decisions and flow ends may come rendered)."""
        return all(channel.sink.format == "ecs" for channel in self.channels)

    def close_unsettled(self, timeout: float = 1.0) -> None:
        """Close the outputs still behind (a collector down at stop): what they hold is
        counted as dropped, and the other outputs go on."""
        deadline = time.monotonic() + timeout
        lagging = [channel for channel in self.channels if not channel.settled]
        for channel in lagging:
            channel.begin_close()
        for channel in lagging:
            channel.finish_close(deadline)

    def settle(self, timeout: float) -> bool:
        """Wait (at most `timeout`) until every sink has written or dropped all it was given,
        so that counters reported next are final for the events so far."""
        deadline = time.monotonic() + timeout
        while not all(channel.settled for channel in self.channels):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    @property
    def dropped(self) -> int:
        """Events some sink dropped (each sink counts its own)."""
        return sum(channel.dropped for channel in self.channels)

    @property
    def written(self) -> int:
        return sum(channel.written for channel in self.channels)
