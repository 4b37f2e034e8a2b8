"""The conntrack events edge without root: DESTROY messages parsed, the kernel's event filter run
on a unix socket, and the listener's thread fed through a socket pair.

The messages were recorded from a real kernel (6.18) by a netlink socket subscribed to conntrack
DESTROY events, in a namespace whose mangle OUTPUT chain set the connmarks their names give
(port 25: allow + outbound + an operator bit, 0x05000042; 587: allow + inbound, 0x09000000; 465:
reject, 0x06000000; 26: none), client 198.51.100.1 / 2001:db8::1, server 198.51.100.25 /
2001:db8::25, 1000 bytes sent and 100 answered, accounting and timestamps on (except for
V6_ALLOW_NO_ACCOUNTING); V4_ALLOW_RESET ended with a reset.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from portguard.core.events.flowend import Counters, EndedFlow
from portguard.core.policy.model import Direction
from portguard.io.conntrack import parse_entry
from portguard.io.ctevents import (
    ACCOUNTING,
    FlowEndError,
    FlowEndListener,
    attach_allow_filter,
    enable_accounting,
)
from portguard.io.ctparse import destroy_messages, parse_destroy

V4_ALLOW_OUTBOUND = bytes.fromhex(
    "0401000002010000000000000000000002000000340001801400018008000100c633640108000200c6336419"
    "1c000280050001000600000006000200851500000600030000190000340002801400018008000100c6336419"
    "08000200c63364011c00028005000100060000000600020000190000060003008515000008000c00a5771ed3"
    "080003000000020e1c0009800c00010000000000000000060c00020000000000000005281c000a800c000100"
    "00000000000000040c000200000000000000013c1c0014800c00010018ec0254100bcada0c00020018ec0254"
    "4b7ca560100004800c000180050001000700000008000800050000420c001b0018ec025489f3dbb0"
)
V6_ALLOW_INBOUND = bytes.fromhex(
    "340100000201000000000000000000000a0000004c0001802c0001801400030020010db80000000000000000"
    "000000011400040020010db80000000000000000000000251c000280050001000600000006000200b51f0000"
    "06000300024b00004c0002802c0001801400030020010db80000000000000000000000251400040020010db8"
    "0000000000000000000000011c000280050001000600000006000200024b000006000300b51f000008000c00"
    "9feb50b6080003000000020e1c0009800c00010000000000000000060c00020000000000000005a01c000a80"
    "0c00010000000000000000040c000200000000000000018c1c0014800c00010018ec0254103b65130c000200"
    "18ec02544bbad9cd100004800c000180050001000700000008000800090000000c001b0018ec025489f5073c"
)
V6_ALLOW_NO_ACCOUNTING = bytes.fromhex(
    "d40000000201000000000000000000000a0000004c0001802c0001801400030020010db80000000000000000"
    "000000011400040020010db80000000000000000000000251c00028005000100060000000600020084630000"
    "06000300024b00004c0002802c0001801400030020010db80000000000000000000000251400040020010db8"
    "0000000000000000000000011c000280050001000600000006000200024b0000060003008463000008000c00"
    "da0e197a080003000000020e100004800c00018005000100070000000800080009000000"
)
V4_ALLOW_RESET = bytes.fromhex(
    "0401000002010000000000000000000002000000340001801400018008000100c633640108000200c6336419"
    "1c0002800500010006000000060002009a2f00000600030000190000340002801400018008000100c6336419"
    "08000200c63364011c00028005000100060000000600020000190000060003009a2f000008000c00993d9936"
    "080003000000020e1c0009800c00010000000000000000050c00020000000000000004f41c000a800c000100"
    "00000000000000030c00020000000000000001081c0014800c00010018ec0254104df1df0c00020018ec0254"
    "4bd0882e100004800c000180050001000800000008000800050000420c001b0018ec02548a0ab5c4"
)
V6_REJECT = bytes.fromhex(
    "340100000201000000000000000000000a0000004c0001802c0001801400030020010db80000000000000000"
    "000000011400040020010db80000000000000000000000251c00028005000100060000000600020082090000"
    "0600030001d100004c0002802c0001801400030020010db80000000000000000000000251400040020010db8"
    "0000000000000000000000011c00028005000100060000000600020001d10000060003008209000008000c00"
    "e68ec587080003000000020e1c0009800c00010000000000000000060c00020000000000000005a01c000a80"
    "0c00010000000000000000040c000200000000000000018c1c0014800c00010018ec025410442d1b0c000200"
    "18ec02544bc5140e100004800c000180050001000700000008000800060000000c001b0018ec025489ff4169"
)
V4_UDP_ALLOW = bytes.fromhex(
    "f400000002010000000000000000000002000000340001801400018008000100c633641908000200c6336419"
    "1c000280050001001100000006000200c64b00000600030000190000340002801400018008000100c6336419"
    "08000200c63364191c0002800500010011000000060002000019000006000300c64b000008000c0002f51fb3"
    "08000300000002081c0009800c00010000000000000000010c00020000000000000000261c000a800c000100"
    "00000000000000000c00020000000000000000001c0014800c00010018ec02541049f5e10c00020018ec0254"
    "4be4415008000800050000000c001b0018ec025489e165f0"
)
V4_UNMARKED = bytes.fromhex(
    "fc00000002010000000000000000000002000000340001801400018008000100c633640108000200c6336419"
    "1c000280050001000600000006000200c2b1000006000300001a0000340002801400018008000100c6336419"
    "08000200c63364011c000280050001000600000006000200001a000006000300c2b1000008000c00e463ca2e"
    "080003000000020e1c0009800c00010000000000000000060c00020000000000000005281c000a800c000100"
    "00000000000000040c000200000000000000013c1c0014800c00010018ec0254104051700c00020018ec0254"
    "4bb470c2100004800c00018005000100070000000c001b0018ec02548a2ba7da"
)
RECORDED = {
    "V4_ALLOW_OUTBOUND": V4_ALLOW_OUTBOUND,
    "V6_ALLOW_INBOUND": V6_ALLOW_INBOUND,
    "V6_ALLOW_NO_ACCOUNTING": V6_ALLOW_NO_ACCOUNTING,
    "V4_ALLOW_RESET": V4_ALLOW_RESET,
    "V6_REJECT": V6_REJECT,
    "V4_UDP_ALLOW": V4_UDP_ALLOW,
    "V4_UNMARKED": V4_UNMARKED,
}
ALLOWED = ("V4_ALLOW_OUTBOUND", "V6_ALLOW_INBOUND", "V6_ALLOW_NO_ACCOUNTING", "V4_ALLOW_RESET")
V4_CLIENT, V4_SERVER = 0xC6336401, 0xC6336419  # 198.51.100.1, 198.51.100.25
V6_CLIENT, V6_SERVER = 0x20010DB8 << 96 | 1, 0x20010DB8 << 96 | 0x25  # 2001:db8::1, 2001:db8::25
CTA_ZONE = 18
NESTED = 0x8000  # NLA_F_NESTED
NEW_TYPE = 1 << 8 | 0  # IPCTNL_MSG_CT_NEW


def with_attribute(message: bytes, kind: int, payload: bytes) -> bytes:
    """The message with one more top-level attribute (unpadded, as the last one may be)."""
    attribute = struct.pack("=HH", 4 + len(payload), kind) + payload
    grown = message + attribute
    return struct.pack("=I", len(grown)) + grown[4:]


def with_type(message: bytes, kind: int) -> bytes:
    return message[:4] + struct.pack("=H", kind) + message[6:]


def test_parse_an_allowed_ipv4_flow() -> None:
    assert parse_destroy(V4_ALLOW_OUTBOUND) == EndedFlow(
        version=4,
        src=V4_CLIENT,
        dst=V4_SERVER,
        sport=34069,
        dport=25,
        direction=Direction.OUTBOUND,
        original=Counters(packets=6, bytes=1320),  # IP bytes: 1000 of payload plus headers
        reply=Counters(packets=4, bytes=316),
        start_ns=1795812911483701978,
        stop_ns=1795812912480953696,
        mark=0x05000042,  # the operator's bits come along
        entry_id=2776047315,
        zone=0,
    )


def test_parse_an_allowed_ipv6_flow() -> None:
    ended = parse_destroy(V6_ALLOW_INBOUND)
    assert ended is not None
    assert (ended.version, ended.src, ended.dst) == (6, V6_CLIENT, V6_SERVER)
    assert (ended.sport, ended.dport, ended.direction) == (46367, 587, Direction.INBOUND)
    assert (ended.original, ended.reply) == (Counters(6, 1440), Counters(4, 396))
    assert ended.duration_ns == 1795812912485030349 - 1795812911486821651


def test_parse_a_flow_without_accounting_or_timestamps() -> None:
    ended = parse_destroy(V6_ALLOW_NO_ACCOUNTING)
    assert ended is not None
    assert (ended.sport, ended.dport, ended.mark) == (33891, 587, 0x09000000)
    assert (ended.original, ended.reply, ended.start_ns, ended.stop_ns) == (None,) * 4
    assert ended.duration_ns is None


def test_parse_a_flow_ended_by_a_reset() -> None:
    ended = parse_destroy(V4_ALLOW_RESET)
    assert ended is not None
    assert (ended.sport, ended.original, ended.reply) == (
        39471,
        Counters(5, 1268),
        Counters(3, 264),
    )


@pytest.mark.parametrize("name", ["V6_REJECT", "V4_UDP_ALLOW", "V4_UNMARKED"])
def test_parse_skips_what_portguard_did_not_allow_or_is_not_tcp(name: str) -> None:
    assert parse_destroy(RECORDED[name]) is None


def test_parse_reads_the_zone() -> None:
    ended = parse_destroy(with_attribute(V4_ALLOW_OUTBOUND, CTA_ZONE, struct.pack("!H", 7)))
    assert ended is not None and ended.zone == 7


def test_parse_reads_32_bit_counters() -> None:
    """Old kernels sent CTA_COUNTERS32_*; a counter attribute may also lack one of its two."""
    orig = struct.pack("=HH", 8, 3) + struct.pack("!I", 9) + struct.pack("=HH", 8, 4)
    message = with_attribute(V6_ALLOW_NO_ACCOUNTING, 9 | NESTED, orig + struct.pack("!I", 900))
    message = with_attribute(message, 10 | NESTED, struct.pack("=HH", 8, 4) + struct.pack("!I", 7))
    ended = parse_destroy(message)
    assert ended is not None
    assert (ended.original, ended.reply) == (Counters(9, 900), Counters(0, 7))


def decoded(raw: bytes) -> Any:
    message = nfct_msg(raw)
    message.decode()
    return message


def pyroute2_reading(raw: bytes) -> tuple[Any, ...] | None:
    """What pyroute2 and ``conntrack.parse_entry`` read from a message (the reference)."""
    message = decoded(raw)
    conn = parse_entry(message)
    if conn is None:
        return None
    counts = [message.get_attr(f"CTA_COUNTERS_{way}") for way in ("ORIG", "REPLY")]
    stamps = message.get_attr("CTA_TIMESTAMP")
    return (
        (conn.version, conn.src, conn.dst, conn.sport, conn.dport, conn.direction),
        (conn.mark, conn.entry_id, conn.zone),
        [
            c and (c.get_attr("CTA_COUNTERS_PACKETS"), c.get_attr("CTA_COUNTERS_BYTES"))
            for c in counts
        ],
        stamps and (stamps.get_attr("CTA_TIMESTAMP_START"), stamps.get_attr("CTA_TIMESTAMP_STOP")),
    )


def struct_reading(raw: bytes) -> tuple[Any, ...] | None:
    ended = parse_destroy(raw)
    if ended is None:
        return None
    return (
        (*ended.key, ended.direction),
        (ended.mark, ended.entry_id, ended.zone),
        [c and tuple(c) for c in (ended.original, ended.reply)],
        ended.start_ns and (ended.start_ns, ended.stop_ns),
    )


@pytest.mark.parametrize(
    "raw",
    [*RECORDED.values(), with_attribute(V6_ALLOW_INBOUND, CTA_ZONE, struct.pack("!H", 7))],
)
def test_parse_reads_what_conntrack_parse_entry_reads(raw: bytes) -> None:
    assert struct_reading(raw) == pyroute2_reading(raw)


def test_destroy_messages_splits_a_read_and_keeps_only_destroys() -> None:
    unaligned = with_attribute(V4_UNMARKED, 0x7F, b"x")  # 5-byte attribute: 3 bytes of padding
    data = unaligned + b"\0\0\0" + with_type(V4_ALLOW_OUTBOUND, NEW_TYPE) + V6_ALLOW_INBOUND
    assert list(destroy_messages(data)) == [unaligned, V6_ALLOW_INBOUND]
    assert list(destroy_messages(memoryview(data))) == [unaligned, V6_ALLOW_INBOUND]
    assert list(destroy_messages(b"")) == []


@pytest.mark.parametrize(
    "data", [V4_ALLOW_OUTBOUND[:100], struct.pack("=I", 8) + V4_ALLOW_OUTBOUND[4:]]
)
def test_destroy_messages_rejects_malformed_lengths(data: bytes) -> None:
    with pytest.raises(ValueError, match="malformed netlink message"):
        list(destroy_messages(data))


def test_parse_rejects_a_truncated_attribute() -> None:
    cut = V4_ALLOW_OUTBOUND[:-2]
    with pytest.raises(ValueError, match="malformed netlink attribute"):
        parse_destroy(struct.pack("=I", len(cut)) + cut[4:])


def test_the_kernel_filter_passes_allow_marks_only() -> None:
    """The socket filter, run by the real kernel on a unix socket (no root needed)."""
    sender, receiver = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sender, receiver:
        attach_allow_filter(receiver)
        receiver.setblocking(False)
        for raw in RECORDED.values():
            sender.send(raw)
        passed = []
        while True:
            try:
                passed.append(receiver.recv(65536))
            except BlockingIOError:
                break
    # UDP with an allow mark passes the filter; parse_destroy drops it
    assert passed == [RECORDED[name] for name in RECORDED if name in {*ALLOWED, "V4_UDP_ALLOW"}]


def test_enable_accounting_switches_both_on(tmp_path: Path) -> None:
    files = [tmp_path / name.replace(".", "/") for name in ACCOUNTING]
    for path, value in zip(files, ("0\n", "1"), strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value)
    assert enable_accounting(tmp_path) == {}
    assert [path.read_text() for path in files] == ["1\n", "1"]  # one already on: not rewritten


def test_enable_accounting_says_what_it_could_not_set(tmp_path: Path) -> None:
    acct, stamp = (tmp_path / name.replace(".", "/") for name in ACCOUNTING)
    acct.mkdir(parents=True)  # a directory where the setting should be
    assert enable_accounting(tmp_path) == {
        ACCOUNTING[0]: "Is a directory",
        ACCOUNTING[1]: "No such file or directory",
    }
    assert not stamp.exists()


# --- the listener's thread, fed through a socket pair ------------------------------------


class FlakySocket(socket.socket):
    """The reading end of a socket pair; raises the errors in ``failures`` first."""

    failures: list[OSError]

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if self.failures:
            raise self.failures.pop(0)
        return super().recv_into(buffer, nbytes, flags)


@dataclass
class Feed:
    listener: FlowEndListener
    sender: socket.socket
    reader: FlakySocket
    flows: list[EndedFlow]
    sizes: list[int]
    callback_failures: list[Exception]


def read_until(feed: Feed, condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """The listener's owner at work: read what waits until `condition` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        if not feed.listener.read_waiting():
            time.sleep(0.01)


