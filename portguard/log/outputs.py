"""The configured log outputs: a sink per entry of `[log] outputs`, and the writer feeding them.

`make_writer` builds the writer of a worker's log process and the supervisor's own; a sink
going down or coming back is itself logged, into every sink (`sink_state_logger`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from portguard.config.model import Config, Output
from portguard.core.errors import StartupError
from portguard.core.events.record import Observer, lifecycle_event
from portguard.log import syslog
from portguard.log.sinks import EventSink, file_sink, stdout_sink
from portguard.log.syslogtarget import TlsSettings
from portguard.log.writer import Channel, EventWriter


def make_sink(output: Output) -> EventSink:
    if output.type == "file" and output.path is not None:
        return file_sink(Path(output.path), output.format, output.page_cache << 20)
    if output.type == "syslog" and output.address is not None:
        return syslog.SyslogSink(output.address, output.format, tls_settings(output))
    return stdout_sink(output.format, output.prefix)


def tls_settings(output: Output) -> TlsSettings | None:
    if output.address is None or not output.address.startswith("tls://"):
        return None
    return TlsSettings(output.ca, output.cert, output.key, output.server_name)


def open_sinks(config: Config) -> list[EventSink]:
    try:
        return [make_sink(output) for output in config.log.outputs]
    except (OSError, ValueError) as error:  # a file that cannot be opened, a bad CA file
        raise StartupError(f"cannot open a log output: {error}") from None


def make_writer(config: Config, observer: Observer | None = None, **extra: object) -> EventWriter:
    """The writer for the configured outputs; with an observer, a sink going down or coming
    back is itself logged (into every sink: the one that was down gets it once it is back)."""
    sinks = open_sinks(config)
    writer = EventWriter(
        [Channel(s, o.buffer, o.level) for s, o in zip(sinks, config.log.outputs, strict=True)]
    )
    if observer is not None:
        writer.on_sink_state = sink_state_logger(writer, observer, extra)
    writer.start()
    return writer


def sink_state_logger(
    writer: EventWriter, observer: Observer, extra: dict[str, object]
) -> Callable[[str, bool, str], None]:
    def logged(name: str, up: bool, reason: str) -> None:
        stats = {s.name: s.fields() for s in writer.stats()}.get(name, {})
        if up:
            message = f"log output {name} works again"
            event = lifecycle_event("sink-recovered", message, observer, time.time(),
                                    sink=stats, **extra)  # fmt: skip
        else:
            message = f"log output {name} failed: {reason}"
            event = lifecycle_event("sink-error", message, observer, time.time(),
                                    sink=stats, error=reason, **extra)  # fmt: skip
        writer.submit(event)

    return logged
