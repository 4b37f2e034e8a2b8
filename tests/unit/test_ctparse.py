"""DESTROY messages read by the C library (`DestroyParser`) exactly as `parse_destroy` reads
them: the recorded messages of test_ctevents_parse, every truncation of them, and random
mutations (never a different flow; see `agree`). `FlowEndLines` renders, for the same
messages, the line of the event `flow_end_event` builds from `DestroyParser`'s flow."""

from __future__ import annotations

import ctypes
import hashlib
import struct
import time
from array import array
from datetime import datetime

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from portguard.core.events.flowend import EndedFlow, flow_end_event
from portguard.core.events.lines import LineRenderer, RenderedEvent
from portguard.core.events.record import Observer
from portguard.io import ctparse
from portguard.io.ctevents import CUT
from portguard.io.ctparse import DestroyParser, FlowEndLines, ReadLines, parse_destroy
from portguard.io.native import address, library
from tests.unit.test_ctevents_parse import (
    NESTED,
    V4_ALLOW_OUTBOUND,
    V4_ALLOW_RESET,
    V4_UDP_ALLOW,
    V4_UNMARKED,
    V6_ALLOW_INBOUND,
    V6_ALLOW_NO_ACCOUNTING,
    V6_REJECT,
    with_attribute,
)

RECORDED = [V4_ALLOW_OUTBOUND, V4_ALLOW_RESET, V4_UDP_ALLOW, V4_UNMARKED, V6_ALLOW_INBOUND,
            V6_ALLOW_NO_ACCOUNTING, V6_REJECT]  # fmt: skip
FAST = DestroyParser()


OBSERVER = Observer('gw "1"', "0.1.0")
LINES = FlowEndLines(OBSERVER)


def both(message: bytes) -> tuple[object, object]:
    """Each parser's flow, None, or the exception's type name."""
    results: list[object] = []
    for parse in (parse_destroy, FAST):
        try:
            results.append(parse(message))
        except (ValueError, KeyError, IndexError) as error:
            results.append(type(error).__name__)
    return results[0], results[1]


def test_the_library_reads_destroy_messages() -> None:
    assert FAST._lib is not None, "pip install builds portguard/io/_nfqbatch.so (hatch_build.py)"


@pytest.mark.parametrize("message", RECORDED)
def test_recorded_messages_give_the_same_flow(message: bytes) -> None:
    slow, fast = both(message)
    assert fast == slow
    if message in (V4_ALLOW_OUTBOUND, V6_ALLOW_INBOUND, V6_ALLOW_NO_ACCOUNTING):
        assert isinstance(fast, EndedFlow)


def agree(slow: object, fast: object) -> bool:
    """The same flow or None; or both failed (not necessarily with the same exception); or the
    C parser refused what Python read as a flow (it is stricter: a number attribute wider than
    64 bits is malformed to it, a huge number to Python). Never a different flow."""
    if isinstance(fast, str):
        return isinstance(slow, (str, EndedFlow))
    return slow == fast


@pytest.mark.parametrize("message", RECORDED)
def test_every_truncation_agrees(message: bytes) -> None:
    for cut in range(len(message)):
        slow, fast = both(message[:cut])
        assert agree(slow, fast), (cut, slow, fast)
        assert_rendered_alike(message[:cut])


@settings(max_examples=400, deadline=None)
@example(V4_ALLOW_RESET, [(384, 69)])  # CTA_ID's length grown: a number no word holds
@example(V4_ALLOW_RESET, [(124, 121)])  # CTA_MARK's length grown
@given(st.sampled_from(RECORDED), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                           min_size=1, max_size=4))  # fmt: skip
def test_mutated_messages_agree(message: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(message)
    for at, value in flips:
        data[at % len(data)] = value
    slow, fast = both(bytes(data))
    assert agree(slow, fast), (bytes(data).hex(), slow, fast)
    assert_rendered_alike(bytes(data))


def test_without_the_library_it_is_parse_destroy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ctparse, "library", lambda: None)
    plain = DestroyParser()
    assert plain(V4_ALLOW_OUTBOUND) == parse_destroy(V4_ALLOW_OUTBOUND)