@pytest.fixture(params=[True, False], ids=["recvmmsg", "recv_into"])
def feed(request: pytest.FixtureRequest) -> Iterator[Feed]:
    """The listener reading a socket pair: through the C library's recvmmsg, or Python's
    recv_into (whose failures `reader.failures` injects)."""
    yield from fed(many_reads=request.param)


@pytest.fixture
def flaky_feed() -> Iterator[Feed]:
    yield from fed(many_reads=False)


@pytest.fixture
def batched_feed() -> Iterator[Feed]:
    yield from fed(many_reads=True)


def fed(many_reads: bool) -> Iterator[Feed]:
    sender, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader = FlakySocket(socket.AF_UNIX, socket.SOCK_DGRAM, fileno=other.detach())
    reader.failures = []
    reader.setblocking(False)
    flows: list[EndedFlow] = []
    sizes: list[int] = []
    callback_failures: list[Exception] = []

    def on_flow(ended: EndedFlow) -> None:
        if callback_failures:
            raise callback_failures.pop(0)
        flows.append(ended)

    def open_socket(size: int) -> tuple[socket.socket, bool]:
        sizes.append(size)
        return reader, True

    listener = FlowEndListener(on_flow, receive_buffer=1 << 20, open_socket=open_socket,
                               many_reads=many_reads)  # fmt: skip
    with sender:
        listener.open()
        yield Feed(listener, sender, reader, flows, sizes, callback_failures)
        listener.close()


