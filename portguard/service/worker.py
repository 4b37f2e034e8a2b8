"""One worker: a kernel queue, the gate, the event writer and the select loop around them."""

from __future__ import annotations

import os
import selectors
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from portguard.config.model import Config
from portguard.core.errors import StartupError
from portguard.core.events.record import Event, Observer, lifecycle_event
from portguard.core.gate import Gate, Outcome, Verdict
from portguard.core.policy import RuleSet
from portguard.io import notify
from portguard.io.batchqueue import make_reader
from portguard.io.fastpath import make_fast_path
from portguard.io.interfaces import WanInterfaces
from portguard.io.nfqueue import QueueReader
from portguard.io.policyfiles import load_ruleset
from portguard.io.queueflags import set_fail_open
from portguard.io.signals import SignalPipe
from portguard.log.logprocess import LogProcess
from portguard.log.outputs import make_writer, open_sinks
from portguard.log.writer import EventQueue
from portguard.service.control import ControlServer
from portguard.service.denycache import NO_CACHE, NoCache, WorkerCache, worker_cache
from portguard.service.periodic import Periodic
from portguard.service.policyload import (
    PolicyLoad,
    Reply,
)
from portguard.service.policystate import is_handover, read_handover, save_resolution
from portguard.service.policyswap import PolicySwap
from portguard.service.quarantinestate import QuarantineKeeper
from portguard.service.reevaluate import Reevaluator
from portguard.service.status import DaemonFacts, collect, worker_section

TICK = 1.0  # seconds between housekeeping rounds (old drops forgotten, counters)
INTERFACE_REFRESH = 30.0  # seconds between forgetting cached interface names
CHORES = 0.002  # seconds between housekeeping rounds of the loop while only packets come
GIL_SWITCH_INTERVAL = 0.0005  # seconds (Python's default is 0.005)

Hook = Callable[[EventQueue], object] | None


