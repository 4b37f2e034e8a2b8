"""Kernel queue edge: verdict mapping and 'exactly one verdict, whatever happens'.

The kernel side is tested for real in tests/integration; here a recording stand-in for
netfilterqueue.Packet checks the calls the edge makes on each path.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable

import pytest

from portguard.core.gate import Outcome, Verdict
from portguard.core.marks import (
    MARK_ALLOW,
    MARK_CACHE,
    MARK_DROP,
    MARK_MASK,
    MARK_REJECT,
    direction_of_mark,
)
from portguard.core.policy.model import Direction
from portguard.io.nfqueue import (
    BATCH_PACKETS,
    COPY_RANGE,
    RECV_SIZE,
    BatchSocket,
    QueueReader,
    apply_verdict,
)


class RecordingPacket:
    indev, outdev = 2, 3

    def __init__(self, mark: int = 0, fail_on: str = "") -> None:
        self.mark = mark
        self.calls: list[str] = []
        self.fail_on = fail_on

    def get_payload(self) -> bytes:
        return b"\x45"

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        self.mark = mark

    def _verdict(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_on:
            raise RuntimeError("queue unbound")

    def accept(self) -> None:
        self._verdict("accept")

    def drop(self) -> None:
        self._verdict("drop")

    def repeat(self) -> None:
        self._verdict("repeat")


def test_verdicts_map_to_marks_and_calls() -> None:
    cases = {
        Verdict.ALLOW: (["repeat"], MARK_ALLOW),
        Verdict.REJECT: (["repeat"], MARK_REJECT),
        Verdict.DROP: (["drop"], 0x1234),
        Verdict.ACCEPT: (["accept"], 0x1234),
    }
    for verdict, (calls, mark_bits) in cases.items():
        packet = RecordingPacket(mark=0x1234 | MARK_MASK)
        apply_verdict(packet, verdict)
        assert packet.calls == calls
        if verdict in (Verdict.ALLOW, Verdict.REJECT):
            assert packet.mark == 0x1234 | mark_bits  # other mark bits kept, direction internal
        else:
            assert packet.mark == 0x1234 | MARK_MASK


@pytest.mark.parametrize(
    ("direction", "bits"),
    [
        (Direction.INTERNAL, 0x00000000),
        (Direction.OUTBOUND, 0x04000000),
        (Direction.INBOUND, 0x08000000),
        (Direction.EXTERNAL, 0x0C000000),
    ],
)
def test_allow_and_reject_marks_carry_the_direction(direction: Direction, bits: int) -> None:
    for verdict, verdict_bits in ((Verdict.ALLOW, MARK_ALLOW), (Verdict.REJECT, MARK_REJECT)):
        packet = RecordingPacket(mark=0xE0000001 | MARK_MASK)
        apply_verdict(packet, verdict, direction)
        assert packet.mark == 0xE0000001 | verdict_bits | bits
        assert direction_of_mark(packet.mark) is direction and packet.calls == ["repeat"]


@pytest.mark.parametrize(
    ("verdict", "bits"), [(Verdict.REJECT, MARK_REJECT), (Verdict.DROP, MARK_DROP)]
)
def test_a_deny_to_cache_repeats_with_the_cache_bit(verdict: Verdict, bits: int) -> None:
    """The hook adds the key to its deny cache, then rejects or drops: a drop repeats too."""
    packet = RecordingPacket(mark=0x1234 | MARK_MASK)
    apply_verdict(packet, verdict, Direction.OUTBOUND, cache=True)
    assert packet.calls == ["repeat"]
    assert packet.mark == 0x1234 | bits | MARK_CACHE | 0x04000000


def test_the_cache_flag_leaves_an_allow_alone() -> None:
    packet = RecordingPacket()
    apply_verdict(packet, Verdict.ALLOW, cache=True)
    assert packet.mark == MARK_ALLOW and packet.calls == ["repeat"]


def reader(decide: object, events: list[object], fallback: Verdict = Verdict.DROP) -> QueueReader:
    return QueueReader(0, 16, decide, events.append, fallback)  # type: ignore[arg-type]


def test_event_is_logged_after_the_verdict() -> None:
    events: list[object] = []
    packet = RecordingPacket()

    def decide(data: bytes, indev: int, outdev: int) -> Outcome:
        assert (data, indev, outdev) == (b"\x45", 2, 3)
        return Outcome(Verdict.REJECT, {"event": {"action": "reject"}})

    reader(decide, events)._on_packet(packet)
    assert packet.calls == ["repeat"] and events == [{"event": {"action": "reject"}}]


def test_a_failing_decision_still_gets_the_fallback_verdict() -> None:
    def decide(data: bytes, indev: int, outdev: int) -> Outcome:
        raise KeyError("boom")

    for fallback, call in ((Verdict.DROP, "drop"), (Verdict.ACCEPT, "accept")):
        events: list[object] = []
        packet = RecordingPacket()
        queue = reader(decide, events, fallback)
        queue._on_packet(packet)
        assert packet.calls == [call] and events == []
        assert queue.errors == 1 and isinstance(queue.last_error, KeyError)


def test_a_failing_verdict_call_never_escapes() -> None:
    packet = RecordingPacket(fail_on="drop")
    queue = reader(lambda *_: Outcome(Verdict.DROP, None), [])
    queue._on_packet(packet)
    assert packet.calls == ["drop"] and queue.verdict_errors == 1


def test_a_failing_event_sink_never_escapes() -> None:
    def broken_sink(event: object) -> None:
        raise RuntimeError("sink broke")

    packet = RecordingPacket()
    queue = QueueReader(0, 16, lambda *_: Outcome(Verdict.DROP, {"e": 1}), broken_sink,
                        Verdict.DROP)  # fmt: skip
    queue._on_packet(packet)
    assert packet.calls == ["drop"] and queue.errors == 1


def test_every_packet_through_the_edge_gets_exactly_one_verdict() -> None:
    """Random and mutated packets through QueueReader with the real gate and shipped policy."""
    import random

    from portguard.core.events.record import Observer
    from portguard.core.gate import Gate
    from portguard.io.policyfiles import load_ruleset
    from portguard.shipped import RULES_DIR
    from tests.strategies import PacketSpec

    gate = Gate(load_ruleset([RULES_DIR]), Observer("gw", "0"))
    events: list[object] = []
    queue = QueueReader(0, 16, lambda d, i, o: gate.handle(d, i == 2, o == 2, 0.0),
                        events.append, Verdict.DROP)  # fmt: skip
    rng = random.Random(7)
    base = PacketSpec(4, 0x64400A0A, 0xC6336419, 40000, 25, 0x02, 1, 0, 64240, 64).to_bytes()
    for n in range(5000):
        data = bytearray(base if n % 2 else rng.randbytes(rng.randint(0, 80)))
        if data and n % 3:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        packet = PayloadPacket(bytes(data), indev=rng.choice((0, 2)), outdev=rng.choice((0, 2)))
        queue._on_packet(packet)
        assert len(packet.calls) == 1, packet.calls
    assert queue.packets == 5000 and queue.verdict_errors == 0


class PayloadPacket(RecordingPacket):
    def __init__(self, payload: bytes, indev: int, outdev: int) -> None:
        super().__init__()
        self.payload, self.indev, self.outdev = payload, indev, outdev

    def get_payload(self) -> bytes:
        return self.payload


# --- bounded batches -------------------------------------------------------------------------


class FloodedSocket:
    """A netlink socket that always has another message (a saturating flood), or `left`."""

    def __init__(self, left: int | None = None, fail: list[int] | None = None) -> None:
        self.left = left
        self.fail = fail or []  # errnos to raise first, one per call
        self.calls = 0

    def recv(self, size: int, flags: int = 0, /) -> bytes:
        self.calls += 1
        assert flags & socket.MSG_DONTWAIT, "a batch read must never block"
        if self.fail:
            code = self.fail.pop(0)
            raise OSError(code, os.strerror(code))
        if self.left is not None:
            if self.left == 0:
                raise BlockingIOError(errno.EAGAIN, "empty")
            self.left -= 1
        return b"message"


def run_socket(sock: BatchSocket, handle: Callable[[bytes], object]) -> None:
    """netfilterqueue 1.1's `run_socket`, as in its source: recv until EAGAIN, ENOBUFS goes on."""
    while True:
        try:
            data = sock.recv(4096)
        except OSError as error:
            if error.args[0] == errno.ENOBUFS:
                continue
            if error.args[0] in (errno.EAGAIN, errno.EWOULDBLOCK):
                break
            raise
        handle(data)


