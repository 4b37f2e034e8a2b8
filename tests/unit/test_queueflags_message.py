"""The fail-open queue config message, byte for byte, and the answer handling over a socketpair."""

from __future__ import annotations

import socket
import struct
import sys
import threading
from collections.abc import Iterator

import pytest

from portguard.io.queueflags import (
    NF_REPEAT,
    NFQA_CFG_F_FAIL_OPEN,
    await_answer,
    build_config_message,
    build_verdict_message,
    packet_id,
    set_fail_open,
    split_messages,
)

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="literals are little-endian")

PACKET_TYPE = (3 << 8) | 0


def test_config_message_bytes() -> None:
    assert build_config_message(3, flags=1, mask=1, seq=0x01020304) == bytes.fromhex(
        "24000000 0203 0500"  # nlmsg_len 36, NFNL_SUBSYS_QUEUE<<8 | CONFIG, REQUEST | ACK
        "04030201 00000000"  # seq, port id 0: the kernel
        "00 00 0003"  # nfgenmsg: AF_UNSPEC, version 0, res_id = htons(queue 3)
        "0800 0500 00000001"  # NFQA_CFG_FLAGS = FAIL_OPEN (big-endian)
        "0800 0400 00000001"  # NFQA_CFG_MASK = FAIL_OPEN
    )


def test_config_message_clearing_the_flag_keeps_the_mask() -> None:
    message = build_config_message(0x1234, flags=0, mask=NFQA_CFG_F_FAIL_OPEN)
    assert message[16:20] == bytes.fromhex("00 00 1234")
    assert message[20:] == bytes.fromhex("0800 0500 00000000 0800 0400 00000001")


def test_verdict_message_bytes() -> None:
    assert build_verdict_message(5, packet_id=0xA0B0C0D0, verdict=NF_REPEAT) == bytes.fromhex(
        "20000000 0103 0100 00000000 00000000"  # 32 bytes, QUEUE<<8 | VERDICT, REQUEST only
        "00 00 0005"
        "0c00 0200 00000004 a0b0c0d0"  # NFQA_VERDICT_HDR: NF_REPEAT, packet id
    )


def packet_message(queue_num: int, ident: int) -> bytes:
    """An NFQNL_MSG_PACKET as the kernel sends it: packet header, then a payload attribute."""
    body = struct.pack("!BBH", 0, 0, queue_num)
    body += struct.pack("=HH", 11, 1) + struct.pack("!IHB", ident, 0x0800, 3) + b"\0"
    body += struct.pack("=HH", 8, 10) + b"\x45\0\0\x28"
    return struct.pack("=IHHII", 16 + len(body), PACKET_TYPE, 0, 0, 0) + body


def error_message(seq: int, errno: int) -> bytes:
    body = struct.pack("=i", -errno) + struct.pack("=IHHII", 36, 0x0302, 5, seq, 0)
    return struct.pack("=IHHII", 16 + len(body), 2, 0, seq, 1234) + body


def test_split_messages_and_packet_id() -> None:
    data = packet_message(7, 42) + error_message(9, 0)
    messages = list(split_messages(data))
    assert [(kind, seq) for kind, seq, _ in messages] == [(PACKET_TYPE, 0), (2, 9)]
    assert packet_id(messages[0][2]) == 42
    assert packet_id(struct.pack("!BBH", 0, 0, 7)) is None


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(our side, the kernel's side), datagrams like netlink."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, kernel:
        yield ours, kernel


def test_answer_returns_errno_and_hands_back_early_packets(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, kernel = pair
    kernel.send(packet_message(7, 42))
    kernel.send(error_message(8, 0))  # another request's answer: not ours
    kernel.send(error_message(9, 1))
    assert await_answer(ours, 9) == 1
    assert kernel.recv(4096) == build_verdict_message(7, 42, NF_REPEAT)


def test_answer_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    with pytest.raises(TimeoutError):
        await_answer(pair[0], 9, timeout=0.05)


def answer_config(kernel: socket.socket, errno: int, seen: list[bytes]) -> None:
    request = kernel.recv(4096)
    seen.append(request)
    kernel.send(error_message(struct.unpack_from("=I", request, 8)[0], errno))


@pytest.mark.parametrize(("errno", "enabled"), [(0, True), (0, False), (1, True)])
def test_set_fail_open_sends_on_a_duplicate_and_raises_on_error(
    pair: tuple[socket.socket, socket.socket], errno: int, enabled: bool
) -> None:
    ours, kernel = pair
    seen: list[bytes] = []
    thread = threading.Thread(target=answer_config, args=(kernel, errno, seen))
    thread.start()
    try:
        if errno:
            with pytest.raises(OSError, match="queue 6") as raised:
                set_fail_open(ours.fileno(), 6, enabled)
            assert raised.value.errno == errno
        else:
            set_fail_open(ours.fileno(), 6, enabled)
    finally:
        thread.join(timeout=5)
    assert seen[0][16:20] == bytes.fromhex("00000006")
    assert seen[0][24:28] == bytes.fromhex("00000001" if enabled else "00000000")
    assert ours.fileno() >= 0  # the caller's socket stays open