def assert_rendered_alike(message: bytes) -> None:
    """`FlowEndLines` gives an event where `DestroyParser` gives a flow, None where None, and
    fails where it fails; the event's line is its dict's, the dict `flow_end_event`'s."""
    try:
        ended = FAST(message)
    except ValueError:
        with pytest.raises(ValueError):
            LINES(message)
        return
    if ended is not None and max(ended.sport, ended.dport) > 0xFFFF:
        with pytest.raises(ValueError):  # no event: its Community ID needs 16-bit ports
            LINES(message)
        return
    rendered = LINES(message)
    if ended is None:
        assert rendered is None
        return
    assert isinstance(rendered, RenderedEvent)
    event = rendered.event()
    assert rendered.line == orjson.dumps(event)
    assert event["@timestamp"] == rendered.stamp and rendered.level == "info"
    expected = flow_end_event(ended, OBSERVER, 0.0)
    assert {**event, "@timestamp": ""} == {**expected, "@timestamp": ""}
    now = datetime.fromisoformat(rendered.stamp).timestamp()
    assert rendered.line == LineRenderer(OBSERVER).flow_end(ended, now).line


@pytest.mark.parametrize("message", RECORDED)
def test_recorded_messages_render_the_line_of_their_flow(message: bytes) -> None:
    assert LINES.available
    assert_rendered_alike(message)
    if message in (V4_ALLOW_OUTBOUND, V6_ALLOW_INBOUND, V6_ALLOW_NO_ACCOUNTING):
        assert isinstance(LINES(message), RenderedEvent)


def test_a_line_renders_the_time_it_was_read_at() -> None:
    before = time.time()
    rendered = LINES(V4_ALLOW_OUTBOUND)
    after = time.time()
    assert isinstance(rendered, RenderedEvent)
    assert before - 1e-6 <= datetime.fromisoformat(rendered.stamp).timestamp() <= after + 1e-6


def test_a_line_that_does_not_fit_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FlowEndLines, "LINE_SIZE", 100)
    with pytest.raises(ValueError, match="longer than"):
        FlowEndLines(OBSERVER)(V4_ALLOW_OUTBOUND)


def timed(message: bytes, start: int, stop: int) -> bytes:
    """The message with its CTA_TIMESTAMP replaced (start, stop in ns; 0: absent)."""
    times = b"".join(struct.pack("=HH", 12, kind) + value.to_bytes(8, "big")
                     for kind, value in ((1, start), (2, stop)) if value)  # fmt: skip
    return with_attribute(message, ctparse.CTA_TIMESTAMP | NESTED, times)


@pytest.mark.parametrize(
    ("start", "stop"),
    [(0, 0), (0, 9), (5, 0), (5, 5), (5, 4), (5, 9), (1795798740_000001999, 1795798801_500000998)],
)
@pytest.mark.parametrize("message", [V4_ALLOW_OUTBOUND, V6_ALLOW_INBOUND, V6_ALLOW_NO_ACCOUNTING])
def test_times_render_as_the_event_has_them(message: bytes, start: int, stop: int) -> None:
    """No start: no times; a stop before the start: no end and no duration."""
    assert_rendered_alike(timed(message, start, stop))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_any_times_render_as_the_event_has_them(start: int, stop: int) -> None:
    """The C calendar agrees with `datetime` over every time conntrack can report."""
    assert_rendered_alike(timed(V6_ALLOW_NO_ACCOUNTING, start, stop))


def wide_port() -> bytes:
    """V4_ALLOW_OUTBOUND with a 4-byte source port of 70000."""
    port = bytes.fromhex("0600020085150000")  # CTA_PROTO_SRC_PORT 34069, padded
    assert V4_ALLOW_OUTBOUND.count(port) == 1
    return V4_ALLOW_OUTBOUND.replace(port, bytes.fromhex("08000200") + (70000).to_bytes(4, "big"))


