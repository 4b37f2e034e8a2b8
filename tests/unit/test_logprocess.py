"""The log process: events cross a socket to a forked process that owns the outputs."""

from __future__ import annotations

import functools
import marshal
import os
import signal
import socket
import time
from pathlib import Path

import orjson
import pytest

from portguard.core.denycache import KernelHits
from portguard.core.events.flood import represented
from portguard.core.events.flowend import flow_end_event
from portguard.core.events.record import (
    DecisionRecord,
    Observer,
    connection_event,
    decision_record,
)
from portguard.core.policy.model import Action, Decision, Direction
from portguard.io.ctevents import FlowEndListener
from portguard.io.ctparse import parse_destroy
from portguard.log import handoff, logloop
from portguard.log.formats import render
from portguard.log.logloop import Outputs
from portguard.log.logprocess import BATCH_FRAMES, HANDOVER_DELAY, LogProcess
from portguard.log.sinks import file_sink, render_line
from portguard.log.writer import EventWriter
from tests.unit.test_ctevents_parse import V4_ALLOW_OUTBOUND

OBSERVER = Observer("gw1", "0.1.0")
NOW = 1795798800.123456


def event(port: int, padding: int = 0) -> dict[str, object]:
    return {"@timestamp": "2026-11-27T17:00:00.000000Z", "event": {"action": "drop"},
            "source": {"ip": "100.64.10.10", "port": port}, "pad": "x" * padding}  # fmt: skip


def writer_factory(path: Path, delay: float = 0.0):  # type: ignore[no-untyped-def]
    def make() -> EventWriter:
        time.sleep(delay)  # a log process that is slow to start reading
        writer = EventWriter([file_sink(path)])
        writer.start()
        return writer

    return make


def lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_events_arrive_in_order_and_the_stop_event_comes_last(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    process = LogProcess(writer_factory(path), OBSERVER, queue=0)
    process.start()
    for port in range(1000):
        assert process.submit(event(port))
    process.close({"event": {"action": "stop"}, "portguard": {"packets": 7}})
    written = lines(path)
    assert [e["source"]["port"] for e in written[:-1]] == list(range(1000))  # type: ignore[index]
    stop = written[-1]["portguard"]
    assert stop["packets"] == 7 and stop["events_dropped"] == 0  # type: ignore[index]
    assert stop["sinks"] == [  # type: ignore[index]
        {"name": f"file:{path}", "submitted": 1000, "written": 1000, "dropped": 0}
    ]


def test_a_full_handoff_drops_and_the_count_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    process = LogProcess(writer_factory(path, delay=2.0), OBSERVER, queue=0)
    process.start()
    accepted = sum(process.submit(event(port, padding=2000)) for port in range(20000))
    assert process.dropped == 20000 - accepted > 0  # the socket buffer filled; never blocked
    process.close({"event": {"action": "stop"}})
    written = lines(path)
    stop = written[-1]["portguard"]
    assert len(written) - 1 == accepted
    assert stop["handoff_dropped"] == process.dropped  # type: ignore[index]
    assert stop["events_dropped"] == process.dropped  # type: ignore[index]


def test_the_log_process_outlives_signals_meant_for_the_service(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    process = LogProcess(writer_factory(path), OBSERVER)
    process.start()
    time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGINT):
        os.kill(process.pid, sig)  # systemd signals the whole unit at stop
    process.submit(event(1))
    process.close({"event": {"action": "stop"}})
    assert [e["event"] for e in lines(path)] == [{"action": "drop"}, {"action": "stop"}]


def test_drops_are_reported_once_a_tick_with_the_outputs_counts(tmp_path: Path) -> None:
    writer = EventWriter([file_sink(tmp_path / "x.log")])
    writer.start()
    outputs = Outputs(writer, OBSERVER, {"queue": 3})
    outputs.handle(b"D5")
    outputs.report_drops()
    outputs.report_drops()  # nothing new: no second event
    outputs.handle(b"D2")  # an older count arriving late never lowers the total
    outputs.finish(None)
    reports = [e for e in lines(tmp_path / "x.log") if e["event"]["action"] == "events-dropped"]  # type: ignore[index]
    assert len(reports) == 1
    assert reports[0]["portguard"]["events_dropped"] == 5  # type: ignore[index]
    assert reports[0]["portguard"]["queue"] == 3  # type: ignore[index]


def test_the_log_process_reports_its_counters_back(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    process = LogProcess(writer_factory(path), OBSERVER)
    process.start()
    for port in range(10):
        process.submit(event(port))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stats = process.read_stats()
        if stats.get("sinks") and stats["sinks"][0]["written"] == 10:
            break
        time.sleep(0.1)
    process.close({"event": {"action": "stop"}})
    assert stats["sinks"] == [
        {"name": f"file:{path}", "submitted": 10, "written": 10, "dropped": 0}
    ]
    assert stats["events_dropped"] == 0 and stats["flow_end_lost"] == 0


def test_a_dead_log_process_is_noticed_and_restarted(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    process = LogProcess(writer_factory(path), OBSERVER)
    process.start()
    process.submit(event(1))
    time.sleep(0.3)
    first = process.pid
    os.kill(first, signal.SIGKILL)  # out of memory, say
    deadline = time.monotonic() + 5
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process.alive()
    process.submit(event(2))  # dropped and counted: nobody reads
    process.restart()
    assert process.pid != first and process.alive()
    process.submit(event(3))
    process.close({"event": {"action": "stop"}})
    written = lines(path)
    assert [e["source"]["port"] for e in written if "source" in e] == [1, 3]  # type: ignore[index]
    assert written[-1]["portguard"]["handoff_dropped"] == process.dropped >= 1  # type: ignore[index]


def decided(port: int, action: Action = Action.DROP, now: float = NOW) -> DecisionRecord:
    decision = Decision(action, "block-25", "10-isp.toml", "no direct mail", "matched")
    return decision_record(decision, (4, 0x64400A0A, 0xC6336419, port, 25), f"0-{port:x}",
                           Direction.OUTBOUND, "v1", now)  # fmt: skip


def test_records_become_the_events_the_builder_makes_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    process = LogProcess(writer_factory(path), OBSERVER, queue=0)
    process.start()
    records = [decided(port, now=NOW + port * 0.37) for port in range(1000, 1300)]
    for sent in records:
        assert process.submit(sent)
    process.close(None)
    expected = [render_line(connection_event(sent, OBSERVER)) for sent in records]
    assert path.read_bytes().splitlines() == expected


def test_the_log_process_aggregates_identical_denies(tmp_path: Path) -> None:
    writer = EventWriter([file_sink(tmp_path / "x.log")])
    writer.start()
    outputs = Outputs(writer, OBSERVER, {}, flood_window=60.0)
    for port in range(1000, 1010):  # the same source, rule and action: one window
        outputs.handle(handoff.loggable_frame(decided(port, now=NOW + port - 1000))[4:])
    outputs.handle(handoff.loggable_frame(decided(2000, Action.ALLOW))[4:])  # never aggregated
    outputs.flush_floods(NOW + 30)  # the window is still open
    outputs.handle(handoff.frame(handoff.FLUSH)[4:])  # the worker stops: close every window
    outputs.finish(None)
    written = lines(tmp_path / "x.log")
    assert [e["source"]["port"] for e in written] == [1000, 2000, 1009]  # type: ignore[index]
    assert written[-1]["portguard"]["aggregate"]["count"] == 10  # type: ignore[index]


def test_added_records_go_in_one_send_per_batch_in_order_with_submits(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    process = LogProcess(writer_factory(path), OBSERVER, queue=0)
    process.start()
    for port in range(1000, 1100):  # the packet loop: a batch is sent whole at 64 or by flush
        process.add(decided(port))
    assert process._batch.count == 100 - BATCH_FRAMES
    assert process.submit(event(7))  # another thread: sent after what was collected
    assert process._batch.count == 0
    process.add(decided(2000))
    process.flush()
    process.close(None)
    ports = [e["source"]["port"] for e in lines(path)]  # type: ignore[index]
    assert ports == [*range(1000, 1100), 7, 2000]


def test_add_many_is_add_for_each_in_order(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    process = LogProcess(writer_factory(path), OBSERVER, queue=0)
    process.start()
    process.add_many([decided(port) for port in range(1000, 1100)])  # sent at 64, the rest kept
    assert process._batch.count == 100 - BATCH_FRAMES and process.due < float("inf")
    process.add_many([])
    process.add(decided(2000))
    process.flush()
    process.close(None)
    ports = [e["source"]["port"] for e in lines(path)]  # type: ignore[index]
    assert ports == [*range(1000, 1100), 2000]


def test_a_batch_that_does_not_fit_is_dropped_whole_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    process = LogProcess(writer_factory(path, delay=2.0), OBSERVER, queue=0)
    process.start()
    added = 0
    for port in range(200):  # nobody reads for 2 s: the socket buffer fills
        for _ in range(BATCH_FRAMES):
            process.add(event(port, padding=2000))
            added += 1
        process.flush()
    assert process.dropped > 0 and process.dropped % BATCH_FRAMES == 0
    process.close({"event": {"action": "stop"}})
    written = lines(path)
    assert len(written) - 1 + process.dropped == added  # the last line is the stop event
    assert written[-1]["portguard"]["handoff_dropped"] == process.dropped  # type: ignore[index]


def test_records_wait_for_more_at_most_the_handover_delay(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    process = LogProcess(writer_factory(path), OBSERVER, queue=0)
    process.start()
    assert process.due == float("inf")  # nothing collected: nothing due
    started = time.monotonic()
    process.add(decided(1000))
    process.add(decided(1001))
    assert started + HANDOVER_DELAY <= process.due <= time.monotonic() + HANDOVER_DELAY
    process.flush_if_due(process.due - 0.001)  # not yet: still collected
    assert process._batch.count == 2
    process.flush_if_due(process.due)
    assert process._batch.count == 0 and process.due == float("inf")
    process.close(None)
    assert [e["source"]["port"] for e in lines(path)] == [1000, 1001]  # type: ignore[index]


def test_kernel_hits_become_summaries_with_flood_control_off_and_fold_with_it_on(
    tmp_path: Path,
) -> None:
    for window, path in ((0.0, tmp_path / "off.log"), (60.0, tmp_path / "on.log")):
        writer = EventWriter([file_sink(path)])
        writer.start()
        outputs = Outputs(writer, OBSERVER, {}, flood_window=window)
        first = decided(1000, now=NOW)
        outputs.handle(handoff.loggable_frame(first)[4:])
        hits = KernelHits(first, 41, NOW, NOW + 10)
        outputs.handle(handoff.kernel_hits_frame(hits)[4:])
        outputs.finish(None)
        written = lines(path)
        assert [represented(e) for e in written] == [1, 41]  # type: ignore[arg-type]
        assert written[-1]["portguard"]["aggregate"]["kernel"] == 41  # type: ignore[index]


@pytest.mark.parametrize("fmt", ["ecs", "ocsf"])
def test_records_are_rendered_straight_to_lines_only_when_every_output_writes_ecs(
    tmp_path: Path, fmt: str
) -> None:
    path = tmp_path / "events.log"
    writer = EventWriter([file_sink(path, fmt)])
    writer.start()
    outputs = Outputs(writer, OBSERVER, {})
    assert (outputs.events.lines is not None) == (fmt == "ecs")
    records = [decided(port, now=NOW + port) for port in range(1000, 1010)]
    outputs.handle(handoff.RECORDS + marshal.dumps([tuple(r) for r in records]))
    outputs.finish(None)
    expected = [render(connection_event(sent, OBSERVER), fmt) for sent in records]
    assert path.read_bytes().splitlines() == expected


@pytest.mark.parametrize("fmt", ["ecs", "ocsf"])
def test_flow_ends_of_every_read_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """The log process's wiring: conntrack reports read turn after turn (rendered in C for
    ECS outputs, built as dicts for the others) all reach the output, not only the first
    read's."""
    sender, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.setblocking(False)
    monkeypatch.setattr(logloop, "enable_accounting", dict)
    monkeypatch.setattr(logloop, "FlowEndListener", functools.partial(
        FlowEndListener, open_socket=lambda size: (reader, True)))  # fmt: skip
    path = tmp_path / "events.log"
    writer = EventWriter([file_sink(path, fmt)])
    writer.start()
    outputs = Outputs(writer, OBSERVER, {})
    outputs.listen_for_flow_ends()
    with sender:
        for _ in range(3):
            sender.send(V4_ALLOW_OUTBOUND)
            outputs.read_flow_ends()
    outputs.finish(None)
    expected = parse_destroy(V4_ALLOW_OUTBOUND)
    assert expected is not None
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3
    if fmt == "ecs":
        for line in lines:
            event = orjson.loads(line)
            built = flow_end_event(expected, OBSERVER, 0.0)
            assert {**event, "@timestamp": ""} == {**built, "@timestamp": ""}


@pytest.mark.parametrize("window", [0.0, 60.0])
def test_a_run_of_allowed_records_is_written_as_one_block_rendered_in_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, window: float
) -> None:
    """With flood control off, or on with no window open and no deny in the run, an ``r``
    frame's lines come rendered in C as one block: the same lines the builder's events give."""
    path = tmp_path / "events.log"
    writer = EventWriter([file_sink(path)])
    writer.start()
    submitted: list[object] = []
    monkeypatch.setattr(writer, "submit_many", lambda items: submitted.extend(items) or
                        EventWriter.submit_many(writer, items))  # fmt: skip
    outputs = Outputs(writer, OBSERVER, {}, flood_window=window)
    if outputs.frames is None or not outputs.frames.available:
        pytest.skip("no C library")
    records = [decided(port, Action.ALLOW, now=NOW + port) for port in range(1000, 1010)]
    outputs.handle(handoff.RECORDS + marshal.dumps([tuple(r) for r in records]))
    outputs.finish(None)
    assert [type(item).__name__ for item in submitted] == ["LineBlock"]
    expected = [render_line(connection_event(sent, OBSERVER)) for sent in records]
    assert path.read_bytes().splitlines() == expected


def test_denies_under_flood_control_go_through_it_record_by_record(tmp_path: Path) -> None:
    """A run with denies while flood control is on, and any run while a window is open, goes
    through flood control record by record: the same lines as without the C path (a window
    that closes within a run has its summary before the run's later records)."""
    written = []
    for use_c in (True, False):
        path = tmp_path / f"{use_c}.log"
        writer = EventWriter([file_sink(path)])
        writer.start()
        outputs = Outputs(writer, OBSERVER, {}, flood_window=60.0)
        if not use_c:
            outputs.frames = None
        runs = [[decided(1000 + i, Action.ALLOW, now=NOW + i) for i in range(3)],
                [decided(2000 + i, now=NOW + 3 + i) for i in range(5)],  # denies: one window
                [decided(3000 + i, Action.ALLOW, now=NOW + 70 + i) for i in range(3)]]  # fmt: skip
        for run in runs:
            outputs.handle(handoff.RECORDS + marshal.dumps([tuple(r) for r in run]))
        outputs.handle(handoff.frame(handoff.FLUSH)[4:])
        outputs.finish(None)
        written.append(path.read_bytes())
    assert written[0] == written[1]
    ports = [e["source"]["port"] for e in lines(tmp_path / "True.log")]  # type: ignore[index]
    assert ports == [1000, 1001, 1002, 2000, 2004, 3000, 3001, 3002]  # the window closed first
