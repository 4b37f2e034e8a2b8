"""The event writer: a bounded queue in front of the sinks, drained by one thread.

The packet loop only calls `submit`, which never blocks: when the queue is full the event is
dropped and counted, so a slow or broken sink can never delay a verdict. The writer thread
renders events through a structlog processor chain (community ID, orjson) into each sink.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson
import structlog

from portguard.decisionlog import formats
from portguard.decisionlog.record import Event

_STOP = object()
_REOPEN = object()


def add_community_id(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: network.community_id for decision events (Community ID v1)."""
    return formats.with_community_id(dict(event_dict))


LEADING_FIELDS = ("@timestamp", "ecs", "log", "message", "event")


def order_fields(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: @timestamp, ecs, log, message and event first, as people read them."""
    leading = {key: event_dict[key] for key in LEADING_FIELDS if key in event_dict}
    return leading | {k: v for k, v in event_dict.items() if k not in leading}


def render_line(event: Event) -> bytes:
    """The exact bytes a sink writes for one event (without the newline); used by tests."""
    return formats.render(event, "ecs")


class EventSink(Protocol):
    name: str
    errors: int

    def write(self, event: Event) -> None: ...

    def reopen(self) -> None: ...

    def close(self) -> None: ...


def renderer(fmt: str) -> Callable[[Any, str, MutableMapping[str, Any]], str | bytes]:
    """structlog processor: the last of a sink's chain, rendering its format (formats.py)."""
    if fmt not in formats.FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (known: {', '.join(formats.FORMATS)})")
    if fmt == "ecs":
        return structlog.processors.JSONRenderer(orjson.dumps)

    def render(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> bytes:
        return formats.render(dict(event_dict), fmt)

    return render


class Sink:
    """One output: a binary stream written one line per event, in the sink's format."""

    def __init__(
        self, name: str, stream: BinaryIO, owned: bool, fmt: str = "ecs", path: Path | None = None
    ) -> None:
        self.name = name
        self.format = fmt
        self.owned = owned
        self.path = path  # a file sink: reopened by name after log rotation
        self.errors = 0
        self._attach(stream)

    def _attach(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.logger = structlog.wrap_logger(
            structlog.BytesLogger(stream),
            processors=[order_fields, add_community_id, renderer(self.format)],
        )

    def reopen(self) -> None:
        """After logrotate moved the file: continue in a new file of the same name."""
        if self.path is None:
            return
        try:
            fresh = open(self.path, "ab")  # noqa: SIM115 - closed by close() or the next reopen
        except OSError:
            self.errors += 1
            return
        old = self.stream
        self._attach(fresh)
        old.close()

    def write(self, event: Event) -> None:
        try:
            self.logger.msg(**event)
        except (OSError, ValueError):
            self.errors += 1

    def close(self) -> None:
        if self.owned:
            self.stream.close()


def stdout_sink(fmt: str = "ecs") -> Sink:
    return Sink("stdout", sys.stdout.buffer, owned=False, fmt=fmt)


def file_sink(path: Path, fmt: str = "ecs") -> Sink:
    path.parent.mkdir(parents=True, exist_ok=True)
    return Sink(f"file:{path}", open(path, "ab"), owned=True, fmt=fmt, path=path)


class EventWriter:
    """Bounded, non-blocking event queue with a writer thread."""

    def __init__(self, sinks: Sequence[EventSink], capacity: int = 65536) -> None:
        self.sinks: list[EventSink] = list(sinks)
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._drain, name="portguard-log", daemon=True)
        self.on_error: Callable[[BaseException], None] | None = None

    def start(self) -> None:
        self._thread.start()

    def submit(self, event: Event) -> bool:
        """Queue an event for the sinks; never blocks. False when it was dropped."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def reopen(self) -> None:
        """Reopen file sinks (SIGUSR1 after logrotate), in order with the events around it."""
        try:
            self._queue.put(_REOPEN, timeout=1.0)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread and close the sinks."""
        if self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                self.dropped += 1
            self._thread.join(timeout)
        for sink in self.sinks:
            sink.close()

    @property
    def sink_errors(self) -> int:
        return sum(sink.errors for sink in self.sinks)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if item is _REOPEN:
                for sink in self.sinks:
                    sink.reopen()
                continue
            assert isinstance(item, dict)
            event = formats.with_community_id(item)  # once for every sink
            for sink in self.sinks:
                sink.write(dict(event))  # each sink's processors may add fields
            self.written += 1