def test_listener_hands_over_allowed_flows_only(feed: Feed) -> None:
    assert feed.sizes == [1 << 20] and feed.listener.filtered
    for raw in RECORDED.values():
        feed.sender.send(raw)
    read_until(feed, lambda: feed.listener.received == len(RECORDED))
    assert feed.flows == [parse_destroy(RECORDED[name]) for name in ALLOWED]
    assert (feed.listener.reported, feed.listener.lost, feed.listener.errors) == (4, 0, 0)


def test_listener_counts_lost_events_and_goes_on(flaky_feed: Feed) -> None:
    flaky_feed.reader.failures.append(OSError(errno.ENOBUFS, "No buffer space available"))
    flaky_feed.sender.send(V4_ALLOW_OUTBOUND)
    read_until(flaky_feed, lambda: flaky_feed.listener.reported == 1)
    assert (flaky_feed.listener.lost, flaky_feed.listener.errors) == (1, 0)


def test_listener_survives_errors(flaky_feed: Feed) -> None:
    flaky_feed.reader.failures.append(OSError(errno.EIO, "Input/output error"))  # the first read
    flaky_feed.callback_failures.append(RuntimeError("sink exploded"))
    flaky_feed.sender.send(V4_ALLOW_OUTBOUND)  # the callback fails
    flaky_feed.sender.send(V4_ALLOW_OUTBOUND[:100])  # not a netlink message
    read_until(flaky_feed, lambda: flaky_feed.listener.errors == 3)
    assert (flaky_feed.flows, flaky_feed.listener.lost, flaky_feed.listener.reported) == ([], 0, 0)
    assert flaky_feed.listener.last_error.startswith("ValueError: malformed netlink message")
    flaky_feed.sender.send(V6_ALLOW_INBOUND)
    read_until(flaky_feed, lambda: len(flaky_feed.flows) == 1)
    assert flaky_feed.flows == [parse_destroy(V6_ALLOW_INBOUND)]
    assert flaky_feed.listener.reported == 1


