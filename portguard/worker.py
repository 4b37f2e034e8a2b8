"""One worker: a kernel queue, the gate, the event writer and the select loop around them."""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from portguard.config import Config
from portguard.control import ControlServer
from portguard.decisionlog.record import Event, Observer, lifecycle_event
from portguard.decisionlog.syslog import SyslogSink
from portguard.decisionlog.writer import EventSink, EventWriter, file_sink, stdout_sink
from portguard.gate import Gate, Outcome, Verdict
from portguard.io import notify
from portguard.io.interfaces import WanInterfaces
from portguard.io.nfqueue import QueueReader
from portguard.io.queueflags import set_fail_open
from portguard.io.signals import SignalPipe
from portguard.policy import RuleSet, load_ruleset
from portguard.policyload import LoadResult, PolicyLoad, Reply

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
    def __init__(
        self,
        config: Config,
        queue_num: int,
        ruleset: RuleSet,
        observer: Observer,
        control: Path | None = None,
    ) -> None:
        self.config = config
        self.control = control
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
        self.loads = PolicyLoad(lambda: load_ruleset(self.config.rules.paths), signals.wake)
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

    def on_control(self, request: dict[str, Any], reply: Reply) -> None:
        """A control-socket request: `reload` answers once the new policy is in (or refused)."""
        command = request["command"]
        if command == "reload":
            self.loads.request(reply, reason="control")
        elif command == "ping":
            reply({"ok": True, "policy_version": self.gate.ruleset.version})
        else:
            reply({"ok": False, "errors": [f"unknown command {command!r}"]})

    def apply_load(self, result: LoadResult) -> None:
        """Swap in a freshly built policy, or keep the old one and say why."""
        old = self.gate.ruleset
        if result.ruleset is None:
            self._log(
                "reload-failed",
                "reload failed; the previous policy stays in force",
                errors=result.errors,
                policy_version=old.version,
                trigger=result.reason,
            )
            notify.ready(f"reload failed; policy {old.version} kept")
            answer: dict[str, Any] = {
                "ok": False,
                "errors": result.errors,
                "policy_version": old.version,
            }
        else:
            self.gate.ruleset = result.ruleset
            self._log(
                "reload",
                "policy reloaded",
                policy_version=result.ruleset.version,
                previous_version=old.version,
                trigger=result.reason,
            )
            notify.ready(f"policy {result.ruleset.version}")
            answer = {
                "ok": True,
                "policy_version": result.ruleset.version,
                "rules": len(result.ruleset.rules),
            }
        for reply in result.replies:
            reply(answer)

    def _loop(self, reader: QueueReader, signals: SignalPipe) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(reader.fileno(), selectors.EVENT_READ, reader.read)
            selector.register(signals.fileno(), selectors.EVENT_READ, signals.drain)
            control = self._control_server(selector)
            due = {"tick": time.monotonic() + TICK, "refresh": time.monotonic() + INTERFACE_REFRESH}
            try:
                while not signals.stop:
                    for key, _ in selector.select(timeout=TICK):
                        key.data()
                    self._between_packets(signals, reader, due)
            finally:
                if control is not None:
                    control.close()

    def _between_packets(
        self, signals: SignalPipe, reader: QueueReader, due: dict[str, float]
    ) -> None:
        """Reloads, results of background loads, and the periodic housekeeping."""
        if signals.take_reload():
            notify.reloading()
            self.loads.request(reason="sighup")
        loaded = self.loads.collect()
        if loaded is not None:
            self.apply_load(loaded)
        now = time.monotonic()
        if now >= due["tick"]:
            due["tick"] = now + TICK
            self._housekeeping(reader)
        if now >= due["refresh"]:
            due["refresh"] = now + INTERFACE_REFRESH
            self.wan.forget()

    def _control_server(self, selector: selectors.BaseSelector) -> ControlServer | None:
        if self.control is None:
            return None
        server = ControlServer(self.control, self.on_control)
        server.register(selector)
        return server

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
