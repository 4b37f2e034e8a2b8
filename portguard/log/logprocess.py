"""The outputs in a process of their own, so rendering and writing never take the packet
loop's interpreter lock.

Threads cannot do this in CPython: while a sink thread renders, the packet loop waits for the
GIL after every system call (the "convoy effect"), and decisions fell to a quarter of their
rate under a stream of events. So a worker forks one log process before it binds its queue.
The packet loop hands over a decision as a record of plain values (handoff.py: a marshalled
tuple, well under a µs), collects a batch of them (`add`) and writes the batch with one
`send`, without waiting, into a unix stream socket with a large buffer (`flush`, after each
batch of packets); when the buffer is full the batch is dropped and counted ("handoff"
drops, one per record). Other threads `submit` (sent at once, after what was collected).
The log process (logloop.py) reads the frames, builds each decision's event once (with its
own timestamp cache), applies flood control (`[log] flood_window`), and feeds the writer (one
bounded queue and thread per output, writer.py); it reports drops as `events-dropped` events
and writes the stop event last, with the final counters.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from portguard.core.denycache import KernelHits
from portguard.core.events.record import Event, Loggable, Observer
from portguard.log import handoff
from portguard.log.logloop import READ_SIZE, Outputs, run_outputs
from portguard.log.writer import EventWriter

SEND_BUFFER = 8 << 20  # bytes the packet loop may have waiting for the log process
BATCH_FRAMES = 64  # records and events the packet loop collects at most before it sends them
HANDOVER_DELAY = 0.005  # seconds a collected record waits at most for more (`due`)
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
        self._pending = b""  # the rest of a message the socket took only in part
        self._batch = handoff.Batch()  # what the packet loop collected, not sent yet (`add`)
        self.due = float("inf")  # monotonic time the batch must be sent by (`flush_if_due`)
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
        """Hand a decision record or an event over now (after what `add` collected); never
        blocks. False when it had to be dropped."""
        message = handoff.loggable_frame(logged)
        with self._lock:
            self._flush()
            if self._send(message):
                return True
            self.dropped += 1
        return False

    def add(self, logged: Loggable) -> None:
        """The packet loop's hand-over: collected until BATCH_FRAMES are there or the first
        waited HANDOVER_DELAY (`flush_if_due`), so a send carries many decisions even at a low
        rate (a send wakes the log process: it costs more than deciding); never blocks."""
        with self._lock:
            if not self._batch.count:
                self.due = time.monotonic() + HANDOVER_DELAY
            self._batch.add(logged)
            if self._batch.count >= BATCH_FRAMES:
                self._flush()

    def add_many(self, logged: list[Loggable]) -> None:
        """`add` for each, in order, with one lock (a batch of packets' records)."""
        due = time.monotonic() + HANDOVER_DELAY
        with self._lock:
            batch = self._batch
            for one in logged:
                if not batch.count:  # the first of a batch: it waits at most the delay
                    self.due = due
                batch.add(one)
                if batch.count >= BATCH_FRAMES:
                    self._flush()

    def add_records(self, payload: bytes, count: int) -> None:
        """`count` decision records already marshalled as an ``r`` frame's payload (the fast
        path's: io/fastpath.py), collected like `add_many`'s."""
        with self._lock:
            if not self._batch.count:
                self.due = time.monotonic() + HANDOVER_DELAY
            self._batch.add_records(payload, count)
            if self._batch.count >= BATCH_FRAMES:
                self._flush()

    def flush_if_due(self, now: float) -> None:
        """Send the batch once its first record has waited HANDOVER_DELAY (`now`: monotonic)."""
        if now >= self.due:
            self.flush()

    def flush(self) -> None:
        """Send what `add` collected: all of it, or none of it dropped and counted."""
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        self.due = float("inf")
        data, count = self._batch.take()
        if data and not self._send(data):
            self.dropped += count

    def submit_kernel_hits(self, found: list[KernelHits]) -> None:
        """The deny cache's hits of one generation, for flood control; never blocks (a
        frame that does not fit is dropped and counted)."""
        with self._lock:
            self._flush()
            for hits in found:
                if not self._send(handoff.kernel_hits_frame(hits)):
                    self.dropped += 1

    def reopen(self) -> None:
        with self._lock:
            self._flush()
            self._send(handoff.frame(handoff.REOPEN))

    def flush_floods(self) -> None:
        """Close every flood-control window now (at stop: the summaries before the last
        lifecycle events)."""
        with self._lock:
            self._flush()
            self._send(handoff.frame(handoff.FLUSH))

    def report_drops(self) -> None:
        """Tell the log process about handoff drops (call it now and then, e.g. every second)."""
        with self._lock:
            self._flush()
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
            batch, _count = self._batch.take()
            self._sock.sendall(self._pending + batch + self._drops() + message)
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
