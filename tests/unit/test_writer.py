"""Event writer: JSON lines, community ID, bounded queue with counted drops, sink errors."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import orjson

from portguard.decisionlog.writer import EventWriter, Sink, file_sink, render_line

EVENT = {
    "@timestamp": "2026-11-27T17:00:00.000000Z",
    "event": {"action": "reject"},
    "source": {"ip": "100.64.10.10", "port": 40312},
    "destination": {"ip": "198.51.100.25", "port": 25},
    "network": {"transport": "tcp"},
}


def test_community_id_matches_the_reference_value() -> None:
    # value from the Community ID spec's reference implementation for this tuple
    line = orjson.loads(render_line(EVENT))
    assert line["network"]["community_id"] == "1:OdycsWwxvNC2HezuIzlUEha8Xqw="
    assert "community_id" not in EVENT["network"]  # the caller's event is not changed


def test_sinks_write_the_leading_fields_first() -> None:
    stream = io.BytesIO()
    Sink("memory", stream, owned=False).write({"source": {}, "event": {"a": 1}, "@timestamp": "t"})
    assert list(orjson.loads(stream.getvalue())) == ["@timestamp", "event", "source"]


def test_events_without_addresses_render_unchanged() -> None:
    assert orjson.loads(render_line({"message": "hi"})) == {"message": "hi"}


def test_writer_writes_one_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "log" / "decisions.json"
    writer = EventWriter([file_sink(path)])
    writer.start()
    for port in range(100):
        writer.submit({**EVENT, "source": {"ip": "100.64.10.10", "port": port}})
    writer.close()
    lines = path.read_bytes().splitlines()
    assert len(lines) == 100 and writer.written == 100 and writer.dropped == 0
    assert [orjson.loads(line)["source"]["port"] for line in lines] == list(range(100))


class BlockedStream(io.BytesIO):
    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.gate.wait(10)
        return super().write(data)


def test_a_stuck_sink_drops_and_counts_never_blocks() -> None:
    gate = threading.Event()
    stream = BlockedStream(gate)
    writer = EventWriter([Sink("stuck", stream, owned=False)], capacity=10)
    writer.start()
    accepted = sum(writer.submit(dict(EVENT)) for _ in range(1000))
    assert writer.dropped == 1000 - accepted
    assert 10 <= accepted <= 12  # the queue plus the one the thread holds
    gate.set()
    writer.close()
    assert writer.written == accepted
    assert len(stream.getvalue().splitlines()) == accepted


class BrokenStream(io.BytesIO):
    def write(self, data: bytes) -> int:  # type: ignore[override]
        raise BrokenPipeError("reader went away")


def test_sink_errors_are_counted() -> None:
    good = io.BytesIO()
    writer = EventWriter([Sink("broken", BrokenStream(), False), Sink("good", good, False)])
    writer.start()
    writer.submit(dict(EVENT))
    writer.close()
    assert writer.sink_errors == 1
    assert len(good.getvalue().splitlines()) == 1


def test_file_sink_reopens_after_rotation_without_losing_a_line(tmp_path: Path) -> None:
    path = tmp_path / "decisions.json"
    writer = EventWriter([file_sink(path)])
    writer.start()
    for port in range(50):
        writer.submit({**EVENT, "source": {"ip": "100.64.10.10", "port": port}})
    path.rename(tmp_path / "decisions.json.1")  # what logrotate does
    writer.reopen()  # what SIGUSR1 asks for, queued after the 50 events
    for port in range(50, 100):
        writer.submit({**EVENT, "source": {"ip": "100.64.10.10", "port": port}})
    writer.close()
    old = (tmp_path / "decisions.json.1").read_bytes().splitlines()
    new = path.read_bytes().splitlines()
    ports = [orjson.loads(line)["source"]["port"] for line in old + new]
    assert ports == list(range(100)) and len(old) == 50
