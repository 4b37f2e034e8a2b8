"""The NFQA_CFG_F_FAIL_OPEN queue flag, which python-netfilterqueue does not expose.

With the flag, a packet that finds the queue full (or the socket buffer full) is accepted instead
of dropped. The kernel takes queue config only from the socket that bound the queue, so the
config message goes out on a duplicate of netfilterqueue's own netlink socket (``get_fd()``).

Call ``set_fail_open`` after ``bind`` and before the packet loop starts: it reads the kernel's
answer from that socket. A packet that arrives in between is handed back to the kernel with
NF_REPEAT, so it runs through the hook again and is queued anew for the loop.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from typing import Final

NFNL_SUBSYS_QUEUE: Final = 3
NFQNL_MSG_PACKET: Final = 0
NFQNL_MSG_VERDICT: Final = 1
NFQNL_MSG_CONFIG: Final = 2
NFQA_PACKET_HDR: Final = 1
NFQA_VERDICT_HDR: Final = 2
NFQA_CFG_MASK: Final = 4
NFQA_CFG_FLAGS: Final = 5
NFQA_CFG_F_FAIL_OPEN: Final = 1
NF_REPEAT: Final = 4

NLMSG_ERROR: Final = 2
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLA_TYPE_MASK: Final = 0x3FFF
_NLMSGHDR: Final = struct.Struct("=IHHII")  # length, type, flags, seq, port id (host order)
_NFGENMSG: Final = struct.Struct("!BBH")  # family, version, res_id (network order)
_NLATTR: Final = struct.Struct("=HH")
_ERRNO: Final = struct.Struct("=i")
_RECV_SIZE: Final = 1 << 17
ANSWER_TIMEOUT: Final = 2.0


def _align(length: int) -> int:
    return (length + 3) & ~3


def _attr(attr_type: int, payload: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(payload), attr_type) + payload
    return raw.ljust(_align(len(raw)), b"\0")


def _nfnl_message(msg_type: int, flags: int, seq: int, queue_num: int, attrs: bytes) -> bytes:
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, queue_num) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg_type
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def build_config_message(queue_num: int, flags: int, mask: int, seq: int = 0) -> bytes:
    """NFQNL_MSG_CONFIG setting the queue flags in ``mask`` to ``flags``; asks for an ACK."""
    attrs = _attr(NFQA_CFG_FLAGS, struct.pack("!I", flags))
    attrs += _attr(NFQA_CFG_MASK, struct.pack("!I", mask))
    return _nfnl_message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, queue_num, attrs)


def build_verdict_message(queue_num: int, packet_id: int, verdict: int) -> bytes:
    """NFQNL_MSG_VERDICT for one packet (no ACK)."""
    attrs = _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
    return _nfnl_message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, queue_num, attrs)


def split_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """The netlink messages in one datagram as (type, seq, payload after the header)."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, _flags, seq, _port = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            return
        yield msg_type, seq, data[offset + _NLMSGHDR.size : offset + length]
        offset += _align(length)


def packet_id(payload: bytes) -> int | None:
    """The id in an NFQNL_MSG_PACKET payload (nfgenmsg + attributes), None if it has none."""
    offset = _NFGENMSG.size
    while offset + _NLATTR.size <= len(payload):
        length, attr_type = _NLATTR.unpack_from(payload, offset)
        if length < _NLATTR.size:
            return None
        if attr_type & NLA_TYPE_MASK == NFQA_PACKET_HDR and length >= _NLATTR.size + 4:
            return int(struct.unpack_from("!I", payload, offset + _NLATTR.size)[0])
        offset += _align(length)
    return None


def _hand_back(sock: socket.socket, payload: bytes) -> None:
    """Give a queued packet back to the kernel to run the hook again."""
    found = packet_id(payload)
    if found is not None:
        queue_num = _NFGENMSG.unpack_from(payload)[2]
        sock.send(build_verdict_message(queue_num, found, NF_REPEAT))


def await_answer(sock: socket.socket, seq: int, timeout: float = ANSWER_TIMEOUT) -> int:
    """The errno the kernel answered request ``seq`` with (0 = done); queued packets handed back."""
    deadline = time.monotonic() + timeout
    packet_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], remaining)[0]:
            break
        try:
            data = sock.recv(_RECV_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        for msg_type, msg_seq, payload in split_messages(data):
            if msg_type == NLMSG_ERROR and msg_seq == seq:
                return -int(_ERRNO.unpack_from(payload)[0])
            if msg_type == packet_type:
                _hand_back(sock, payload)
    raise TimeoutError(f"no answer from the kernel to queue config request {seq}")


def set_fail_open(fd: int, queue_num: int, enabled: bool) -> None:
    """Set or clear NFQA_CFG_F_FAIL_OPEN on the queue that the netlink socket ``fd`` bound."""
    seq = time.monotonic_ns() & 0xFFFFFFFF
    flags = NFQA_CFG_F_FAIL_OPEN if enabled else 0
    message = build_config_message(queue_num, flags, NFQA_CFG_F_FAIL_OPEN, seq)
    with socket.socket(fileno=os.dup(fd)) as sock:
        sock.send(message)
        error = await_answer(sock, seq)
    if error:
        raise OSError(error, f"queue {queue_num}: fail-open flag refused: {os.strerror(error)}")