def test_a_port_over_16_bits_is_refused() -> None:
    """A source port attribute the kernel never sends (4 bytes, 70000): `DestroyParser` reads
    the number, `FlowEndLines` refuses the message, as its event (its Community ID) could
    not be built either."""
    wide = wide_port()
    ended = FAST(wide)
    assert ended is not None and ended.sport == 70000
    with pytest.raises(ValueError, match="port over 16 bits"):
        LINES(wide)
    assert_rendered_alike(wide)


SLOT = 4096


def read_of(datagrams: list[bytes], cut: tuple[int, ...] = ()) -> tuple[bytearray, array[int]]:
    """What one pg_recv_many read leaves: the datagrams in slots, their lengths (CUT marked)."""
    slots = bytearray(SLOT * len(datagrams))
    lengths = array("I")
    for index, datagram in enumerate(datagrams):
        slots[index * SLOT : index * SLOT + len(datagram)] = datagram
        lengths.append(SLOT | CUT if index in cut else len(datagram))
    return slots, lengths


def many(
    lines: FlowEndLines, datagrams: list[bytes], cut: tuple[int, ...] = ()
) -> ReadLines | None:
    slots, lengths = read_of(datagrams, cut)
    return lines.many(address(slots), SLOT, address(lengths), len(datagrams))


def without_stamp(line: bytes) -> bytes:
    return line[:15] + line[15 + 27 :]


def test_a_whole_read_renders_the_lines_its_messages_render_one_by_one() -> None:
    """Every recorded message (two in one datagram too): the lines `__call__` gives, in
    order, with the failures counted instead of raised."""
    datagrams = [*RECORDED, V4_ALLOW_OUTBOUND + V6_ALLOW_INBOUND, wide_port(), V4_ALLOW_RESET]
    found = many(LINES, datagrams, cut=(len(datagrams) - 1,))
    assert found is not None
    singles = [LINES(m) for m in [*RECORDED, V4_ALLOW_OUTBOUND, V6_ALLOW_INBOUND]]
    expected = [event for event in singles if event is not None]
    events = found.block.events()
    assert [without_stamp(e.line) for e in events] == [without_stamp(e.line) for e in expected]
    for event in events:
        assert orjson.dumps(event.event()) == event.line and event.level == "info"
    assert found.block.data == b"".join(e.line + b"\n" for e in events)
    assert (found.messages, found.failures) == (len(RECORDED) + 3, 2)
    assert "longer than its read's slot" in found.last_failure


def test_a_malformed_message_skips_the_rest_of_its_datagram_only() -> None:
    broken = struct.pack("=IHHII", 9999, 0x0102, 0, 0, 0)
    found = many(LINES, [V4_ALLOW_OUTBOUND + broken + V4_ALLOW_OUTBOUND, V6_ALLOW_INBOUND])
    assert found is not None and len(found.block) == 2
    assert (found.messages, found.failures) == (1 + 1, 1)
    assert "malformed netlink message" in found.last_failure


def test_a_read_with_more_lines_than_room_is_left_to_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(FlowEndLines, "MANY_LINES", 2)
    small = FlowEndLines(OBSERVER)
    assert many(small, [V4_ALLOW_OUTBOUND] * 3) is None
    found = many(small, [V4_ALLOW_OUTBOUND, V4_UNMARKED, V4_ALLOW_OUTBOUND])
    assert found is not None and len(found.block) == 2
    empty = many(small, [V4_UNMARKED])
    assert empty is not None and (len(empty.block), empty.block.data, empty.messages) == (0, b"", 1)


@given(st.binary(max_size=119))
@settings(max_examples=300)
def test_the_community_id_hash_is_sha1_with_and_without_the_sha_extensions(data: bytes) -> None:
    """Both block functions of flowlines.c against hashlib, over every length the Community ID
    could need (one block and two); the SHA extensions' only where this CPU has them."""
    lib = library()
    assert lib is not None
    digest = ctypes.create_string_buffer(20)
    for which in (0, 1):
        code = lib.pg_sha1(data, len(data), ctypes.addressof(digest), which)
        if code == -1 and which == 1:
            continue  # no SHA extensions here: the portable one was checked
        assert code == 0
        assert digest.raw == hashlib.sha1(data).digest(), which