def test_a_batch_ends_at_its_limit_under_a_flood() -> None:
    batch, handled = BatchSocket(FloodedSocket()), list[bytes]()
    batch.start(64, seconds=60.0)
    run_socket(batch, handled.append)
    assert len(handled) == 64 and batch.received == 64 and batch.full


def test_a_batch_ends_at_its_deadline() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001  # each look at the clock: 1 ms later
        return now[0]

    batch, handled = BatchSocket(FloodedSocket(), clock), list[bytes]()
    batch.start(1_000_000, seconds=0.005)
    run_socket(batch, handled.append)
    assert 1 <= len(handled) <= 5 and batch.full


def test_an_empty_socket_ends_a_batch_that_is_not_full() -> None:
    batch, handled = BatchSocket(FloodedSocket(left=3)), list[bytes]()
    batch.start(64, seconds=60.0)
    run_socket(batch, handled.append)
    assert len(handled) == 3 and not batch.full


def test_enobufs_is_counted_and_reading_goes_on() -> None:
    batch, handled = BatchSocket(FloodedSocket(left=2, fail=[errno.ENOBUFS])), list[bytes]()
    batch.start(64, seconds=60.0)
    run_socket(batch, handled.append)
    assert batch.overruns == 1 and len(handled) == 2 and not batch.full


