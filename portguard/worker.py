"""One worker: a kernel queue, the gate, the event writer and the select loop around them."""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable
from pathlib import Path

from portguard.config import Config
from portguard.decisionlog.record import Event, Observer, lifecycle_event
from portguard.decisionlog.syslog import SyslogSink
from portguard.decisionlog.writer import EventSink, EventWriter, file_sink, stdout_sink
from portguard.errors import SourceError
from portguard.gate import Gate, Outcome, Verdict
from portguard.io import notify
from portguard.io.interfaces import WanInterfaces
from portguard.io.nfqueue import QueueReader
from portguard.io.queueflags import set_fail_open
from portguard.io.signals import SignalPipe
from portguard.policy import RuleSet, load_ruleset

TICK = 1.0  # seconds between housekeeping rounds (flow expiry, counters)
INTERFACE_REFRESH = 30.0  # seconds between forgetting cached interface names

Hook = Callable[[EventWriter], object] | None


def make_sinks(config: Config) -> list[EventSink]:
    sinks: list[EventSink] = []
    for output in config.log.outputs:
        if output.type == "stdout":
            sinks.append(stdout_sink())
        elif output.type == "file" and output.path is not None:
            sinks.append(file_sink(Path(output.path)))
        elif output.type == "syslog" and output.address is not None:
            sinks.append(SyslogSink(output.address))
    return sinks


def make_writer(config: Config) -> EventWriter:
    writer = EventWriter(make_sinks(config))
    writer.start()
    return writer


class Worker:
    def __init__(self, config: Config, queue_num: int, ruleset: RuleSet, observer: Observer):
        self.config = config
        self.queue_num = queue_num
        self.observer = observer
        self.fail_open = config.queue.fail_mode == "open"
        self.gate = Gate(ruleset, observer, self.fail_open)
        self.wan = WanInterfaces(config.network.wan)
        self.writer: EventWriter | None = None
        self._reported = {"dropped": 0, "errors": 0}

    def run(self, on_bound: Hook, on_stop: Hook) -> int:
        """Bind the queue, call `on_bound`, decide packets until SIGTERM, then clean up."""
        writer = self.writer = make_writer(self.config)
        signals = SignalPipe()
        fallback = Verdict.ACCEPT if self.fail_open else Verdict.DROP
        reader = QueueReader(
            self.queue_num, self.config.queue.max_len, self.decide, writer.submit, fallback
        )
        try:
            reader.open()
            set_fail_open(reader.fileno(), self.queue_num, self.fail_open)
            if on_bound is not None:
                on_bound(writer)
            self._log(
                "start",
                f"portguard started on queue {self.queue_num}",
                policy_version=self.gate.ruleset.version,
            )
            notify.ready(f"deciding on queue {self.queue_num}")
            self._loop(reader, signals)
        finally:
            notify.stopping()
            try:
                if on_stop is not None:
                    on_stop(writer)
            finally:
                reader.close()
                signals.close()
                self._log(
                    "stop",
                    "portguard stopped",
                    events_dropped=writer.dropped,
                    packets=reader.packets,
                )
                writer.close()
        return 0

    def decide(self, data: bytes, indev: int, outdev: int) -> Outcome:
        return self.gate.handle(data, self.wan.is_wan(indev), self.wan.is_wan(outdev), time.time())

    def reload(self) -> bool:
        """Load the rule files aside and swap them in; a bad policy keeps the old one."""
        notify.reloading()
        try:
            ruleset = load_ruleset(self.config.rules.paths)
        except SourceError as error:
            self._log(
                "reload-failed",
                "reload failed; the previous policy stays in force",
                errors=error.messages,
                policy_version=self.gate.ruleset.version,
            )
            notify.ready(f"reload failed; policy {self.gate.ruleset.version} kept")
            return False
        self.gate.ruleset = ruleset
        self._log("reload", "policy reloaded", policy_version=ruleset.version)
        notify.ready(f"policy {ruleset.version}")
        return True

    def _loop(self, reader: QueueReader, signals: SignalPipe) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(reader.fileno(), selectors.EVENT_READ, reader.read)
            selector.register(signals.fileno(), selectors.EVENT_READ, signals.drain)
            next_tick = time.monotonic() + TICK
            next_refresh = time.monotonic() + INTERFACE_REFRESH
            while not signals.stop:
                for key, _ in selector.select(timeout=TICK):
                    key.data()
                if signals.take_reload():
                    self.reload()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK
                    self._housekeeping(reader)
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + INTERFACE_REFRESH
                    self.wan.forget()

    def _housekeeping(self, reader: QueueReader) -> None:
        self.gate.flows.expire(time.time())
        assert self.writer is not None
        if self.writer.dropped != self._reported["dropped"]:
            self._reported["dropped"] = self.writer.dropped
            self._log(
                "events-dropped",
                "the event queue was full; events were dropped",
                events_dropped=self.writer.dropped,
            )
        errors = reader.errors + reader.verdict_errors
        if errors != self._reported["errors"]:
            self._reported["errors"] = errors
            self._log(
                "packet-error",
                f"deciding a packet failed: {reader.last_error!r}",
                packet_errors=errors,
            )

    def _log(self, action: str, message: str, **extra: object) -> None:
        if self.writer is not None:
            event: Event = lifecycle_event(
                action, message, self.observer, time.time(), queue=self.queue_num, **extra
            )
            self.writer.submit(event)
