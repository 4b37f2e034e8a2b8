"""Event writer: JSON lines, community ID, bounded queue with counted drops, sink errors."""

from __future__ import annotations

import io
import itertools
import threading
import time
from pathlib import Path

import orjson
import pytest

from portguard.core.events.lines import LineBlock, LineRenderer, decision_builder
from portguard.core.events.record import DecisionRecord, Event, connection_event
from portguard.log.sinks import Sink, file_sink, prepare, render_line
from portguard.log.writer import FLUSH_EVERY, Channel, EventWriter
from tests.events import NOW, OBSERVER
from tests.unit.test_ecs_schema import events as every_event

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


def test_sinks_write_the_fields_in_the_order_the_event_has() -> None:
    stream = io.BytesIO()
    Sink("memory", stream, owned=False).write(
        prepare({"@timestamp": "t", "event": {"a": 1}, "source": {}})
    )
    assert list(orjson.loads(stream.getvalue())) == ["@timestamp", "event", "source"]


@pytest.mark.parametrize(("name", "event"), list(every_event()))
def test_every_event_is_built_with_the_leading_fields_first(name: str, event: Event) -> None:
    """Nothing re-orders an event on its way out: each is built in reading order."""
    leading = ["@timestamp", "ecs", "log", "message", "event"]
    present = [key for key in leading if key in event]
    assert list(event)[: len(present)] == present, name


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
    broken, fine = writer.stats()
    assert (broken.submitted, broken.written, broken.dropped) == (1, 0, 1)
    assert (fine.submitted, fine.written, fine.dropped) == (1, 1, 0)
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


def all_and_denies() -> tuple[EventWriter, io.BytesIO, io.BytesIO]:
    """A started writer with a sink for everything and one for warnings and worse."""
    everything, denies = io.BytesIO(), io.BytesIO()
    writer = EventWriter(
        [Channel(Sink("all", everything, False), level="debug"),
         Channel(Sink("denies", denies, False), level="warning")]
    )  # fmt: skip
    writer.start()
    return writer, everything, denies


def test_each_sink_takes_events_from_its_minimum_level_up() -> None:
    writer, everything, denies = all_and_denies()
    for level in ("debug", "info", "notice", "warning", "error"):
        writer.submit({**EVENT, "log": {"level": level}})
    writer.submit(dict(EVENT))  # no log.level: info
    writer.close()
    levels = [orjson.loads(line).get("log", {}).get("level") for line in denies.getvalue().split()]
    assert levels == ["warning", "error"]
    assert len(everything.getvalue().splitlines()) == 6
    assert [s.submitted for s in writer.stats()] == [6, 2]