def test_a_read_takes_a_whole_message_of_a_full_copy_range() -> None:
    """netfilterqueue asks for 4096 bytes; a 4016-byte copy and its attributes can be more, and
    a truncated message never reaches the callback (its packet would get no verdict)."""
    asked: list[int] = []

    class Recording:
        def recv(self, size: int, flags: int = 0, /) -> bytes:
            asked.append(size)
            return b"message"

    batch = BatchSocket(Recording())
    batch.start(1, seconds=60.0)
    batch.recv(4096)
    assert asked == [RECV_SIZE] and RECV_SIZE >= COPY_RANGE + 1024


def test_other_socket_errors_reach_the_caller() -> None:
    batch = BatchSocket(FloodedSocket(fail=[errno.EBADF]))
    batch.start(64, seconds=60.0)
    with pytest.raises(OSError, match="Bad file descriptor"):
        run_socket(batch, lambda data: None)


class FakeQueue:
    """netfilterqueue.NetfilterQueue's run_socket, each message one packet for the reader."""

    def __init__(self, reader: QueueReader) -> None:
        self.reader = reader

    def run_socket(self, sock: BatchSocket) -> None:
        run_socket(sock, lambda data: self.reader._on_packet(RecordingPacket()))


def flooded_reader(left: int | None = None) -> tuple[QueueReader, list[Outcome]]:
    decided: list[Outcome] = []

    def decide(data: bytes, indev: int, outdev: int) -> Outcome:
        decided.append(Outcome(Verdict.DROP, None))
        return decided[-1]

    reader = QueueReader(0, 1024, decide, lambda event: None, Verdict.DROP)
    reader._nfq = FakeQueue(reader)
    reader._batch = BatchSocket(FloodedSocket(left))
    return reader, decided


def test_read_comes_back_after_one_batch_whatever_is_waiting() -> None:
    reader, decided = flooded_reader()  # a flood that never ends
    assert reader.read() is True  # full: more is waiting
    assert len(decided) == BATCH_PACKETS and reader.packets == BATCH_PACKETS
    assert reader.batches_full == 1


def test_read_says_when_the_queue_ran_dry() -> None:
    reader, decided = flooded_reader(left=10)
    assert reader.read() is False and len(decided) == 10


def test_drain_answers_everything_waiting_batch_after_batch() -> None:
    reader, decided = flooded_reader(left=BATCH_PACKETS * 3 + 5)
    assert reader.drain() == BATCH_PACKETS * 3 + 5 == len(decided)


def test_drain_stops_at_its_bound_under_a_flood() -> None:
    reader, decided = flooded_reader()
    assert reader.drain(most=200) == 200 == len(decided)
