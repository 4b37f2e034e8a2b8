"""Reading conntrack DESTROY messages (see ctevents.py): ``parse_destroy`` in Python, and
``DestroyParser``, the same through the C library (portguard/io/native.py) where it was built;
``FlowEndLines``, a message straight to its rendered flow-end event (C library only)."""

from __future__ import annotations

import ctypes
import socket
import struct
from array import array
from collections.abc import Iterator, Sequence
from typing import Final, NamedTuple

import orjson
from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_DELETE

from portguard.core.events.flowend import Counters, EndedFlow, flow_end_event
from portguard.core.events.lines import (
    FLOW_HEAD,
    STAMP_AT,
    STAMP_SIZE,
    LineBlock,
    RenderedEvent,
    observer_json,
)
from portguard.core.events.record import Event, Observer
from portguard.core.marks import DIRECTION_MASK, MARK_ALLOW, VERDICT_MASK, direction_of_mark
from portguard.core.policy.model import Direction
from portguard.io.native import CT_WORDS, LineForm, address, library

DESTROY_TYPE: Final = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
# attribute types (linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY = 1, 8, 9, 10
CTA_ID, CTA_ZONE, CTA_TIMESTAMP = 12, 18, 20
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES, CTA_COUNTERS32_PACKETS, CTA_COUNTERS32_BYTES = 1, 2, 3, 4
CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP = 1, 2
_VERSIONS: Final = {int(socket.AF_INET): 4, int(socket.AF_INET6): 6}  # nfgen_family
_ADDRESSES: Final = {4: (1, 2), 6: (3, 4)}  # CTA_IP_V4_SRC/DST, CTA_IP_V6_SRC/DST
_NLMSG: Final = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NLA: Final = struct.Struct("=HH")  # length, type
ATTRS_AT: Final = _NLMSG.size + 4  # after the netlink and nfgen headers
_NLA_TYPE_MASK: Final = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER


def destroy_messages(data: bytes | memoryview) -> Iterator[bytes]:
    """The conntrack DESTROY messages in what one read from the socket returned."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _port = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            raise ValueError(f"malformed netlink message at {offset}: length {length}")
        if kind == DESTROY_TYPE:
            yield bytes(data[offset : offset + length])
        offset += (length + 3) & ~3


def parse_destroy(message: bytes) -> EndedFlow | None:
    """One DESTROY message; None unless an allowed TCP connection.

    The same reading as ``portguard.io.conntrack.parse_entry`` (the unit tests hold them to
    it), with ``struct`` instead of pyroute2's decoder: 30-40 µs a message here, not 270-400.
    """
    top = _attributes(message, ATTRS_AT, len(message))
    mark, version = _number(message, top.get(CTA_MARK)), _VERSIONS.get(message[_NLMSG.size])
    direction = direction_of_mark(mark)
    if version is None or direction is None or mark & VERDICT_MASK != MARK_ALLOW:
        return None
    tuple_orig = _attributes(message, *top[CTA_TUPLE_ORIG])
    ip = _attributes(message, *tuple_orig[CTA_TUPLE_IP])
    proto = _attributes(message, *tuple_orig[CTA_TUPLE_PROTO])
    if _number(message, proto.get(CTA_PROTO_NUM)) != socket.IPPROTO_TCP:
        return None
    src, dst = _ADDRESSES[version]
    start, stop = _times(message, top.get(CTA_TIMESTAMP))
    return EndedFlow(
        version=version,
        src=_number(message, ip[src]),
        dst=_number(message, ip[dst]),
        sport=_number(message, proto[CTA_PROTO_SRC_PORT]),
        dport=_number(message, proto[CTA_PROTO_DST_PORT]),
        direction=direction,
        original=_counters(message, top.get(CTA_COUNTERS_ORIG)),
        reply=_counters(message, top.get(CTA_COUNTERS_REPLY)),
        start_ns=start,
        stop_ns=stop,
        mark=mark,
        entry_id=_number(message, top[CTA_ID]) if CTA_ID in top else None,
        zone=_number(message, top.get(CTA_ZONE)),
    )


# the words of nfqbatch.c's pg_ct_parse
_CT_VERSION, _CT_SRC, _CT_DST, _CT_SPORT, _CT_DPORT, _CT_MARK, _CT_HAS = 0, 1, 5, 9, 10, 12, 13
_CT_ORIG, _CT_REPLY, _CT_START, _CT_STOP, _CT_ID, _CT_ZONE = 14, 18, 22, 24, 26, 27
_HAS_ORIG, _HAS_REPLY, _HAS_ID = 1, 2, 4


class DestroyParser:
    """``parse_destroy`` through the C library (a few times faster; the same flows, the unit
    tests hold them to it); ``parse_destroy`` itself where the library was not built."""

    def __init__(self) -> None:
        self._lib = library()
        self._words = array("I", bytes(4 * CT_WORDS))
        self._at = address(self._words)

    def __call__(self, message: bytes) -> EndedFlow | None:
        if self._lib is None:
            return parse_destroy(message)
        result = self._lib.pg_ct_parse(message, len(message), self._at)
        if result == -2:
            raise ValueError("malformed netlink attributes in a DESTROY message")
        w = self._words.tolist()
        version, mark = w[_CT_VERSION], w[_CT_MARK]
        direction = direction_of_mark(mark)
        if not version or direction is None or mark & VERDICT_MASK != MARK_ALLOW:
            return None
        if result == -1:
            raise ValueError("a DESTROY message without the parts of a TCP entry")
        if result == 0:
            return None  # not TCP
        return _ended_of(w, direction)


def _ended_of(w: Sequence[int], direction: Direction) -> EndedFlow:
    """The ended flow the words of an allowed TCP entry describe."""
    version, has = w[_CT_VERSION], w[_CT_HAS]
    return EndedFlow(
        version=version,
        src=_address(w, _CT_SRC, version),
        dst=_address(w, _CT_DST, version),
        sport=w[_CT_SPORT],
        dport=w[_CT_DPORT],
        direction=direction,
        original=_words_counters(w, _CT_ORIG) if has & _HAS_ORIG else None,
        reply=_words_counters(w, _CT_REPLY) if has & _HAS_REPLY else None,
        start_ns=_wide(w, _CT_START) or None,
        stop_ns=_wide(w, _CT_STOP) or None,
        mark=w[_CT_MARK],
        entry_id=w[_CT_ID] if has & _HAS_ID else None,
        zone=w[_CT_ZONE],
    )


class ReadLines(NamedTuple):
    """What `FlowEndLines.many` made of one read: the lines, the DESTROY messages read, the
    failures among them and the last one's reason."""

    block: LineBlock
    messages: int
    failures: int
    last_failure: str