def test_a_stuck_sink_does_not_hold_up_the_others() -> None:
    gate, good = threading.Event(), io.BytesIO()
    writer = EventWriter([Sink("stuck", BlockedStream(gate), False), Sink("good", good, False)],
                         capacity=5)  # fmt: skip
    writer.start()
    for _ in range(3):
        writer.submit(dict(EVENT))
    deadline = time.monotonic() + 5
    while len(good.getvalue().splitlines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(good.getvalue().splitlines()) == 3  # while "stuck" still holds its first one
    gate.set()
    writer.close()


class Outage:
    """A sink that fails its first `failures` writes, then works."""

    name = "outage"

    def __init__(self, failures: int) -> None:
        self.failures, self.lines = failures, 0

    def write(self, event: dict[str, object]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionRefusedError("collector down")
        self.lines += 1

    def flush(self) -> None: ...

    def reopen(self) -> None: ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...


def test_an_outage_is_reported_once_down_and_once_up() -> None:
    sink = Outage(failures=3)
    writer = EventWriter([sink])
    states: list[tuple[str, bool, str]] = []
    writer.on_sink_state = lambda name, up, reason: states.append((name, up, reason))
    writer.start()
    for _ in range(5):
        writer.submit(dict(EVENT))
    writer.close()
    assert states == [("outage", False, "collector down"), ("outage", True, "")]
    (stats,) = writer.stats()
    assert (stats.submitted, stats.written, stats.dropped, sink.lines) == (5, 2, 3, 2)


class Hanging:
    """A sink whose write blocks until interrupted (a collector that accepts nothing)."""

    name = "hanging"

    def __init__(self) -> None:
        self.released = threading.Event()

    def write(self, event: dict[str, object]) -> None:
        if not self.released.wait(30):
            return
        raise OSError("interrupted")

    def reopen(self) -> None: ...

    def interrupt(self) -> None:
        self.released.set()

    def close(self) -> None: ...


def test_close_gives_up_on_a_hanging_sink_and_counts_what_it_held() -> None:
    sink = Hanging()
    writer = EventWriter([sink], capacity=100)
    writer.start()
    for _ in range(50):
        writer.submit(dict(EVENT))
    started = time.monotonic()
    writer.close(timeout=0.5)
    assert time.monotonic() - started < 3
    (stats,) = writer.stats()
    assert (stats.submitted, stats.written, stats.dropped) == (50, 0, 50)


def test_settle_waits_until_every_event_is_written_or_dropped() -> None:
    gate = threading.Event()
    writer = EventWriter([Sink("slow", BlockedStream(gate), False)], capacity=100)
    writer.start()
    for _ in range(20):
        writer.submit(dict(EVENT))
    assert not writer.settle(0.1)  # the sink holds them
    gate.set()
    assert writer.settle(5.0)
    (stats,) = writer.stats()
    assert (stats.submitted, stats.written, stats.dropped) == (20, 20, 0)
    writer.close()


def test_lifecycle_events_get_through_a_full_buffer() -> None:
    gate = threading.Event()
    stream = BlockedStream(gate)
    writer = EventWriter([Sink("stuck", stream, owned=False)], capacity=10)
    writer.start()
    for _ in range(50):
        writer.submit(dict(EVENT))
    lifecycle = {"event": {"action": "sink-recovered", "dataset": "portguard.lifecycle"}}
    assert writer.submit(lifecycle)  # the reserve takes it
    assert not writer.submit(dict(EVENT))  # but not a decision
    gate.set()
    writer.close()
    actions = [orjson.loads(line)["event"]["action"] for line in stream.getvalue().splitlines()]
    assert actions[-1] == "sink-recovered" and len(actions) == writer.written


def test_a_stuck_output_is_closed_first_so_the_counts_are_final() -> None:
    stuck, good = Hanging(), io.BytesIO()
    writer = EventWriter([stuck, Sink("good", good, False)], capacity=100)
    writer.start()
    for _ in range(30):
        writer.submit(dict(EVENT))
    assert not writer.settle(0.3)
    writer.close_unsettled(timeout=0.5)
    hanging, _fine = writer.stats()
    assert hanging.submitted == hanging.written + hanging.dropped == 30
    assert writer.submit(dict(EVENT))  # the stop event: the closed output skips it
    writer.close()
    assert writer.stats()[0].submitted == 30 and writer.stats()[1].written == 31


def test_a_reopen_never_waits_on_a_full_queue(tmp_path: Path) -> None:
    gate = threading.Event()
    writer = EventWriter([Sink("stuck", BlockedStream(gate), False)], capacity=5)
    writer.start()
    for _ in range(20):
        writer.submit(dict(EVENT))
    started = time.monotonic()
    writer.reopen()
    assert time.monotonic() - started < 0.1
    gate.set()
    writer.close()


class Batching:
    """A sink that keeps lines until `flush` (as a stream syslog sink does); its flush fails
    while `down`."""

    name = "batching"

    def __init__(self) -> None:
        self.pending = 0
        self.flushed: list[int] = []
        self.down = False

    def write(self, event: dict[str, object]) -> None:
        self.pending += 1

    def flush(self) -> None:
        pending, self.pending = self.pending, 0
        if self.down:
            raise OSError("collector gone")
        self.flushed.append(pending)

    def reopen(self) -> None: ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...


def test_a_long_run_is_flushed_and_counted_every_flush_every_events() -> None:
    sink = Batching()
    writer = EventWriter([sink], capacity=10_000)
    for _ in range(2 * FLUSH_EVERY + 10):  # queued before the thread starts: one run
        writer.submit(dict(EVENT))
    writer.start()
    writer.close()
    assert sink.flushed == [FLUSH_EVERY, FLUSH_EVERY, 10]
    (stats,) = writer.stats()
    total = 2 * FLUSH_EVERY + 10
    assert (stats.submitted, stats.written, stats.dropped) == (total, total, 0)


def test_a_run_whose_flush_fails_is_counted_dropped_whole() -> None:
    sink = Batching()
    sink.down = True
    writer = EventWriter([sink], capacity=10_000)
    for _ in range(10):
        writer.submit(dict(EVENT))
    writer.start()
    writer.close()
    (stats,) = writer.stats()
    assert (stats.submitted, stats.written, stats.dropped, sink.flushed) == (10, 0, 10, [])


def test_submit_many_keeps_order_levels_and_counts() -> None:
    writer, everything, denies = all_and_denies()
    batch = [{**EVENT, "log": {"level": level}, "source": {"ip": "100.64.10.10", "port": port}}
             for port, level in enumerate(["info", "warning", "debug", "error"] * 25)]  # fmt: skip
    assert writer.submit_many(batch)
    assert writer.submit_many([])
    writer.close()
    ports = [orjson.loads(line)["source"]["port"] for line in everything.getvalue().split()]
    assert ports == list(range(100))
    assert len(denies.getvalue().splitlines()) == 50
    assert [(s.submitted, s.written, s.dropped) for s in writer.stats()] == [
        (100, 100, 0),
        (50, 50, 0),
    ]


def test_submit_many_into_a_full_queue_drops_and_counts_like_submit() -> None:
    gate = threading.Event()
    stream = BlockedStream(gate)
    writer = EventWriter([Sink("stuck", stream, owned=False)], capacity=10)
    writer.start()
    assert not writer.submit_many([dict(EVENT) for _ in range(1000)])
    lifecycle = {"event": {"action": "sink-recovered", "dataset": "portguard.lifecycle"}}
    assert writer.submit_many([lifecycle])  # the reserve takes it, as for submit
    gate.set()
    writer.close()
    lines = stream.getvalue().splitlines()
    assert writer.written == len(lines) and writer.written + writer.dropped == 1001
    assert 11 <= writer.written <= 13  # the queue (10), the one the thread holds, the reserve


def test_rendered_events_are_written_filtered_and_counted_like_dicts() -> None:
    """A rendered event's level picks the sinks; a hanging sink's rendered events are counted
    dropped at close, like dicts."""
    writer, everything, denies = all_and_denies()
    renderer = LineRenderer(OBSERVER)
    allowed, denied = (renderer.decision(record(action)) for action in ("allow", "reject"))
    assert writer.submit_many([allowed, denied]) and writer.submit(allowed)
    writer.close()
    assert everything.getvalue() == b"".join(r.line + b"\n" for r in (allowed, denied, allowed))
    assert denies.getvalue() == denied.line + b"\n"
    hanging = EventWriter([Hanging()], capacity=100)
    hanging.start()
    hanging.submit_many([allowed] * 20)
    hanging.close(timeout=0.2)
    (stats,) = hanging.stats()
    assert (stats.submitted, stats.written, stats.dropped) == (20, 0, 20)


def test_ecs_only_tells_whether_every_output_writes_ecs() -> None:
    ecs = Sink("a", io.BytesIO(), owned=False)
    assert EventWriter([ecs]).ecs_only and EventWriter([]).ecs_only
    assert not EventWriter([ecs, Sink("b", io.BytesIO(), owned=False, fmt="cef")]).ecs_only


def record(action: str) -> DecisionRecord:
    return DecisionRecord(NOW, 4, 0x64400A0A, 0xC6336419, 40312, 25, "outbound", action, "r1",
                          "10-isp.toml", "", "matched", "v1", "1", None)  # fmt: skip


def line_block(actions: list[str]) -> LineBlock:
    """A block of decision lines, as io/decisionlines.py makes them (here by LineRenderer)."""
    renderer = LineRenderer(OBSERVER)
    found = [record(action)._replace(sport=1000 + i) for i, action in enumerate(actions)]
    rendered = [renderer.decision(r) for r in found]
    ends = list(itertools.accumulate(len(r.line) + 1 for r in rendered))
    return LineBlock(b"".join(r.line + b"\n" for r in rendered), ends,
                     [r.level for r in rendered], "reject" in actions,
                     decision_builder(lambda: found, OBSERVER))  # fmt: skip


class CountingStream(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes += 1
        return super().write(data)


def test_a_block_is_written_whole_and_counted_as_its_events() -> None:
    stream = CountingStream()
    writer = EventWriter([Sink("file", stream, owned=False)])
    writer.start()
    block = line_block(["allow"] * 5)
    assert writer.submit_many([block])
    writer.close()
    assert stream.getvalue() == block.data and stream.writes == 1
    (stats,) = writer.stats()
    assert (stats.submitted, stats.written, stats.dropped) == (5, 5, 0)


def test_outputs_that_cannot_take_a_block_whole_get_its_events() -> None:
    """Below the block's least severe level, or with a prefix on each line: event by event."""
    writer, everything, denies = all_and_denies()
    prefixed = io.BytesIO()
    writer.channels.append(Channel(Sink("journal", prefixed, False, prefix=True)))
    writer.channels[-1].start()
    block = line_block(["allow", "reject", "allow", "reject"])
    assert writer.submit_many([block])
    writer.close()
    events = block.events()
    assert everything.getvalue() == block.data
    assert denies.getvalue() == b"".join(e.line + b"\n" for e in events if e.level == "warning")
    assert prefixed.getvalue().splitlines() == [
        b"<6>" + events[0].line,
        b"<4>" + events[1].line,
        b"<6>" + events[2].line,
        b"<4>" + events[3].line,
    ]
    assert [s.submitted for s in writer.stats()] == [4, 2, 4]
    assert events[1].event() == connection_event(record("reject")._replace(sport=1001), OBSERVER)


def test_blocks_that_do_not_fit_are_queued_as_far_as_they_fit_and_every_event_counted() -> None:
    gate = threading.Event()
    writer = EventWriter([Sink("stuck", BlockedStream(gate), owned=False)], capacity=10)
    writer.start()
    for _ in range(20):
        writer.submit_many([line_block(["allow"] * 4)])
    hanging = EventWriter([Hanging()], capacity=100)
    hanging.start()
    hanging.submit_many([line_block(["allow"] * 3)] * 10)
    gate.set()
    writer.close()
    hanging.close(timeout=0.2)
    (stats,) = writer.stats()
    assert stats.submitted == 80 and stats.written + stats.dropped == 80
    assert 10 <= stats.written <= 14  # the buffer's 10, and the block the thread held
    (held,) = hanging.stats()
    assert (held.submitted, held.written, held.dropped) == (30, 0, 30)


def test_a_block_bigger_than_the_buffer_is_queued_as_far_as_it_fits() -> None:
    gate = threading.Event()
    writer = EventWriter([Sink("stuck", BlockedStream(gate), owned=False)], capacity=50)
    writer.start()
    assert not writer.submit_many([line_block(["allow"] * 64)])
    gate.set()
    writer.close()
    (stats,) = writer.stats()
    assert (stats.submitted, stats.written, stats.dropped) == (64, 50, 14)
