"""Decision records rendered a frame at a time in C: byte for byte LineRenderer's lines, and
None (render in Python) for whatever the C side does not read."""

from __future__ import annotations

import marshal
import random
from collections.abc import Sequence

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from portguard.core.events.lines import LineRenderer
from portguard.core.events.record import DecisionRecord, Observer, connection_event
from portguard.io import decisionlines
from portguard.io.decisionlines import FIRST_RECORDS, DecisionLines
from portguard.log import handoff
from tests.events import NOW, OBSERVER
from tests.unit.test_lines import OBSERVERS, records

pytestmark = pytest.mark.skipif(not DecisionLines(OBSERVER).available, reason="no C library")


def _payload(found: Sequence[DecisionRecord]) -> bytes:
    """An ``r`` frame's payload, as the packet loop's Batch makes it."""
    batch = handoff.Batch()
    for record in found:
        batch.add(record)
    frames, rest = handoff.split_frames(batch.take()[0])
    assert not rest and [frame[:1] for frame in frames] == [handoff.RECORDS]
    return frames[0][1:]


def _python_lines(found: Sequence[DecisionRecord], observer: Observer = OBSERVER) -> bytes:
    renderer = LineRenderer(observer)
    return b"".join(renderer.decision(record).line + b"\n" for record in found)


def _render(payload: bytes, observer: Observer = OBSERVER) -> decisionlines.LineBlock | None:
    return DecisionLines(observer).render(payload, lambda: handoff.records_of(payload))


def _record(**changed: object) -> DecisionRecord:
    record = DecisionRecord(NOW, 4, 0x64400001, 0xC6336419, 40000, 25, "outbound", "allow",
                            "business-25", "10-main.toml", "business relays", "matched",
                            "v1", "a1", None)  # fmt: skip
    return record._replace(**changed)