class FlowEndLines:
    """A DESTROY message (`__call__`), or all those of one recvmmsg read (`many`), straight to
    flow-end events rendered in C (flowlines.c): the same line `LineRenderer.flow_end` renders
    for the same time, and the dict built from the message's words only when an output asks for
    it. Needs the C library (`available`)."""

    LINE_SIZE = 4096
    MANY_LINES = 256  # lines one `many` call takes at most (a read holds 64 datagrams)

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self._lib = library()
        self._words = array("I", bytes(4 * CT_WORDS))
        self._at = address(self._words)
        self._line = bytearray(self.LINE_SIZE)
        self._line_at = address(self._line)
        shift = (DIRECTION_MASK & -DIRECTION_MASK).bit_length() - 1
        directions = b"".join(
            orjson.dumps(_direction_at(bits << shift).value).ljust(16, b"\0")
            for bits in range((DIRECTION_MASK >> shift) + 1)
        )
        self._texts = (FLOW_HEAD.encode(), directions, observer_json(observer).encode())
        self._form = LineForm(VERDICT_MASK, MARK_ALLOW, DIRECTION_MASK, shift, *self._texts)
        self._form_at = ctypes.addressof(self._form)
        self._out = bytearray(self.LINE_SIZE * self.MANY_LINES)
        self._ends = array("I", bytes(4 * self.MANY_LINES))
        self._many_words = array("I", bytes(4 * CT_WORDS * self.MANY_LINES))
        self._tally = array("I", bytes(4 * 3))
        self._many_at = (address(self._out), address(self._ends), address(self._many_words),
                         address(self._tally))  # fmt: skip

    @property
    def available(self) -> bool:
        return self._lib is not None

    def __call__(self, message: bytes) -> RenderedEvent | None:
        assert self._lib is not None, "FlowEndLines without the C library"
        size = self._lib.pg_ct_line(message, len(message), self._at, self._form_at,
                                    self._line_at, self.LINE_SIZE)  # fmt: skip
        if size > 0:
            line = bytes(self._line[:size])
            stamp = line[STAMP_AT : STAMP_AT + STAMP_SIZE].decode()
            return RenderedEvent(line, "info", stamp, _flow_end_of, self._words[:],
                                 self.observer)  # fmt: skip
        if size == 0:
            return None
        raise ValueError(_LINE_ERRORS[size])

    def many(self, slots: int, slot: int, lengths: int, count: int) -> ReadLines | None:
        """The flow-end lines of a whole `pg_recv_many` read (`count` datagrams in slots of
        `slot` bytes at address `slots`, their lengths at `lengths`); None when they do not fit
        (then read its messages one by one)."""
        assert self._lib is not None, "FlowEndLines without the C library"
        out, ends, words, tally = self._many_at
        self._tally[0] = self._tally[1] = self._tally[2] = 0
        room = self.MANY_LINES
        found = self._lib.pg_ct_lines(slots, slot, lengths, count, self._form_at, out,
                                      len(self._out), ends, words, room, tally)  # fmt: skip
        if found < 0:
            return None
        stops = self._ends[:found].tolist()
        data = bytes(self._out[: stops[-1]]) if found else b""
        kept = bytes(memoryview(self._many_words)[: found * CT_WORDS * 4])
        observer = self.observer
        block = LineBlock(data, stops, ["info"] * found, False,
                          lambda index: _flow_end_of(_words_at(kept, index), observer))  # fmt: skip
        messages, failures, code = self._tally.tolist()
        return ReadLines(block, messages, failures, _LINE_ERRORS.get(-code, "") if failures else "")


