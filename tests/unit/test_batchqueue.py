"""The batched queue reader: the C library's parsing and verdict messages on crafted netlink
bytes, and 'exactly one verdict per packet, whatever happens' for a whole batch.

The kernel side (recvmmsg on a bound queue, verdicts the kernel applies) is tested for real by
every daemon test in tests/integration, which runs this reader.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import subprocess
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from portguard.core.gate import Outcome, Verdict
from portguard.core.marks import MARK_ALLOW, MARK_MASK, MARK_REJECT, direction_of_mark
from portguard.core.policy.model import Direction
from portguard.io import native
from portguard.io.batchqueue import (
    C_ACKED_ERRORS,
    C_LAST_ERROR,
    F_PAYLOAD,
    F_TRUNCATED,
    META_WORDS,
    BatchReader,
    make_reader,
)
from portguard.io.native import address, load_library
from portguard.io.nfqueue import NF_ACCEPT, NF_DROP, NF_REPEAT, QueueReader, answer

LIB = load_library()
NLMSG_ERROR = 2
PACKET_TYPE = (3 << 8) | 0  # NFNL_SUBSYS_QUEUE, NFQNL_MSG_PACKET
VERDICT_TYPE = (3 << 8) | 1


def test_the_library_is_built() -> None:
    assert LIB is not None, "pip install builds portguard/io/_nfqbatch.so (hatch_build.py)"


def test_a_stale_or_missing_library_is_no_library(tmp_path: Path) -> None:
    """A build of an older nfqbatch.c (no flowlines.c) lacks pg_ct_line: every user falls
    back to Python, as without the library, instead of failing to load."""
    stale = tmp_path / "_nfqbatch.so"
    source = Path(native.__file__).with_name("nfqbatch.c")
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(stale), str(source)], check=True)
    assert ctypes.CDLL(str(stale)).pg_ct_parse is not None
    assert load_library(stale) is None
    assert load_library(tmp_path / "missing.so") is None


def lib() -> ctypes.CDLL:
    assert LIB is not None
    return LIB


def attr(kind: int, data: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def packet_message(packet_id: int, payload: bytes | None = b"\x45" * 20, mark: int | None = None,
                   indev: int = 2, outdev: int = 3) -> bytes:  # fmt: skip
    attrs = attr(1, struct.pack("!IHB", packet_id, 0x0800, 3) + b"\0")
    if mark is not None:
        attrs += attr(3, struct.pack("!I", mark))
    attrs += attr(5, struct.pack("!I", indev)) + attr(6, struct.pack("!I", outdev))
    attrs += attr(4, b"\0" * 16)  # a timestamp: an attribute the reader skips
    if payload is not None:
        attrs += attr(10 | 0x4000, payload)  # flags in the type are masked off
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(0)) + attrs
    return struct.pack("=IHHII", 16 + len(body), PACKET_TYPE, 0, 0, 0) + body


def error_message(code: int) -> bytes:
    body = struct.pack("=i", code) + b"\0" * 16  # the error and the refused message's header
    return struct.pack("=IHHII", 16 + len(body), NLMSG_ERROR, 0, 0, 0) + body


def parse(
    data: bytes, truncated: bool = False, room: int = 8
) -> tuple[list[list[int]], array[int]]:
    buf = bytearray(data or b"\0")  # an address even when empty
    meta = array("I", bytes(4 * META_WORDS * room))
    counters = array("I", bytes(20))
    found = lib().pg_parse(address(buf), len(data), 0, int(truncated), address(meta), room,
                           address(counters))  # fmt: skip
    words = meta.tolist()
    return [words[i * META_WORDS : (i + 1) * META_WORDS] for i in range(found)], counters


def test_a_packet_message_gives_id_mark_interfaces_and_where_its_bytes_are() -> None:
    payload = bytes(range(40))
    message = packet_message(7, payload, mark=0x123, indev=4, outdev=9)
    [[packet_id, mark, indev, outdev, offset, length, flags]], _ = parse(message)
    assert (packet_id, mark, indev, outdev, flags) == (7, 0x123, 4, 9, F_PAYLOAD)
    assert message[offset : offset + length] == payload


def test_several_messages_in_one_buffer_and_error_acks_counted() -> None:
    data = packet_message(1) + error_message(-errno.ENOENT) + error_message(0) + packet_message(2)
    packets, counters = parse(data)
    assert [p[0] for p in packets] == [1, 2]
    assert counters[C_ACKED_ERRORS] == 1 and counters[C_LAST_ERROR] == errno.ENOENT


def test_a_message_without_mark_or_payload() -> None:
    [[packet_id, mark, *_rest, length, flags]], _ = parse(packet_message(5, payload=None))
    assert (packet_id, mark, length, flags) == (5, 0, 0, 0)


def test_a_cut_message_still_gives_its_id_flagged_truncated() -> None:
    message = packet_message(11, b"\x45" * 400)
    [[packet_id, *_rest, length, flags]], _ = parse(message[:60], truncated=True)
    assert (packet_id, length, flags) == (11, 0, F_TRUNCATED)


@pytest.mark.parametrize("cut", [0, 3, 15, 17, 30])
def test_garbage_and_short_buffers_give_no_packet(cut: int) -> None:
    assert parse(packet_message(3)[:cut])[0] == []
    assert parse(b"\xff" * cut)[0] == []


def test_at_most_room_packets() -> None:
    packets, _ = parse(b"".join(packet_message(n) for n in range(5)), room=3)
    assert [p[0] for p in packets] == [0, 1, 2]


def verdict_messages(words: list[int], queue: int = 5) -> list[tuple[int | None, ...]]:
    """pg_build's messages as (type, flags, queue, verdict, id, mark or None)."""
    out, given = bytearray(40 * (len(words) // 4)), array("I", words)
    length = lib().pg_build(address(out), queue, address(given), len(words) // 4, 1)
    messages: list[tuple[int | None, ...]] = []
    at = 0
    while at < length:
        size, kind, flags = struct.unpack_from("=IHH", out, at)
        res_id = struct.unpack_from("!H", out, at + 18)[0]
        verdict, packet_id = struct.unpack_from("!II", out, at + 24)
        mark = struct.unpack_from("!I", out, at + 36)[0] if size == 40 else None
        messages.append((kind, flags, res_id, verdict, packet_id, mark))
        at += size
    return messages


def test_verdict_messages_with_and_without_a_mark() -> None:
    assert verdict_messages([7, NF_REPEAT, 1, 0xABCD, 8, NF_DROP, 0, 0]) == [
        (VERDICT_TYPE, 1, 5, NF_REPEAT, 7, 0xABCD),
        (VERDICT_TYPE, 1, 5, NF_DROP, 8, None),
    ]


def test_answer_matches_the_per_packet_verdicts() -> None:
    allow = answer(Outcome(Verdict.ALLOW, None, Direction.OUTBOUND), 9, 0x5)
    assert allow[:3] == (9, NF_REPEAT, 1)
    assert allow[3] & ~MARK_MASK == 0x5 and allow[3] & MARK_ALLOW
    assert direction_of_mark(allow[3]) is Direction.OUTBOUND
    assert answer(Outcome(Verdict.REJECT, None), 1, 0)[3] & MARK_REJECT
    assert answer(Outcome(Verdict.ACCEPT, None), 2, 7) == (2, NF_ACCEPT, 0, 0)
    assert answer(Outcome(Verdict.DROP, None), 3, 7) == (3, NF_DROP, 0, 0)


class SendingLib:
    """The library's pg_send, recording the verdict words each call was given."""

    def __init__(self, fail: int = 0) -> None:
        self.sent: list[list[int]] = []
        self.fail = fail

    def pg_send(self, fd: int, queue: int, where: int, count: int, seq: int) -> int:
        self.sent.append(list(array("I", ctypes.string_at(where, 16 * count))))
        if self.fail:
            self.fail -= 1
            return -errno.ENOMEM
        return 0


def reader(decide: Callable[[bytes, int, int], Outcome], sender: SendingLib) -> BatchReader:
    batch = BatchReader(lib(), 0, 64, decide, EVENTS.append, Verdict.DROP)
    batch._lib = sender  # type: ignore[assignment]
    batch.fileno = lambda: -1  # type: ignore[method-assign]
    EVENTS.clear()
    return batch


EVENTS: list[object] = []


def meta(packet_id: int, flags: int = F_PAYLOAD) -> list[int]:
    return [packet_id, 0, 2, 3, 0, 20, flags]


def verdicts_of(words: list[int]) -> dict[int, int]:
    return {words[i]: words[i + 1] for i in range(0, len(words), 4)}


EVENT = {"event": {"action": "connection-allowed"}}


def test_every_packet_of_a_batch_gets_one_verdict_in_one_send() -> None:
    def decide(data: bytes, indev: int, outdev: int) -> Outcome:
        if data[0] == 0xFF:
            raise ValueError("malformed")
        return Outcome(Verdict.ACCEPT, EVENT)

    sender = SendingLib()
    batch = reader(decide, sender)
    batch._buf[0:20] = b"\x45" * 20
    batch._answer(meta(1) + meta(2, flags=0) + meta(3) + meta(4, flags=F_TRUNCATED))
    [words] = sender.sent
    assert verdicts_of(words) == {1: NF_ACCEPT, 2: NF_DROP, 3: NF_ACCEPT, 4: NF_DROP}
    assert batch.packets == 4 and batch.errors == 2
    assert EVENTS == [EVENT, EVENT]


def test_a_failure_that_escapes_still_answers_the_whole_batch() -> None:
    def decide(data: bytes, indev: int, outdev: int) -> Outcome:
        raise KeyboardInterrupt

    sender = SendingLib()
    with pytest.raises(KeyboardInterrupt):
        reader(decide, sender)._answer(meta(1) + meta(2) + meta(3))
    assert verdicts_of(sender.sent[0]) == {1: NF_DROP, 2: NF_DROP, 3: NF_DROP}


def test_a_failed_send_is_tried_again_then_counted() -> None:
    once = SendingLib(fail=1)
    ok = reader(lambda *_: Outcome(Verdict.ACCEPT, None), once)
    ok._answer(meta(1))
    assert len(once.sent) == 2 and ok.verdict_errors == 0
    failing = reader(lambda *_: Outcome(Verdict.ACCEPT, None), SendingLib(fail=2))
    failing._answer(meta(1) + meta(2))
    assert failing.verdict_errors == 2 and isinstance(failing.last_error, OSError)


def test_make_reader_falls_back_without_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    def decide(data: bytes, indev: int, outdev: int) -> Outcome:
        return Outcome(Verdict.ACCEPT, None)

    assert type(make_reader(0, 64, decide, print, Verdict.DROP)) is BatchReader
    assert type(make_reader(0, 64, decide, print, Verdict.DROP, batched=False)) is QueueReader
    monkeypatch.setattr("portguard.io.batchqueue.library", lambda: None)
    assert type(make_reader(0, 64, decide, print, Verdict.DROP)) is QueueReader


def socket_reader(sock: socket.socket) -> BatchReader:
    """A batch reader that accepts everything, reading `sock` as if it were the queue's."""
    batch = BatchReader(lib(), 0, 64, lambda *_: Outcome(Verdict.ACCEPT, None), print,
                        Verdict.DROP)  # fmt: skip
    batch.fileno = sock.fileno  # type: ignore[method-assign]
    return batch


def test_reading_a_socket_that_is_not_a_queue() -> None:
    """pg_recv on an empty socket says EAGAIN; BatchReader.read returns 'not full'."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with left, right:
        batch = socket_reader(left)
        assert batch.read() is False
        right.send(packet_message(12))  # a datagram that looks like a queued packet
        sender = SendingLib()
        batch._lib = _Both(lib(), sender)  # type: ignore[assignment]
        assert batch.read(limit=4) is False
        assert verdicts_of(sender.sent[0]) == {12: NF_ACCEPT}


class _Both:
    """The real pg_recv with a recording pg_send."""

    def __init__(self, real: ctypes.CDLL, sender: SendingLib) -> None:
        self.pg_recv = real.pg_recv
        self.pg_send = sender.pg_send


def test_verdicts_the_kernel_refused_are_verdict_errors() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with left, right:
        batch = socket_reader(left)
        batch._lib = _Both(lib(), SendingLib())  # type: ignore[assignment]
        right.send(error_message(-errno.ENOENT))
        right.send(packet_message(5))
        assert batch.read(limit=8) is False
        assert batch.verdict_errors == 1 and batch.packets == 1
        assert isinstance(batch.last_error, OSError) and batch.last_error.errno == errno.ENOENT


def test_the_events_of_a_batch_go_together_after_the_verdicts() -> None:
    handed: list[list[object]] = []
    sender = SendingLib()

    def on_events(events: list[object]) -> None:
        assert sender.sent, "verdicts first"
        handed.append(list(events))

    batch = BatchReader(lib(), 0, 64, lambda *_: Outcome(Verdict.ACCEPT, EVENT), print,
                        Verdict.DROP, on_events=on_events)  # fmt: skip
    batch._lib = sender  # type: ignore[assignment]
    batch.fileno = lambda: -1  # type: ignore[method-assign]
    batch._answer(meta(1) + meta(2) + meta(3))
    assert handed == [[EVENT, EVENT, EVENT]]


class FakeFast:
    """A fast path that answers the packets whose first byte is 0xFA (or raises), as the real
    one does: a run from `start` up to the first it cannot answer."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.next = 0
        self._answered: list[int] = []

    def decide(self, buffer: int, meta_at: int, start: int, count: int, now: float) -> int:
        if self.fail:
            raise RuntimeError("fast path broke")
        words = array("I", ctypes.string_at(meta_at, 4 * 7 * count))
        data = ctypes.string_at(buffer, 8)
        mine = [data[words[7 * index + 4]] == 0xFA for index in range(count)]
        self._answered = []
        index = start
        while index < count and mine[index]:
            self._answered.append(words[7 * index])
            index += 1
        self.next = next((j for j in range(index + 1, count) if mine[j]), count)
        return len(self._answered)

    def verdicts(self, answered: int) -> list[int]:
        return [word for packet_id in self._answered for word in (packet_id, NF_REPEAT, 1, 7)]

    def records(self) -> bytes:
        return b"records-%d" % len(self._answered)


@pytest.mark.parametrize("fail", [False, True])
def test_the_fast_path_and_the_gate_answer_in_the_packets_order(fail: bool) -> None:
    """Every packet gets one verdict; the fast path's records and the gate's events go to the
    log in the packets' order; a fast path that fails leaves every packet to the gate."""
    handed: list[object] = []
    sender = SendingLib()
    fast: Any = FakeFast(fail)

    def records(payload: bytes, count: int) -> None:
        handed.append((payload, count))

    batch = BatchReader(lib(), 0, 64, lambda *_: Outcome(Verdict.ACCEPT, EVENT), print,
                        Verdict.DROP, on_events=handed.append, fast=fast,
                        on_records=records)  # fmt: skip
    batch._lib = sender  # type: ignore[assignment]
    batch.fileno = lambda: -1  # type: ignore[method-assign]
    batch._buf[0:2] = b"\xfa\x45"
    at_fa, at_45 = [0, 0, 2, 3, 0, 1, F_PAYLOAD], [0, 0, 2, 3, 1, 1, F_PAYLOAD]
    words = [1, *at_fa[1:], 2, *at_45[1:], 3, *at_fa[1:]]
    batch._meta[: len(words)] = array("I", words)  # where pg_recv leaves them
    batch._answer(words)
    [sent] = sender.sent
    if fail:
        assert verdicts_of(sent) == {1: NF_ACCEPT, 2: NF_ACCEPT, 3: NF_ACCEPT}
        assert handed == [[EVENT, EVENT, EVENT]] and batch.errors == 1
    else:  # in the packets' order: a run of one, the gate's, a run of one
        assert verdicts_of(sent) == {1: NF_REPEAT, 2: NF_ACCEPT, 3: NF_REPEAT}
        assert handed == [(b"records-1", 1), [EVENT], (b"records-1", 1)]
    assert batch.packets == 3