RUNS = st.lists(records().map(lambda r: r._replace(limit=None)), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(RUNS, OBSERVERS)
def test_a_frame_renders_as_the_python_lines(
    found: list[DecisionRecord], observer: Observer
) -> None:
    block = _render(_payload(found), observer)
    assert block is not None
    assert block.data == _python_lines(found, observer)
    renderer = LineRenderer(observer)
    for record, event in zip(found, block.events(), strict=True):
        alone = renderer.decision(record)
        assert (event.line, event.level, event.stamp) == (alone.line, alone.level, alone.stamp)
        assert event.event() == connection_event(record, observer)
    assert block.denies == any(r.action in ("drop", "reject") for r in found)


def test_values_shared_between_records_are_read_through_marshal_references() -> None:
    """A rule's texts are the same objects in every record of its rule: marshal writes them
    once and refers back to them (and to small ints) after that."""
    texts = ("business-25", "10-main.toml", "business relays", "matched", "v1")
    found = [_record(now=NOW + i / 3, sport=40000 + i, flow_id=f"a{i:x}") for i in range(200)]
    found = [r._replace(rule_id=texts[0], ruleset=texts[1], description=texts[2],
                        reason=texts[3], policy_version=texts[4]) for r in found]  # fmt: skip
    payload = _payload(found)
    assert payload.count(b"r") > 200  # references
    block = _render(payload)
    assert block is not None and block.data == _python_lines(found)


def test_a_frame_bigger_than_the_first_buffers_grows_them() -> None:
    found = [_record(sport=1024 + i, reason="x" * 3000) for i in range(FIRST_RECORDS + 5)]
    block = _render(_payload(found))
    assert block is not None and len(block) == FIRST_RECORDS + 5
    assert block.data == _python_lines(found)


def test_ipv6_and_the_extremes_of_each_value() -> None:
    found = [
        _record(version=6, src=0, dst=(1 << 128) - 1, sport=0, dport=65535),
        _record(version=6, src=0x20010DB8 << 96 | 1, dst=0x20010DB8 << 96 | 2),
        _record(version=4, src=0, dst=(1 << 32) - 1),
        _record(now=0.0),
        _record(now=253402300799.9999),  # the last second datetime has
        _record(now=1.0078125),  # 7812.5 µs exactly: rounded to even, as Python's round
        _record(now=2.9999999),  # a whole million: carried into the second
        _record(description=""),  # no description field
        _record(reason='"\\\x00\x1f\x7f\u2028é😀', flow_id="\t\n\r\b\f"),
    ]
    block = _render(_payload(found))
    assert block is not None and block.data == _python_lines(found)


@pytest.mark.parametrize(
    "record",
    [
        _record(limit={"rate": 1.5, "burst": 3}),  # a rate limit's fields: a dict
        _record(version=5),
        _record(src=1 << 32),  # too wide for IPv4
        _record(sport=65536),
        _record(dport=-1),
        _record(now=-1.0),
        _record(now=float("nan")),
        _record(now=253402300800.0),  # beyond year 9999
        _record(now=7),  # an int, not a float
        _record(action="maybe"),
        _record(reason="\ud800"),  # a lone surrogate (orjson refuses it too)
        _record(sport=True),
    ],
)
def test_what_it_does_not_render_is_left_to_python(record: DecisionRecord) -> None:
    assert _render(_payload([_record(), record, _record()])) is None


@pytest.mark.parametrize(
    "payload",
    [b"", b"N", marshal.dumps((1, 2)), marshal.dumps({"a": 1}), marshal.dumps([1]),
     marshal.dumps([(1.0, 4)]), b"r\x00\x00\x00\x00", b"[\x01\x00\x00\x00r\x05\x00\x00\x00"],
)  # fmt: skip
def test_payloads_that_are_no_list_of_records_are_declined(payload: bytes) -> None:
    assert _render(payload) is None


def test_an_empty_run_is_an_empty_block() -> None:
    block = _render(marshal.dumps([]))
    assert block is not None and (len(block), block.data) == (0, b"")


def test_every_truncation_is_declined() -> None:
    payload = _payload([_record(), _record(version=6, src=1 << 100, sport=5)])
    for end in range(len(payload)):
        assert _render(payload[:end]) is None, end


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 8))
@example(seed=0, flips=1)
def test_a_mutated_payload_is_declined_or_rendered_as_marshal_reads_it(
    seed: int, flips: int
) -> None:
    """Whatever the bytes, no crash; where C renders, its lines are what Python renders from
    the records marshal reads in the same bytes."""
    rng = random.Random(seed)
    mutated = bytearray(_payload([_record(), _record(version=6, src=1 << 100, flow_id="b2")]))
    for _ in range(flips):
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
    block = _render(bytes(mutated))
    if block is None:
        return
    found = handoff.records_of(bytes(mutated))
    assert block.data == _python_lines(found)


def test_without_the_library_nothing_is_rendered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decisionlines, "library", lambda: None)
    lines = DecisionLines(OBSERVER)
    assert not lines.available
    assert lines.render(_payload([_record()]), list) is None


def test_a_reference_mark_on_none_is_read_as_marshal_reads_it() -> None:
    """marshal keeps no reference to None even when its byte carries the mark: the references
    after it still point where marshal's do."""
    shared = ("business-25", "10-main.toml", "business relays", "matched", "v1")
    found = [_record(sport=40000 + i, flow_id=f"a{i}") for i in range(3)]
    found = [r._replace(rule_id=shared[0], ruleset=shared[1], description=shared[2],
                        reason=shared[3], policy_version=shared[4]) for r in found]  # fmt: skip
    later = "".join(["seen ", "after the None"])  # first in the second record, then referred to
    found[1:] = [r._replace(reason=later) for r in found[1:]]
    payload = _payload(found)
    end_of_first = payload.index(b"N", payload.index(b"a0"))
    marked = payload[:end_of_first] + bytes([ord("N") | 0x80]) + payload[end_of_first + 1 :]
    assert handoff.records_of(marked) == found
    block = _render(marked)
    assert block is not None and block.data == _python_lines(found)