class Worker(PolicySwap):
    def __init__(
        self,
        config: Config,
        queue_num: int,
        ruleset: RuleSet,
        observer: Observer,
        control: Path | None = None,
        primary: bool = True,
    ) -> None:
        self.config = config
        self.control = control
        # with several workers only the first (`primary`) does what concerns the whole network
        # namespace: re-evaluating the conntrack table, listening for flow ends
        self.primary = primary  # also rotates the deny cache
        self.reevaluates = primary and config.rules.reevaluate
        self.reports_flow_ends = primary and config.log.flow_end
        self.reevaluator: Reevaluator | None = None
        self.queue_num = queue_num
        self.observer = observer
        self.fail_open = config.queue.fail_mode == "open"
        id_prefix = f"{queue_num}-{int(time.time()):x}-"  # flow ids unique across restarts
        self.gate = Gate(ruleset, observer, id_prefix)
        self.quarantine = QuarantineKeeper(self.gate, config.daemon.state_dir, queue_num,
                                           config.queue.workers, observer, self._submit,
                                           self._log, lambda: self.cache.request())  # fmt: skip
        self.wan = WanInterfaces(config.network.wan)
        # allows the gate gave, answered again in C (io/fastpath.py; `[queue] fast_path`)
        self.fast = make_fast_path(self.gate, self.wan) if config.queue.fast_path else None
        self.writer: LogProcess | None = None
        self._reported = {"dropped": 0, "errors": 0}
        # systemd's watchdog, fed by the loop (a forked worker beats to its parent instead)
        self.heartbeat = notify.watchdog()
        self.policy_loaded = time.time()  # when the policy in force was loaded (status)
        self.reader: QueueReader | None = None
        # set by the daemon: with `facts` this worker answers `status` for the whole daemon
        # (workers = 1); with `private_control` its socket is the parent's line to it (status only)
        self.facts: DaemonFacts | None = None
        self.private_control = False
        # forked: the policy the supervisor built, to load next (see `adopt` in on_control)
        self._handover: Path | None = None
        self._handover_lock = threading.Lock()  # set by the loop, taken by the load thread
        self.control_server: ControlServer | None = None
        self.start_events: list[tuple[str, str, dict[str, object]]] = []  # logged after start
        self.cache_backend: str | None = None  # set by the daemon: the hook's deny cache
        self.cache: WorkerCache | NoCache = NO_CACHE

    def run(self, on_bound: Hook, on_stop: Hook) -> int:
        """Bind the queue, call `on_bound`, decide packets until SIGTERM, then clean up.

        `on_stop` (removing the hooks) runs on an orderly stop, or when start-up failed. When
        the loop dies of an error the hooks stay: the kernel then applies the fail mode, as it
        would after a crash, and the next start cleans up.
        """
        # background threads (loads, log) hand the GIL back to the packet loop often
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        writer = self.writer = self._start_log_process()
        self.cache = worker_cache(self.config, self.cache_backend, self.gate, writer, self._log,
                                  self.primary, self.private_control and self.control)  # fmt: skip
        if self.reevaluates:
            self.reevaluator = Reevaluator(writer.submit, self.observer)
        signals = SignalPipe()
        self.loads = PolicyLoad(self._load, signals.wake)
        fallback = Verdict.ACCEPT if self.fail_open else Verdict.DROP
        # a decision's record (or a malformed packet's event) to the log process, which
        # builds the event and applies flood control; sent once per batch of packets
        reader = self.reader = make_reader(self.queue_num, self.config.queue.max_len,
                                           self.decide, writer.add, fallback,
                                           on_events=writer.add_many, fast=self.fast,
                                           on_records=writer.add_records)  # fmt: skip
        deciding = False
        try:
            self.control_server = self._open_control()
            self._start(reader, on_bound)
            deciding = True
            self._loop(reader, signals, self.control_server)
        finally:
            self._stop(reader, signals, on_stop, orderly=signals.stop or not deciding,
                       deciding=deciding)  # fmt: skip
        return 0

    def _start(self, reader: QueueReader, on_bound: Hook) -> None:
        """Bind the queue, call `on_bound` (installing the hooks), say that we decide."""
        self.quarantine.load(time.time())  # before the first packet: kept across restarts
        self._bind(reader)
        assert self.writer is not None
        if on_bound is not None:
            on_bound(self.writer)
        self._log("start", f"portguard started on queue {self.queue_num}",
                  policy_version=self.gate.ruleset.version)  # fmt: skip
        for action, message, extra in self.start_events:  # e.g. resolve-fallback
            self._log(action, message, **extra)
        self._recheck_wan()
        notify.ready(f"deciding on queue {self.queue_num}")

    def _stop(
        self, reader: QueueReader, signals: SignalPipe, on_stop: Hook, orderly: bool, deciding: bool
    ) -> None:
        """Flush the flood summaries, remove the hooks when `orderly`, unbind, log the stop."""
        assert self.writer is not None
        notify.stopping()
        self.cache.stop()  # the kernel's hits so far, read before the hooks go
        self.writer.flush_floods()  # the flood summaries before the hooks' and stop events
        self._shut_down(reader, on_stop if orderly else None, drain=deciding)
        for closing in (self.control_server, signals):
            if closing is not None:
                closing.close()
        message = "portguard stopped" if orderly else "portguard failed; hooks kept"
        self.writer.close(self._event("stop", message, packets=reader.packets))

    def _start_log_process(self) -> LogProcess:
        """The outputs run in a process of their own (before the queue is bound: no packet
        waits for the fork)."""
        config, observer, queue_num = self.config, self.observer, self.queue_num
        for sink in open_sinks(config):  # fail here, with a clear message, on a bad output
            sink.close()
        process = LogProcess(lambda: make_writer(config, observer, queue=queue_num), observer,
                             flow_end=self.reports_flow_ends,
                             flood_window=config.log.flood_window, queue=queue_num)  # fmt: skip
        process.start()
        return process

    def _restart_log_process(self) -> None:
        """The log process died (killed, out of memory): say so on stderr (the journal), start
        a new one, and let the new one report what was lost meanwhile."""
        assert self.writer is not None
        lost = self.writer.dropped
        print(f"portguard: the log process of queue {self.queue_num} died; starting a new one "
              f"({lost} events not handed over so far)", file=sys.stderr, flush=True)  # fmt: skip
        self.writer.restart()  # the same object: every holder of its submit keeps working
        self._log("events-dropped", "the log process died and was restarted; events it held "
                  "were lost", events_dropped=lost)  # fmt: skip

    def _open_control(self) -> ControlServer | None:
        if self.control is None:
            return None
        try:
            return ControlServer(self.control, self.on_control, on_problem=self._log)
        except OSError as error:
            raise StartupError(f"cannot open the control socket {self.control}: {error}") from None

    def _bind(self, reader: QueueReader) -> None:
        try:
            reader.open()
            set_fail_open(reader.fileno(), self.queue_num, self.fail_open)
        except OSError as error:
            raise StartupError(f"cannot bind kernel queue {self.queue_num}: {error}") from None

    def _shut_down(self, reader: QueueReader, on_stop: Hook, drain: bool = True) -> None:
        """Remove the hooks (orderly stop), answer what is still queued, unbind."""
        try:
            if on_stop is not None and self.writer is not None:
                on_stop(self.writer)
                if drain:  # not after a failed start: the queue may not even be bound
                    reader.drain()  # SYNs queued before the hooks went get their verdicts
        finally:
            reader.close()

    def decide(self, data: bytes, indev: int, outdev: int) -> Outcome:
        known = self.wan.known  # is_wan, without a method call per interface
        outcome = self.gate.handle(data, known[indev], known[outdev], time.time())
        if self.fast is not None:
            self.fast.learn(outcome)
        if outcome.cache:  # before the verdict, with which the kernel adds the key
            self.cache.mark(outcome)
        return outcome

    def _load(self) -> RuleSet:
        """Runs in the load thread: unchanged list files and failing host names reuse what
        the policy in force has (it is read-only, so sharing it is safe). A forked worker
        never compiles: it loads what the supervisor built (or keeps its policy when nothing
        was handed over since)."""
        if self.private_control:
            with self._handover_lock:
                handover, self._handover = self._handover, None
            return self.gate.ruleset if handover is None else read_handover(handover)
        ruleset = load_ruleset(self.config.rules.paths, previous=self.gate.ruleset)
        try:
            save_resolution(self.config.daemon.state_dir, ruleset)
        except OSError as error:  # the policy is good all the same
            self._log("state-error", f"keeping the host resolution failed: {error}")
        return ruleset

    def on_control(self, request: dict[str, Any], reply: Reply) -> None:
        """A control-socket request: `reload` answers once the new policy is in (or refused)."""
        command = request["command"]
        if command == "status":
            reply(self.status())
        elif command == "reload" and self.private_control:
            reply({"ok": False, "errors": ["reload through the daemon's control socket"]})
        elif command == "adopt" and self.private_control:
            self._adopt(request, reply)
        elif command == "reload":
            self.loads.request(reply, reason="control")
        elif command.startswith("quarantine-"):  # list, add, release
            reply(self.quarantine.control(request))
        elif command == "ping":
            reply({"ok": True, "policy_version": self.gate.ruleset.version})
        else:
            reply({"ok": False, "errors": [f"unknown command {command!r}"]})

    def _adopt(self, request: dict[str, Any], reply: Reply) -> None:
        """The supervisor hands over the policy it built: only a hand-over file of its run-time
        directory is ever unpickled, whatever a member of the socket's group sends."""
        file = request.get("file")
        assert self.control is not None  # a private control socket
        if not isinstance(file, str) or not is_handover(self.control.parent, Path(file)):
            reply({"ok": False, "errors": ["adopt takes a hand-over file of the daemon's "
                                           "run-time directory"]})  # fmt: skip
            return
        with self._handover_lock:
            self._handover = Path(file)
        self.loads.request(reply, reason=str(request.get("trigger", "reload")))

    def status(self) -> dict[str, Any]:
        """This worker's counters; with `facts`, the whole daemon's status document."""
        fast = self.fast
        if fast is not None:
            fast.fold_hits()  # the hits it answered, into the gate's counts
        section = worker_section(self.gate, self.queue_num, self.policy_loaded, self.reader,
                                 self.writer, os.getpid(), self.cache.fields(),
                                 fast.answered if fast is not None else None)  # fmt: skip
        if self.facts is None:
            return {"ok": True, "worker": section}
        document = collect(self.facts, [section])
        if self.control_server is not None:
            document["control"] = self.control_server.stats.fields()
        return document

    def _loop(
        self, reader: QueueReader, signals: SignalPipe, control: ControlServer | None
    ) -> None:
        """Packets in bounded batches (QueueReader.read), then the housekeeping, whatever the
        load: a batch that ended on its bound means more may be waiting, so the next select
        only polls; signals, control requests, reloads and the watchdog are served between
        batches, never after the queue runs dry."""
        queue_fd, writer = reader.fileno(), self.writer
        assert writer is not None
        with selectors.DefaultSelector() as selector:
            selector.register(queue_fd, selectors.EVENT_READ, reader.read)
            selector.register(signals.fileno(), selectors.EVENT_READ, signals.drain)
            if control is not None:
                control.register(selector)
            jobs = self._periodic_jobs(reader, time.monotonic())
            more = False  # the last batch was full: packets may be waiting
            chores_due = 0.0
            while not signals.stop:
                now = time.monotonic()
                timeout = 0.0 if more else self.heartbeat.wait(now, TICK)
                timeout = max(0.0, min(timeout, writer.due - now))  # records waiting to go
                more = served = False
                for key, _ in selector.select(timeout):
                    if key.fd == queue_fd:
                        more = reader.read()
                    else:
                        key.data()
                        served = True  # a signal, a control request, a finished load
                now = time.monotonic()
                writer.flush_if_due(now)  # the records of some batches: one send
                if served or now >= chores_due:  # not after every small batch of packets
                    self._between_packets(signals, jobs)
                    chores_due = now + CHORES

    def _periodic_jobs(self, reader: QueueReader, start: float) -> list[Periodic]:
        """The housekeeping tick, forgetting interface names, re-resolving host names."""
        jobs = [
            Periodic(TICK, lambda: self._housekeeping(reader), start + TICK),
            Periodic(INTERFACE_REFRESH, self.wan.forget, start + INTERFACE_REFRESH),
        ]
        interval = self.config.rules.resolve_interval
        if interval:
            jobs.append(Periodic(interval, self._resolve_hosts, start + interval))
        return jobs

    def _between_packets(self, signals: SignalPipe, jobs: list[Periodic]) -> None:
        """Reloads, results of background loads, and the periodic jobs that are due."""
        self.heartbeat.beat(time.monotonic())  # only a turning loop gets here
        if signals.take_reopen() and self.writer is not None:
            self.writer.reopen()  # logrotate moved the log files
        if signals.take_reload():
            notify.reloading()
            self.loads.request(reason="sighup")
        self.loads.collect(self.apply_load)  # a finished load swapped in (or refused)
        if self.gate.detected:  # a detector's alert (and quarantine): log it, keep it
            self.quarantine.report()
        now = time.monotonic()
        for job in jobs:
            job.run_if_due(now)

    def _recheck_wan(self) -> None:
        """A [network] wan name that does not exist (yet: ppp0): wan-missing / wan-found."""
        for action, message, names in self.wan.recheck():
            self._log(action, message, interfaces=names)

    def _housekeeping(self, reader: QueueReader) -> None:
        self.gate.forget_drops(time.time())
        if self.fast is not None:
            self.fast.fold_hits()
        self.cache.report()  # the kernel's hits read meanwhile (the first: starts its thread)
        self.quarantine.tick(time.time())  # expiry; the other workers' quarantines
        self._recheck_wan()
        for full in self.gate.limiter.housekeeping(time.time()):  # prune; limit-table-full
            self._log("limit-table-full", full.message, **full.fields())
        if self.control_server is not None:
            self.control_server.sweep()  # idle control clients, a paused listener
        assert self.writer is not None
        self.writer.report_drops()
        self.writer.read_stats()  # keep the newest counters (the socket holds only a few)
        if not self.writer.alive():
            self._restart_log_process()
        errors = reader.errors + reader.verdict_errors
        if errors != self._reported["errors"]:
            self._reported["errors"] = errors
            self._log("packet-error", f"deciding a packet failed: {reader.last_error!r}",
                      packet_errors=errors)  # fmt: skip

    def _log(self, action: str, message: str, **extra: object) -> None:
        self._submit(self._event(action, message, **extra))

    def _submit(self, event: Event) -> None:
        if self.writer is not None:
            self.writer.submit(event)

    def _event(self, action: str, message: str, **extra: object) -> Event:
        return lifecycle_event(action, message, self.observer, time.time(), queue=self.queue_num,
                               **extra)  # fmt: skip