def _words_at(kept: bytes, index: int) -> array[int]:
    words = array("I")
    words.frombytes(kept[index * CT_WORDS * 4 : (index + 1) * CT_WORDS * 4])
    return words


_LINE_ERRORS: Final = {
    -1: "a DESTROY message without the parts of a TCP entry (or a port over 16 bits)",
    -2: "malformed netlink attributes in a DESTROY message",
    -3: "a flow-end line longer than FlowEndLines.LINE_SIZE",
    -4: "a malformed netlink message (the rest of its read skipped)",
    -5: "a conntrack report longer than its read's slot",
}
_CT_NOW_S, _CT_NOW_US = 28, 29  # the time flowlines.c rendered the line at


def _direction_at(mark: int) -> Direction:
    direction = direction_of_mark(mark | MARK_ALLOW)
    assert direction is not None
    return direction


def _flow_end_of(w: Sequence[int], observer: Observer) -> Event:
    """The dict of a `FlowEndLines` event, from its words: at the time its line names."""
    ended = _ended_of(w, _direction_at(w[_CT_MARK]))
    return flow_end_event(ended, observer, w[_CT_NOW_S] + w[_CT_NOW_US] / 1_000_000)


def _wide(words: Sequence[int], at: int) -> int:
    return words[at] << 32 | words[at + 1]


def _address(words: Sequence[int], at: int, version: int) -> int:
    if version == 4:
        return words[at + 3]
    return words[at] << 96 | words[at + 1] << 64 | words[at + 2] << 32 | words[at + 3]


def _words_counters(words: Sequence[int], at: int) -> Counters:
    return Counters(_wide(words, at), _wide(words, at + 2))


Span = tuple[int, int]  # where an attribute's payload starts and ends in the message


def _attributes(message: bytes, start: int, end: int) -> dict[int, Span]:
    """The netlink attributes between ``start`` and ``end``: their payloads by type."""
    found: dict[int, Span] = {}
    while start + _NLA.size <= end:
        length, kind = _NLA.unpack_from(message, start)
        if length < _NLA.size or start + length > end:
            raise ValueError(f"malformed netlink attribute at {start}: length {length}")
        found[kind & _NLA_TYPE_MASK] = (start + _NLA.size, start + length)
        start += (length + 3) & ~3
    return found


def _number(message: bytes, span: Span | None) -> int:
    """A big-endian number (or address) attribute; 0 when absent."""
    return 0 if span is None else int.from_bytes(message[span[0] : span[1]], "big")


def _counters(message: bytes, span: Span | None) -> Counters | None:
    if span is None:
        return None
    found = _attributes(message, *span)
    packets = found.get(CTA_COUNTERS_PACKETS) or found.get(CTA_COUNTERS32_PACKETS)
    size = found.get(CTA_COUNTERS_BYTES) or found.get(CTA_COUNTERS32_BYTES)
    return Counters(_number(message, packets), _number(message, size))


def _times(message: bytes, span: Span | None) -> tuple[int | None, int | None]:
    if span is None:
        return None, None
    found = _attributes(message, *span)
    start, stop = (
        _number(message, found.get(kind)) for kind in (CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP)
    )
    return start or None, stop or None
