"""The log process's side: frames from the worker in, each event built once, flood control,
the writer, drop reports and the stop event with the final counters (see logprocess.py)."""

from __future__ import annotations

import contextlib
import functools
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from portguard.core.events.flowend import EndedFlow, flow_end_event
from portguard.core.events.lines import LineBlock, LogItem, Queued, RenderedEvent
from portguard.core.events.record import Observer, Timestamps, lifecycle_event
from portguard.io.ctevents import FlowEndError, FlowEndListener, enable_accounting
from portguard.io.ctparse import FlowEndLines
from portguard.io.decisionlines import DecisionLines
from portguard.io.heap import fewer_collections
from portguard.log import handoff
from portguard.log.eventflow import EventFlow
from portguard.log.writer import EventWriter

READ_SIZE = 1 << 20
REPORT_INTERVAL = 1.0  # seconds between checks for new drops
SETTLE = 5.0  # seconds the outputs get to catch up before the stop event is counted
GATHER = 0.01  # seconds the log process lets events gather in its socket between reads
FLOW_END_READS = 4  # recvmmsg reads of conntrack reports (64 each) a turn of the loop takes at most
SWITCH_INTERVAL = 0.005  # Python's default: fewer thread switches between reader and sinks


def run_outputs(sock: socket.socket, make_outputs: Callable[[], Outputs]) -> int:
    """The log process: lines in, events out, until the stop event or the worker is gone."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)  # the worker decides when logging ends
    signal.set_wakeup_fd(-1)
    sys.setswitchinterval(SWITCH_INTERVAL)  # the worker's short interval suits a packet loop
    outputs = make_outputs()
    fewer_collections()  # what exists now lives as long as the process
    buffer = b""
    next_report = time.monotonic() + REPORT_INTERVAL
    while not outputs.stopped:
        flow_ends = outputs.flow_ends
        watched = [sock.fileno()] if flow_ends is None else [sock.fileno(), flow_ends.fileno()]
        readable, _, _ = select.select(watched, [], [], REPORT_INTERVAL)
        more = False  # a read came back full: more is waiting
        if flow_ends is not None and flow_ends.fileno() in readable:
            more = outputs.read_flow_ends()
        if sock.fileno() in readable:
            data = sock.recv(READ_SIZE)
            if not data:
                break  # the worker is gone
            frames, buffer = handoff.split_frames(buffer + data)
            for message in frames:
                outputs.handle(message)
            more = more or len(data) == READ_SIZE
        if readable and not more:
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
        # each event built once, flood control (window 0: every deny is logged)
        self.events = EventFlow(observer, flood_window, lines=writer.ecs_only)
        # a run of records rendered at once in C (io/decisionlines.py), when lines are
        self.frames = DecisionLines(observer) if writer.ecs_only else None
        self.handoff_dropped = 0
        self.stopped = False
        self._reported = 0
        self.flow_ends: FlowEndListener | None = None
        self._flow_ends_lost = 0
        self._flow_stamps = Timestamps()  # the flow-end events' own cache
        self._ended: list[Queued] = []  # flow-end events of the read going on

    def listen_for_flow_ends(self) -> None:
        """Flow-end events from conntrack DESTROY (needs accounting: turned on here)."""
        problems = enable_accounting()
        for setting, reason in problems.items():
            self._log("flow-end-degraded", f"cannot set {setting}: {reason}; flow-end events "
                      "lack packet and byte counts or times", setting=setting)  # fmt: skip
        rendered = FlowEndLines(self.observer) if self.events.lines is not None else None
        if rendered is not None and rendered.available:  # parsed and rendered in C
            listener = FlowEndListener(self._flow_rendered, parse=rendered, many=rendered.many)
        else:
            listener = FlowEndListener(self._flow_ended)
        try:
            listener.open()  # read by run_outputs' loop: no thread of its own
        except (FlowEndError, OSError) as error:
            self._log("flow-end-failed", f"no flow-end events: {error}", error=str(error))
            return
        self.flow_ends = listener

    def _flow_rendered(self, event: RenderedEvent | LineBlock) -> None:
        """A report (or a read's reports) of `read_flow_ends`, rendered in C: written with
        the others of the read (`self._ended` is replaced each read, so no bound `append` of
        it may be kept)."""
        self._ended.append(event)

    def _flow_ended(self, ended: EndedFlow) -> None:
        """A report of `read_flow_ends`: its event, written with the others of the read."""
        lines = self.events.lines
        if lines is not None:
            self._ended.append(lines.flow_end(ended, time.time()))
            return
        self._ended.append(flow_end_event(ended, self.observer, time.time(),
                                          stamps=self._flow_stamps))  # fmt: skip

    def read_flow_ends(self) -> bool:
        """The conntrack reports waiting (at most FLOW_END_READS reads) as events; True when
        it stopped at that bound (more may wait)."""
        if self.flow_ends is None:
            return False
        more = self.flow_ends.read_waiting(FLOW_END_READS) >= FLOW_END_READS
        ended, self._ended = self._ended, []
        self._submit(ended)
        return more

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
        if kind == handoff.RECORDS:
            block = self._block(payload)
            if block is not None:
                self.writer.submit_many([block])
                return
            decision, events = self.events.decision, list[LogItem]()
            for record in handoff.records_of(payload):
                events += decision(record)
            self._submit(events)
        elif kind == handoff.DECISION:
            self._submit(self.events.decision(handoff.decision_of(payload)))
        elif kind == handoff.EVENT:
            self._submit(self.events.admit(orjson.loads(payload), time.time()))
        elif kind == handoff.KERNEL_HITS:
            self._submit(self.events.kernel_hits(handoff.kernel_hits_of(payload)))
        elif kind == handoff.REOPEN:
            self.writer.reopen()
        elif kind == handoff.DROPS:
            self.handoff_dropped = max(self.handoff_dropped, int(payload or b"0"))
        elif kind == handoff.FLUSH:
            self._flush_all_floods()
        elif kind == handoff.STOP:
            self.finish(orjson.loads(payload))

    def _block(self, payload: bytes) -> LineBlock | None:
        """An ``r`` frame's records rendered at once in C, where that gives exactly the events
        `EventFlow.decision` would: no flood-control window open, and none of them a deny
        while flood control is on (else None: each record goes through `EventFlow`)."""
        floods = self.events.floods
        if self.frames is None or (floods is not None and len(floods)):
            return None
        block = self.frames.render(payload, functools.partial(handoff.records_of, payload))
        if block is None or not len(block) or (floods is not None and block.denies):
            return None
        return block

    def _submit(self, events: Sequence[Queued]) -> None:
        if events:
            self.writer.submit_many(events)

    def flush_floods(self, now: float) -> None:
        """The summaries of the flood-control windows closed by `now` (once a second)."""
        self._submit(self.events.flush(now))

    def _flush_all_floods(self) -> None:
        self._submit(self.events.flush_all())

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
            self.flow_ends.close()
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
