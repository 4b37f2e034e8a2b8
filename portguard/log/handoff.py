"""The messages the packet loop hands its log process: length-prefixed frames on a unix stream.

A frame is a 4-byte length (of what follows), a kind byte and its payload:

- ``r``: the decision records (`DecisionRecord`) the packet loop collected in a row, as one
  marshalled list of tuples of plain values (`Batch`): a decision costs the loop a tuple and
  a share of one `marshal.dumps` and one `send` per batch of packets; the log process builds
  each event from its record, once (the packet loop's fast path writes such a list in C:
  io/fastpath.c);
- ``d``: one decision record as a marshalled tuple (records other threads submit);
- ``e``: any other event, built as a dict (lifecycle, malformed packets, connections ended
  after a reload), as JSON;
- ``K``: a key's SYNs the kernel's deny cache answered in one generation (`KernelHits`: the
  record of the key's decision, the hits, the generation's start and end), marshalled;
- ``R``: reopen the file outputs; ``D``: the running count of handoff drops (ASCII digits);
  ``F``: close every flood-control window now (stop); ``S``: the stop event (JSON).

marshal is safe here: only the worker that forked the log process writes to this socket pair.
"""

from __future__ import annotations

import marshal
import struct
from typing import Final

import orjson

from portguard.core.denycache import KernelHits
from portguard.core.events.record import DecisionRecord, Loggable

RECORDS: Final = b"r"
DECISION: Final = b"d"
EVENT: Final = b"e"
KERNEL_HITS: Final = b"K"
REOPEN: Final = b"R"
DROPS: Final = b"D"
FLUSH: Final = b"F"
STOP: Final = b"S"
_LENGTH = struct.Struct("<I")


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _LENGTH.pack(len(payload) + 1) + kind + payload


def loggable_frame(logged: Loggable) -> bytes:
    """A decision record or an event as its frame."""
    if type(logged) is DecisionRecord:
        return frame(DECISION, marshal.dumps(tuple(logged)))
    return frame(EVENT, orjson.dumps(logged))


class Batch:
    """What the packet loop collected since its last send, in order: each run of decision
    records becomes one ``r`` frame (the fast path's records, already marshalled, one of their
    own), any other event one ``e`` frame."""

    __slots__ = ("_fast", "_fast_count", "_frames", "_records", "count")

    def __init__(self) -> None:
        self._frames: list[bytes] = []
        self._records: list[tuple[object, ...]] = []
        self._fast: list[bytes] = []  # the fast path's records, each run's list without its head
        self._fast_count = 0
        self.count = 0  # records and events collected (what a failed send drops)

    def add(self, logged: Loggable) -> None:
        if self._fast:
            self._end_fast()
        if type(logged) is DecisionRecord:
            self._records.append(tuple(logged))
        else:
            self._end_run()
            self._frames.append(frame(EVENT, orjson.dumps(logged)))
        self.count += 1

    def add_records(self, payload: bytes, count: int) -> None:
        """`count` records already marshalled as a list (the fast path's, without references
        to earlier values: consecutive lists are joined into one frame)."""
        self._end_run()
        self._fast.append(payload[_LIST_HEAD:])
        self._fast_count += count
        self.count += count

    def take(self) -> tuple[bytes, int]:
        """The frames collected, and how many records and events they hold; empties it."""
        self._end_run()
        self._end_fast()
        data, count = b"".join(self._frames), self.count
        self._frames, self.count = [], 0
        return data, count

    def _end_run(self) -> None:
        if self._records:
            self._frames.append(frame(RECORDS, marshal.dumps(self._records)))
            self._records = []

    def _end_fast(self) -> None:
        if self._fast:
            head = b"[" + _LENGTH.pack(self._fast_count)
            self._frames.append(frame(RECORDS, head + b"".join(self._fast)))
            self._fast, self._fast_count = [], 0


_LIST_HEAD = 5  # a marshalled list's type byte and its length


def split_frames(data: bytes) -> tuple[list[bytes], bytes]:
    """The whole frames at the start of `data` (each its kind byte and payload), and the rest."""
    frames: list[bytes] = []
    at, end = 0, len(data)
    while end - at >= _LENGTH.size:
        (size,) = _LENGTH.unpack_from(data, at)
        start = at + _LENGTH.size
        if end - start < size:
            break
        frames.append(data[start : start + size])
        at = start + size
    return frames, data[at:]


def decision_of(payload: bytes) -> DecisionRecord:
    """The record a ``d`` frame's payload carries."""
    return DecisionRecord._make(marshal.loads(payload))


def records_of(payload: bytes) -> list[DecisionRecord]:
    """The records an ``r`` frame's payload carries, in order."""
    return [DecisionRecord._make(values) for values in marshal.loads(payload)]


def kernel_hits_frame(found: KernelHits) -> bytes:
    return frame(KERNEL_HITS, marshal.dumps((tuple(found.record), found.hits, found.start,
                                             found.end)))  # fmt: skip


def kernel_hits_of(payload: bytes) -> KernelHits:
    """The kernel hits a ``K`` frame's payload carries."""
    record, hits, start, end = marshal.loads(payload)
    return KernelHits(DecisionRecord._make(record), hits, start, end)
