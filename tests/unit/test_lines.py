"""ECS lines rendered straight from records: byte for byte the line of the event's dict."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from portguard.core.events import lines
from portguard.core.events.flowend import Counters, EndedFlow, flow_end_event
from portguard.core.events.lines import LineRenderer, RenderedEvent, as_event
from portguard.core.events.record import DecisionRecord, Observer, connection_event
from portguard.core.policy.model import Action, Direction
from tests.events import NOW, OBSERVER

TEXT = st.text(max_size=40)  # quotes, backslashes, control characters, any code point
NOWS = st.floats(min_value=0, max_value=4e9, allow_nan=False)
LIMITS = st.none() | st.fixed_dictionaries(
    {"rate": st.floats(0.1, 1e4), "burst": st.integers(1, 10**6), "key": TEXT}
)


@st.composite
def records(draw: st.DrawFn) -> DecisionRecord:
    version = draw(st.sampled_from([4, 6]))
    address = st.integers(0, (1 << (32 if version == 4 else 128)) - 1)
    port = st.integers(0, 65535)
    return DecisionRecord(
        draw(NOWS), version, draw(address), draw(address), draw(port), draw(port),
        draw(st.sampled_from(list(Direction))).value, draw(st.sampled_from(list(Action))).value,
        draw(TEXT), draw(TEXT), draw(TEXT), draw(TEXT), draw(TEXT), draw(TEXT), draw(LIMITS),
    )  # fmt: skip


@st.composite
def ended_flows(draw: st.DrawFn) -> EndedFlow:
    version = draw(st.sampled_from([4, 6]))
    address = st.integers(0, (1 << (32 if version == 4 else 128)) - 1)
    counters = st.none() | st.builds(Counters, st.integers(0, 2**40), st.integers(0, 2**50))
    times = st.none() | st.integers(0, 4 * 10**18)
    return EndedFlow(
        version, draw(address), draw(address), draw(st.integers(0, 65535)),
        draw(st.integers(0, 65535)), draw(st.sampled_from(list(Direction))), draw(counters),
        draw(counters), draw(times), draw(times),
    )  # fmt: skip


OBSERVERS = st.builds(Observer, TEXT, TEXT)


@settings(max_examples=400, deadline=None)
@given(records(), OBSERVERS)
def test_a_decision_line_is_the_line_of_its_event(
    record: DecisionRecord, observer: Observer
) -> None:
    rendered = LineRenderer(observer).decision(record)
    event = connection_event(record, observer)
    assert rendered.line == orjson.dumps(event)
    assert rendered.event() == event
    assert rendered.level == event["log"]["level"]
    assert rendered.stamp == event["@timestamp"]


@settings(max_examples=400, deadline=None)
@given(ended_flows(), OBSERVERS, NOWS)
def test_a_flow_end_line_is_the_line_of_its_event(
    ended: EndedFlow, observer: Observer, now: float
) -> None:
    rendered = LineRenderer(observer).flow_end(ended, now)
    event = flow_end_event(ended, observer, now)
    assert rendered.line == orjson.dumps(event)
    assert rendered.event() == event
    assert (rendered.level, rendered.stamp) == ("info", event["@timestamp"])


def test_one_renderer_renders_many_alike() -> None:
    """Its caches (rule heads, texts, seconds) give the same bytes the second time."""
    renderer = LineRenderer(OBSERVER)
    first = [renderer.decision(_record(NOW + i / 7, sport=40000 + i)) for i in range(50)]
    again = [renderer.decision(_record(NOW + i / 7, sport=40000 + i)) for i in range(50)]
    assert [r.line for r in first] == [r.line for r in again]
    assert all(r.line == orjson.dumps(r.event()) for r in first)


def test_the_caches_stay_bounded() -> None:
    renderer = LineRenderer(OBSERVER)
    for i in range(lines.MAX_CACHED + 10):
        record = _record(NOW, reason=f"reason {i}", rule_id=f"rule-{i}")
        assert renderer.decision(record).line == orjson.dumps(connection_event(record, OBSERVER))
    assert len(renderer._heads) <= lines.MAX_CACHED
    assert len(renderer._texts) <= lines.MAX_CACHED


def test_as_event_builds_a_rendered_event_and_passes_a_dict_through() -> None:
    event = {"message": "x"}
    assert as_event(event) is event
    rendered = LineRenderer(OBSERVER).decision(_record(NOW))
    assert isinstance(rendered, RenderedEvent)
    assert as_event(rendered) == connection_event(_record(NOW), OBSERVER)


def _record(now: float, sport: int = 40312, reason: str = "matched",
            rule_id: str = "business-25") -> DecisionRecord:  # fmt: skip
    return DecisionRecord(now, 4, 0xCB007164, 0xC6336419, sport, 25, "outbound", "allow",
                          rule_id, "10-isp.toml", "", reason, "v1", "w1-1", None)  # fmt: skip
