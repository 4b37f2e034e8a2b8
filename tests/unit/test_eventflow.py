"""Decision records to events: built once, through flood control (the log process's and
`portguard replay`'s one path)."""

from __future__ import annotations

import orjson

from portguard.core.events.lines import RenderedEvent
from portguard.core.events.record import DecisionRecord, connection_event
from portguard.log.eventflow import EventFlow
from tests.events import NOW, OBSERVER


def record(now: float, action: str = "reject", src: int = 0x64400A0A) -> DecisionRecord:
    return DecisionRecord(now, 4, src, 0xC6336419, 40312, 25, "outbound", action, "block-25",
                          "10-isp.toml", "", "matched", "v1", "1", None)  # fmt: skip


def test_without_a_window_every_event_is_written_at_once() -> None:
    flow = EventFlow(OBSERVER, 0)
    events = [flow.decision(record(NOW + i)) for i in range(3)]
    assert events == [[connection_event(record(NOW + i), OBSERVER)] for i in range(3)]
    assert flow.flush(NOW + 1000) == [] and flow.flush_all() == []


def test_identical_denies_become_the_first_and_a_summary() -> None:
    flow = EventFlow(OBSERVER, 60)
    assert flow.decision(record(NOW)) == [connection_event(record(NOW), OBSERVER)]
    assert flow.decision(record(NOW + 1)) == []
    assert flow.decision(record(NOW + 2, "allow")) == [
        connection_event(record(NOW + 2, "allow"), OBSERVER)
    ]
    assert flow.flush(NOW + 59) == []
    [summary] = flow.flush(NOW + 60)
    assert summary["portguard"]["aggregate"]["count"] == 2


def test_a_later_decision_closes_the_windows_before_it() -> None:
    flow = EventFlow(OBSERVER, 60)
    flow.decision(record(NOW))
    flow.decision(record(NOW + 1))
    summary, event = flow.decision(record(NOW + 61, src=0x64400A0B))
    assert summary["portguard"]["aggregate"]["suppressed"] == 1
    assert event["source"]["ip"] == "100.64.10.11"
    assert flow.flush_all() == []


def test_flush_all_closes_every_window() -> None:
    flow = EventFlow(OBSERVER, 60)
    for i in range(3):
        flow.decision(record(NOW + i))
    [summary] = flow.flush_all()
    assert summary["portguard"]["aggregate"]["count"] == 3


def test_with_lines_what_flood_control_passes_by_comes_rendered() -> None:
    """Allowed decisions (and every decision without flood control) skip the dict; denies
    go through flood control as dicts; a window closed by a rendered decision comes first."""
    flow = EventFlow(OBSERVER, 60, lines=True)
    [first] = flow.decision(record(NOW))
    assert first == connection_event(record(NOW), OBSERVER)  # a deny: a dict, windowed
    assert flow.decision(record(NOW + 1)) == []
    summary, allowed = flow.decision(record(NOW + 61, "allow"))
    assert summary["portguard"]["aggregate"]["count"] == 2
    assert isinstance(allowed, RenderedEvent)
    assert allowed.line == orjson.dumps(connection_event(record(NOW + 61, "allow"), OBSERVER))
    [deny] = EventFlow(OBSERVER, 0, lines=True).decision(record(NOW))
    assert isinstance(deny, RenderedEvent) and deny.event() == first
