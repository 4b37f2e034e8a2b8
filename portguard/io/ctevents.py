"""The conntrack events edge: a report for each connection portguard allowed, when it ends.

``FlowEndListener`` subscribes to conntrack's DESTROY events (ctnetlink multicast group
``NFNLGRP_CONNTRACK_DESTROY``) on a plain netlink socket in a thread of its own, and hands every
TCP entry whose connmark holds portguard's allow verdict to a callback as an ``EndedFlow``:
addresses and ports of the original direction, the direction recorded in the mark, packets and
bytes each way (``nf_conntrack_acct``) and start and stop times (``nf_conntrack_timestamp``).
``enable_accounting`` turns both on; the kernel adds them only to entries created afterwards.

A socket filter (classic BPF, run by the kernel before an event is queued) passes only events
whose connmark reads allow, so the rest of a busy gateway's connections never reach the daemon
nor fill its receive buffer. When the buffer overflows anyway, the kernel drops events and says
so once (ENOBUFS): the listener counts that in ``lost`` and goes on.

Conntrack forgets a closed TCP connection only after TIME_WAIT (``nf_conntrack_tcp_timeout_
time_wait``, 120 s by default) or after a reset CLOSE (10 s); that is when its report comes.
Entries created while no one listens to conntrack events (``nf_conntrack_events = 2``, the
default) are never reported.

Everything here acts in the network namespace of the calling thread: the socket belongs to the
namespace ``start()`` runs in, and /proc/sys/net shows the caller's namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK, NFNLGRP_CONNTRACK_DESTROY
from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_DELETE

from portguard.core.events.flowend import Counters, EndedFlow
from portguard.core.marks import MARK_ALLOW, VERDICT_MASK, direction_of_mark

ACCOUNTING: Final = ("net.netfilter.nf_conntrack_acct", "net.netfilter.nf_conntrack_timestamp")
PROC_SYS: Final = Path("/proc/sys")
NETLINK_NETFILTER: Final = 12
SO_ATTACH_FILTER: Final = 26
SO_RCVBUFFORCE: Final = 33  # SO_RCVBUF beyond net.core.rmem_max (needs CAP_NET_ADMIN)
RECEIVE_BUFFER: Final = 8 << 20  # bytes (the kernel doubles it for its bookkeeping)
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
ERROR_PAUSE: Final = 0.2  # seconds between tries after an unexpected error

_NLMSG: Final = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NLA: Final = struct.Struct("=HH")  # length, type
_ATTRS_AT: Final = _NLMSG.size + 4  # after the netlink and nfgen headers
_NLA_TYPE_MASK: Final = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_SKF_AD_NLATTR: Final = (-0x1000 + 12) & 0xFFFFFFFF  # A = offset of attribute X from offset A

# (code, jump if true, jump if false, k): accept an event whose CTA_MARK reads allow
ALLOW_FILTER: Final = (
    (0x00, 0, 0, _ATTRS_AT),  # ld #20                A = where the attributes start
    (0x01, 0, 0, CTA_MARK),  # ldx #CTA_MARK
    (0x20, 0, 0, _SKF_AD_NLATTR),  # ld [nlattr]      A = offset of CTA_MARK, 0 when absent
    (0x15, 5, 0, 0),  # jeq #0 -> drop
    (0x07, 0, 0, 0),  # tax
    (0x40, 0, 0, 4),  # ld [x + 4]                    A = the mark (big-endian)
    (0x54, 0, 0, VERDICT_MASK),  # and #VERDICT_MASK
    (0x15, 0, 1, MARK_ALLOW),  # jeq #MARK_ALLOW -> accept, else drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret: the whole message
    (0x06, 0, 0, 0),  # ret: nothing
)


class FlowEndError(Exception):
    """Subscribing to conntrack events failed (no permission, no conntrack in the kernel, ...)."""


def enable_accounting(proc_sys: Path = PROC_SYS) -> dict[str, str]:
    """Turn on conntrack accounting and timestamps in this namespace.

    Returns the settings it could not make, each with the reason (empty when both are on).
    Never raises. Only entries created afterwards get counters and times.
    """
    failed: dict[str, str] = {}
    for name in ACCOUNTING:
        reason = _switch_on(proc_sys / name.replace(".", "/"))
        if reason is not None:
            failed[name] = reason
    return failed


def _switch_on(path: Path) -> str | None:
    try:
        if path.read_text().strip() != "1":
            path.write_text("1\n")
    except OSError as error:
        return error.strerror or str(error)
    return None


# --- parsing (pure) -----------------------------------------------------------------------


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
    top = _attributes(message, _ATTRS_AT, len(message))
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


# --- the socket ---------------------------------------------------------------------------


def attach_allow_filter(sock: socket.socket) -> None:
    """Let the kernel pass only messages whose CTA_MARK reads allow (OSError when refused)."""
    program = b"".join(struct.pack("=HBBI", *op) for op in ALLOW_FILTER)
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("@HP", len(ALLOW_FILTER), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def open_destroy_socket(receive_buffer: int) -> tuple[socket.socket, bool]:
    """A non-blocking socket subscribed to conntrack DESTROY events; and whether it is filtered."""
    kind = socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
    sock = socket.socket(socket.AF_NETLINK, kind, NETLINK_NETFILTER)
    try:
        _grow_receive_buffer(sock, receive_buffer)
        try:
            attach_allow_filter(sock)
            filtered = True
        except OSError:
            filtered = False  # parse_destroy still skips the others, at a cost
        sock.bind((0, 1 << (NFNLGRP_CONNTRACK_DESTROY - 1)))
    except OSError:
        sock.close()
        raise
    return sock, filtered


def _grow_receive_buffer(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)  # capped by rmem_max


OpenSocket = Callable[[int], tuple[socket.socket, bool]]


class FlowEndListener:
    """Reports each allowed connection conntrack forgets, from a thread of its own.

    ``on_flow`` runs in the listener's thread; an exception from it is counted in ``errors``.
    Counters (read them from any thread): ``received`` DESTROY messages read, ``reported`` flows
    handed to ``on_flow``, ``lost`` times the kernel dropped events (each time one or more),
    ``errors`` other failures (``last_error`` the latest). ``filtered`` says whether the kernel
    filters events by mark.
    """

    def __init__(
        self,
        on_flow: Callable[[EndedFlow], None],
        *,
        receive_buffer: int = RECEIVE_BUFFER,
        open_socket: OpenSocket = open_destroy_socket,
    ) -> None:
        self._on_flow, self._receive_buffer, self._open = on_flow, receive_buffer, open_socket
        self.received = self.reported = self.lost = self.errors = 0
        self.last_error = ""
        self.filtered = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        self._buffer = bytearray(1 << 16)

    def start(self) -> None:
        """Subscribe (in the calling thread's network namespace) and start listening."""
        try:
            sock, self.filtered = self._open(self._receive_buffer)
        except OSError as error:
            raise FlowEndError(f"subscribing to conntrack events failed: {error}") from error
        self._wake = os.pipe()
        self._thread = threading.Thread(
            target=self._run, args=(sock, self._wake[0]), name="portguard-flow-end", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """End the thread (it closes the socket); waits for it up to ``timeout`` seconds."""
        self._stopping.set()
        if self._thread is None or self._wake is None:
            return
        os.write(self._wake[1], b"x")
        self._thread.join(timeout)
        if not self._thread.is_alive():
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> FlowEndListener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, sock: socket.socket, wake: int) -> None:
        with sock:
            while not self._stopping.is_set():
                try:
                    ready, _, _ = select.select([sock.fileno(), wake], [], [])
                    if sock.fileno() in ready:
                        self._receive(sock)
                except Exception as error:  # the listener outlives every error
                    self._failed(error)
                    self._stopping.wait(ERROR_PAUSE)

    def _receive(self, sock: socket.socket) -> None:
        try:
            size = sock.recv_into(self._buffer)
        except BlockingIOError:
            return
        except OSError as error:
            if error.errno != errno.ENOBUFS:
                raise
            self.lost += 1  # the kernel dropped events: the buffer was full
            return
        for message in destroy_messages(memoryview(self._buffer)[:size]):
            self.received += 1
            self._handle(message)

    def _handle(self, message: bytes) -> None:
        try:
            ended = parse_destroy(message)
            if ended is not None:
                self._on_flow(ended)
                self.reported += 1
        except Exception as error:  # one bad message or callback: counted
            self._failed(error)

    def _failed(self, error: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(error).__name__}: {error}"
