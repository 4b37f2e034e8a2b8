"""The event writer: a bounded queue and a thread for every sink.

The packet loop only calls `submit`, which never blocks: each sink whose minimum level the
event reaches gets it in its own queue; a full queue drops the event and counts it for that
sink. A sink that is slow or down (a collector restarting) therefore fills its own queue only,
never delays a verdict and never holds up the other sinks. Every event a sink was given is
either written or counted as dropped: `submitted == written + dropped` once the writer closed.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from portguard.core.events.record import LIFECYCLE_DATASET, Event
from portguard.log.sinks import LEVELS, EventSink, prepare, severity

DEFAULT_BUFFER = 65536  # events a sink may have waiting
LIFECYCLE_RESERVE = 256  # more places for lifecycle events only
_STOP = object()
_REOPEN = object()


def _is_lifecycle(event: Event) -> bool:
    return bool(event.get("event", {}).get("dataset") == LIFECYCLE_DATASET)


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
    """One sink, its bounded queue, its minimum level and the thread that writes to it."""

    def __init__(self, sink: EventSink, buffer: int = DEFAULT_BUFFER, level: str = "debug") -> None:
        self.sink = sink
        self.max_severity = LEVELS[level]  # events of a higher number (less severe) are skipped
        self.submitted = self.written = self.dropped = 0
        self.up = True
        self.on_state: SinkStateCallback | None = None
        self.buffer = buffer
        # lifecycle events (an outage, drop counts, stop) may use a small reserve beyond the
        # buffer, so the collector still learns what happened when decisions filled it
        self._queue: queue.Queue[object] = queue.Queue(maxsize=buffer + LIFECYCLE_RESERVE)
        self._lock = threading.Lock()  # counters are bumped from several threads
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

    def submit(self, event: Event) -> bool:
        """Queue the event if it reaches this sink's level; never blocks."""
        if severity(event) > self.max_severity or self.closed:
            return True
        try:
            if self._queue.qsize() >= self.buffer and not _is_lifecycle(event):
                raise queue.Full
            self._queue.put_nowait(event)
        except queue.Full:
            self._count(dropped=1)
            return False
        finally:
            self._count(submitted=1)
        return True

    def reopen(self) -> None:
        try:
            self._queue.put_nowait(_REOPEN)
        except queue.Full:  # never wait: the thread reopens before its next write
            self._reopen_due = True

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
        with contextlib.suppress(queue.Full):  # else it stops once the queue is empty
            self._queue.put_nowait(_STOP)

    def finish_close(self, deadline: float) -> None:
        """Wait until `deadline` (monotonic); what a stuck sink still holds then is dropped."""
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abandoned = True
            self.sink.interrupt()
            self._thread.join(1.0)
        self._count(dropped=sum(isinstance(item, dict) for item in list(self._queue.queue)))
        self.closed = True
        self.sink.close()

    def _count(self, submitted: int = 0, written: int = 0, dropped: int = 0) -> None:
        with self._lock:
            self.submitted += submitted
            self.written += written
            self.dropped += dropped

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            if item is _STOP:
                return
            if self._reopen_due:
                self._reopen_due = False
                self._attempt(self.sink.reopen)
            if item is _REOPEN:
                self._attempt(self.sink.reopen)
            elif self._abandoned:
                self._count(dropped=1)
            else:
                assert isinstance(item, dict)
                written = self._attempt(self.sink.write, item)
                if written and self._queue.empty():  # a burst is over: out with it
                    written = self._attempt(self.sink.flush)
                self._count(written=int(written), dropped=int(not written))

    def _attempt(self, action: Callable[..., None], *args: object) -> bool:
        try:
            action(*args)
        except OSError as error:
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

    def submit(self, event: Event) -> bool:
        """Queue an event for every sink that takes its level; never blocks. False when some
        sink had to drop it."""
        accepted = True
        prepared = prepare(event)  # community ID and field order once, not once per sink
        for channel in self.channels:
            accepted = channel.submit(prepared) and accepted
        return accepted

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
