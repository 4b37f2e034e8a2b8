"""The outputs in a process of their own, so rendering and writing never take the packet
loop's interpreter lock.

Threads cannot do this in CPython: while a sink thread renders, the packet loop waits for the
GIL after every system call (the "convoy effect"), and decisions fell to a quarter of their
rate under a stream of events. So a worker forks one log process before it binds its queue.
The packet loop hands over a decision as a record of plain values (handoff.py: a marshalled
tuple, well under a µs) and writes it, without waiting, into a unix stream socket with a
large buffer; when the buffer is full the record is dropped and counted ("handoff" drops).
The log process reads the frames, builds each decision's event once (with its own timestamp
cache), applies flood control (`[log] flood_window`), and feeds the writer (one bounded queue
and thread per output, writer.py); it reports drops as `events-dropped` events and writes the
stop event last, with the final counters.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from portguard.core.events.flood import DenyAggregator
from portguard.core.events.flowend import EndedFlow, flow_end_event
from portguard.core.events.record import (
    Event,
    Loggable,
    Observer,
    Timestamps,
    connection_event,
    lifecycle_event,
)
from portguard.io.ctevents import FlowEndError, FlowEndListener, enable_accounting
from portguard.log import handoff
from portguard.log.writer import EventWriter

SEND_BUFFER = 8 << 20  # bytes the packet loop may have waiting for the log process
READ_SIZE = 1 << 20
REPORT_INTERVAL = 1.0  # seconds between checks for new drops
SETTLE = 5.0  # seconds the outputs get to catch up before the stop event is counted
GATHER = 0.01  # seconds the log process lets events gather in its socket between reads
SWITCH_INTERVAL = 0.005  # Python's default: fewer thread switches between reader and sinks
CLOSE_GRACE = 15.0  # seconds the log process gets to finish after the stop event

WriterFactory = Callable[[], EventWriter]


class LogProcess:
    """The packet loop's end: `submit` never blocks; the log process does the rest."""

    def __init__(
        self, make_writer: WriterFactory, observer: Observer, flow_end: bool = False,
        flood_window: float = 0.0, **extra: object,
    ) -> None:  # fmt: skip
        """`flow_end`: this log process also turns conntrack DESTROY events into flow-end
        events (one process per network namespace should). `flood_window`: seconds identical
        denies are aggregated (0: every deny is logged)."""
        self.make_writer = make_writer
        self.observer = observer
        self.flow_end = flow_end
        self.flood_window = flood_window
        self.extra = extra
        self._lock = threading.Lock()  # the packet loop, reevaluation and hook threads submit
        self.dropped = 0  # events the log process never got (its socket buffer was full)
        self.pid = 0
        self._sock: socket.socket | None = None
        self._pending = b""  # the rest of a line the socket took only in part
        self._reported = 0
        self._stats_buffer = b""
        self.stats: dict[str, Any] = {}  # the log process's last report (see `read_stats`)

    def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        _grow_send_buffer(parent)
        pid = os.fork()
        if pid == 0:  # the log process
            parent.close()
            code = 1
            try:
                code = run_outputs(child, self._outputs)
            finally:
                os._exit(code)
        child.close()
        parent.setblocking(False)
        self.pid, self._sock = pid, parent

    def _outputs(self) -> Outputs:
        """In the log process: the writer and, when asked for, the flow-end listener."""
        outputs = Outputs(self.make_writer(), self.observer, self.extra, self.flood_window)
        if self.flow_end:
            outputs.listen_for_flow_ends()
        return outputs

    def submit(self, logged: Loggable) -> bool:
        """Hand a decision record or an event over; never blocks. False when it had to be
        dropped."""
        message = handoff.loggable_frame(logged)
        with self._lock:
            if self._send(message):
                return True
            self.dropped += 1
        return False

    def reopen(self) -> None:
        with self._lock:
            self._send(handoff.frame(handoff.REOPEN))

    def flush_floods(self) -> None:
        """Close every flood-control window now (at stop: the summaries before the last
        lifecycle events)."""
        with self._lock:
            self._send(handoff.frame(handoff.FLUSH))

    def report_drops(self) -> None:
        """Tell the log process about handoff drops (call it now and then, e.g. every second)."""
        with self._lock:
            if self.dropped != self._reported and self._send(self._drops()):
                self._reported = self.dropped

    def restart(self) -> None:
        """A new log process in place of one that died; the drop count carries over (the
        new one reports it)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
            self._sock, self._pending, self._reported = None, b"", 0
            self.start()

    def alive(self) -> bool:
        """Whether the log process still runs (reaps it when it has ended)."""
        if not self.pid or self._sock is None:
            return True  # not started, or closed on purpose
        try:
            done, _status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return done == 0

    def read_stats(self) -> dict[str, Any]:
        """The newest counters the log process sent back (once a second): `sinks` (each
        output's submitted/written/dropped), `events_dropped`, `handoff_dropped`,
        `flow_end_lost`. Never blocks."""
        with self._lock:
            if self._sock is None:
                return self.stats
            with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
                while chunk := self._sock.recv(READ_SIZE):
                    self._stats_buffer += chunk
        *lines, self._stats_buffer = self._stats_buffer.split(b"\n")
        if lines:
            self.stats = orjson.loads(lines[-1])
        return self.stats

    def close(self, stop_event: Event | None = None, timeout: float = CLOSE_GRACE) -> None:
        """Send the stop event (the log process adds the final counters), wait for the log
        process to write it and everything before it, then reap it."""
        if self._sock is None:
            return
        message = handoff.frame(handoff.STOP, orjson.dumps(stop_event or {}))
        deadline = time.monotonic() + timeout
        self._lock.acquire()  # no submit after this (a late one drops: the socket is gone)
        self._sock.setblocking(True)
        self._sock.settimeout(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            self._sock.sendall(self._pending + self._drops() + message)
        self._sock.close()
        self._sock = None
        self._lock.release()
        _reap(self.pid, deadline)

    def _drops(self) -> bytes:
        return handoff.frame(handoff.DROPS, b"%d" % self.dropped)

    def _send(self, line: bytes) -> bool:
        """Write a whole frame or nothing new (a part the socket took stays pending)."""
        if self._sock is None:
            return False
        try:
            if self._pending:
                sent = self._sock.send(self._pending)
                self._pending = self._pending[sent:]
                if self._pending:
                    return False
            sent = self._sock.send(line)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:  # the log process is gone: nothing can be logged any more
            return False
        self._pending = line[sent:]
        return True


def _grow_send_buffer(sock: socket.socket) -> None:
    """SO_SNDBUFFORCE (CAP_NET_ADMIN) past net.core.wmem_max, else as large as allowed."""
    force = getattr(socket, "SO_SNDBUFFORCE", 32)
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, SEND_BUFFER)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def _reap(pid: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


# --- the log process ---------------------------------------------------------------------


def run_outputs(sock: socket.socket, make_outputs: Callable[[], Outputs]) -> int:
    """The log process: lines in, events out, until the stop event or the worker is gone."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)  # the worker decides when logging ends
    signal.set_wakeup_fd(-1)
    sys.setswitchinterval(SWITCH_INTERVAL)  # the worker's short interval suits a packet loop
    outputs = make_outputs()
    buffer = b""
    next_report = time.monotonic() + REPORT_INTERVAL
    while not outputs.stopped:
        readable, _, _ = select.select([sock], [], [], REPORT_INTERVAL)
        if readable:
            data = sock.recv(READ_SIZE)
            if not data:
                break  # the worker is gone
            frames, buffer = handoff.split_frames(buffer + data)
            for message in frames:
                outputs.handle(message)
            if len(data) < READ_SIZE:
                time.sleep(GATHER)  # let events gather: one wake-up and one flush per batch
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + REPORT_INTERVAL
            outputs.flush_floods(time.time())
            outputs.report_drops()
            _send_stats(sock, outputs.stats())
    outputs.finish(None)
    return 0


def _send_stats(sock: socket.socket, stats: dict[str, Any]) -> None:
    """Counters back to the worker (for `portguard status`); skipped when it is not reading."""
    with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
        sock.send(orjson.dumps(stats) + b"\n", socket.MSG_DONTWAIT)


class Outputs:
    """The log process's side: events built from records, flood control, the writer, drop
    reports, the stop event with final counts."""

    def __init__(
        self, writer: EventWriter, observer: Observer, extra: dict[str, object],
        flood_window: float = 0.0,
    ) -> None:  # fmt: skip
        self.writer = writer
        self.observer = observer
        self.extra = extra
        self._stamp = Timestamps()  # the reading thread's own cache
        # a bot's 10,000 identical denies become a few lines (window 0: every deny is logged)
        self.floods = DenyAggregator(flood_window) if flood_window > 0 else None
        self.handoff_dropped = 0
        self.stopped = False
        self._reported = 0
        self.flow_ends: FlowEndListener | None = None
        self._flow_ends_lost = 0

    def listen_for_flow_ends(self) -> None:
        """Flow-end events from conntrack DESTROY (needs accounting: turned on here)."""
        problems = enable_accounting()
        for setting, reason in problems.items():
            self._log("flow-end-degraded", f"cannot set {setting}: {reason}; flow-end events "
                      "lack packet and byte counts or times", setting=setting)  # fmt: skip
        listener = FlowEndListener(self._flow_ended)
        try:
            listener.start()
        except (FlowEndError, OSError) as error:
            self._log("flow-end-failed", f"no flow-end events: {error}", error=str(error))
            return
        self.flow_ends = listener

    def _flow_ended(self, ended: EndedFlow) -> None:
        self.writer.submit(flow_end_event(ended, self.observer, time.time()))

    @property
    def dropped(self) -> int:
        return self.handoff_dropped + self.writer.dropped

    def handle(self, message: bytes) -> None:
        """One frame from the worker (kind byte, payload); one that fails is reported, never
        fatal."""
        try:
            self._handle(message[:1], message[1:])
        except Exception as error:
            print(f"portguard: log process: {message[:80]!r}: {error!r}", file=sys.stderr,
                  flush=True)  # fmt: skip

    def _handle(self, kind: bytes, payload: bytes) -> None:
        if kind == handoff.DECISION:
            record = handoff.decision_of(payload)
            self._admit(connection_event(record, self.observer, self._stamp), record.now)
        elif kind == handoff.EVENT:
            self._admit(orjson.loads(payload), time.time())
        elif kind == handoff.REOPEN:
            self.writer.reopen()
        elif kind == handoff.DROPS:
            self.handoff_dropped = max(self.handoff_dropped, int(payload or b"0"))
        elif kind == handoff.FLUSH:
            self._flush_all_floods()
        elif kind == handoff.STOP:
            self.finish(orjson.loads(payload))

    def _admit(self, event: Event, now: float) -> None:
        """An event from the worker, through flood control, to the writer."""
        if self.floods is None:
            self.writer.submit(event)
            return
        for admitted in self.floods.admit(event, now):
            self.writer.submit(admitted)

    def flush_floods(self, now: float) -> None:
        """The summaries of the flood-control windows closed by `now` (once a second)."""
        for summary in self.floods.flush(now) if self.floods is not None else ():
            self.writer.submit(summary)

    def _flush_all_floods(self) -> None:
        for summary in self.floods.flush_all() if self.floods is not None else ():
            self.writer.submit(summary)

    def report_drops(self) -> None:
        self._report_flow_end_losses()
        dropped = self.dropped
        if dropped == self._reported:
            return
        since, self._reported = dropped - self._reported, dropped
        stats = [s.fields() for s in self.writer.stats() if s.dropped]
        names = ", ".join(str(s["name"]) for s in stats) or "the hand-over to the log process"
        self._log("events-dropped", f"{since} events dropped by {names} (slow or down)",
                  events_dropped=dropped, handoff_dropped=self.handoff_dropped,
                  sinks=stats)  # fmt: skip

    def stats(self) -> dict[str, Any]:
        return {
            "sinks": [s.fields() for s in self.writer.stats()],
            "events_dropped": self.dropped,
            "handoff_dropped": self.handoff_dropped,
            "flow_end_lost": self.flow_ends.lost if self.flow_ends is not None else 0,
            "flow_ends": self.flow_ends.reported if self.flow_ends is not None else 0,
        }

    def _report_flow_end_losses(self) -> None:
        lost = self.flow_ends.lost if self.flow_ends is not None else 0
        if lost != self._flow_ends_lost:
            self._flow_ends_lost = lost
            self._log("flow-end-lost", "the kernel dropped conntrack events: some allowed "
                      "connections will have no flow-end event", flow_end_lost=lost)  # fmt: skip

    def finish(self, stop_event: dict[str, Any] | None) -> None:
        """Write the stop event with the final counters, then close the outputs."""
        if self.stopped:
            return
        self.stopped = True
        if self.flow_ends is not None:
            self.flow_ends.stop()
        self._flush_all_floods()  # the worker asked for it already, unless it died
        if stop_event:
            if not self.writer.settle(SETTLE):  # an output is stuck: give up on it first,
                self.writer.close_unsettled()  # so the counters in the stop event are final
            stop_event.setdefault("portguard", {}).update(
                events_dropped=self.dropped,
                handoff_dropped=self.handoff_dropped,
                sinks=[s.fields() for s in self.writer.stats()],
            )
            self.writer.submit(stop_event)
        self.writer.close()

    def _log(self, action: str, message: str, **details: object) -> None:
        event = lifecycle_event(action, message, self.observer, time.time(), **self.extra,
                                **details)  # fmt: skip
        self.writer.submit(event)