def test_close_closes_the_socket(feed: Feed) -> None:
    feed.listener.close()
    assert feed.reader.fileno() == -1
    feed.listener.close()  # again: nothing left to do


def test_open_reports_a_failed_subscription() -> None:
    def refused(size: int) -> tuple[socket.socket, bool]:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    listener = FlowEndListener(lambda ended: None, open_socket=refused)
    with pytest.raises(FlowEndError, match="Operation not permitted"):
        listener.open()
    listener.close()


def test_a_report_longer_than_a_slot_is_an_error_and_the_next_one_comes(
    batched_feed: Feed,
) -> None:
    batched_feed.sender.send(V4_ALLOW_OUTBOUND + b"\0" * 9000)  # over the 8 KB a read slot has
    batched_feed.sender.send(V6_ALLOW_INBOUND)
    read_until(batched_feed, lambda: len(batched_feed.flows) == 1)
    assert batched_feed.flows == [parse_destroy(V6_ALLOW_INBOUND)]
    assert batched_feed.listener.errors == 1


@pytest.mark.parametrize("many_reads", [True, False], ids=["recvmmsg", "recv_into"])
def test_read_waiting_reads_what_waits_and_never_blocks(many_reads: bool) -> None:
    sender, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.setblocking(False)
    flows: list[EndedFlow] = []
    listener = FlowEndListener(flows.append, open_socket=lambda size: (reader, True),
                               many_reads=many_reads)  # fmt: skip
    with sender:
        listener.open()
        assert listener.fileno() == reader.fileno()
        assert listener.read_waiting() == 0  # nothing waits: never blocks
        for raw in RECORDED.values():
            sender.send(raw)
        assert listener.read_waiting() >= 1
        assert flows == [parse_destroy(RECORDED[name]) for name in ALLOWED]
        assert listener.received == len(RECORDED) and listener.errors == 0
        listener.close()
        assert reader.fileno() == -1
        listener.close()  # again: nothing left to do
