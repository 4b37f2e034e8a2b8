"""The conntrack events edge: a report for each connection portguard allowed, when it ends.

``FlowEndListener`` subscribes to conntrack's DESTROY events (ctnetlink multicast group
``NFNLGRP_CONNTRACK_DESTROY``) on a plain netlink socket that its owner reads when it is
readable (the log process's loop), and hands every TCP entry whose connmark holds portguard's
allow verdict to a callback as an ``EndedFlow`` (or what its ``parse`` makes of it):
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
namespace ``open()`` runs in, and /proc/sys/net shows the caller's namespace.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from pyroute2.netlink.nfnetlink import NFNLGRP_CONNTRACK_DESTROY

from portguard.core.marks import MARK_ALLOW, VERDICT_MASK
from portguard.io.ctparse import (
    ATTRS_AT,
    CTA_MARK,
    DestroyParser,
    ReadLines,
    destroy_messages,
)
from portguard.io.native import address, library

ACCOUNTING: Final = ("net.netfilter.nf_conntrack_acct", "net.netfilter.nf_conntrack_timestamp")
PROC_SYS: Final = Path("/proc/sys")
NETLINK_NETFILTER: Final = 12
SO_ATTACH_FILTER: Final = 26
SO_RCVBUFFORCE: Final = 33  # SO_RCVBUF beyond net.core.rmem_max (needs CAP_NET_ADMIN)
RECEIVE_BUFFER: Final = 8 << 20  # bytes (the kernel doubles it for its bookkeeping)
MANY_READS: Final = 64  # reports one recvmmsg takes at most
MANY_SLOT: Final = 8192  # bytes a report may take (a DESTROY message is some 300)
CUT: Final = 0x80000000  # pg_recv_many's mark of a message cut short

_SKF_AD_NLATTR: Final = (-0x1000 + 12) & 0xFFFFFFFF  # A = offset of attribute X from offset A

# (code, jump if true, jump if false, k): accept an event whose CTA_MARK reads allow
ALLOW_FILTER: Final = (
    (0x00, 0, 0, ATTRS_AT),  # ld #20                A = where the attributes start
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
    """Reports each allowed connection conntrack forgets, when its owner asks: `open`
    subscribes, the owner selects on `fileno()` and calls `read_waiting()` (the log process
    does, in its one loop: no thread of its own to share the GIL with), `close` ends it.

    ``on_flow`` runs in `read_waiting`; an exception from it is counted in ``errors``.
    It gets what ``parse`` makes of a DESTROY message that is not None: by default the
    ``EndedFlow`` (``DestroyParser``); the log process passes ``FlowEndLines``, whose
    rendered events go straight to its outputs. With ``many`` (``FlowEndLines.many``) a whole
    recvmmsg read is rendered in one call and ``on_flow`` gets its ``LineBlock`` (unless empty).
    Counters: ``received`` DESTROY messages read, ``reported`` flows handed to ``on_flow``,
    ``lost`` times the kernel dropped events (each time one or more), ``errors`` other failures
    (``last_error`` the latest). ``filtered`` says whether the kernel filters events by mark.
    """

    def __init__(
        self,
        on_flow: Callable[[Any], None],
        *,
        receive_buffer: int = RECEIVE_BUFFER,
        open_socket: OpenSocket = open_destroy_socket,
        many_reads: bool = True,
        parse: Callable[[bytes], Any] | None = None,
        many: Callable[[int, int, int, int], ReadLines | None] | None = None,
    ) -> None:
        self._on_flow, self._receive_buffer, self._open = on_flow, receive_buffer, open_socket
        self.received = self.reported = self.lost = self.errors = 0
        self.last_error = ""
        self.filtered = False
        self._buffer = bytearray(1 << 16)
        self._parse = parse or DestroyParser()
        self._many = many
        self._lib = library() if many_reads else None  # recvmmsg: many reports a system call
        self._slots = bytearray(MANY_SLOT * MANY_READS)
        self._lengths = array("I", bytes(4 * MANY_READS))
        self._slots_at, self._lengths_at = address(self._slots), address(self._lengths)
        self._sock: socket.socket | None = None  # open()'s subscription

    def open(self) -> None:
        """Subscribe (in the calling thread's network namespace); FlowEndError when that
        fails."""
        try:
            self._sock, self.filtered = self._open(self._receive_buffer)
        except OSError as error:
            raise FlowEndError(f"subscribing to conntrack events failed: {error}") from error

    def fileno(self) -> int:
        assert self._sock is not None, "fileno() before open()"
        return self._sock.fileno()

    def read_waiting(self, most: int = 4096) -> int:
        """Handle the reports waiting (at most `most` reads), never blocking; the reads made."""
        assert self._sock is not None, "read_waiting() before open()"
        reads = 0
        try:
            while reads < most and self._receive(self._sock):
                reads += 1
        except Exception as error:  # the listener outlives every error
            self._failed(error)
        return reads

    def close(self) -> None:
        """End an `open()` subscription."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _receive(self, sock: socket.socket) -> bool:
        """One read's reports (up to MANY_READS messages with the C library); False once the
        socket is empty."""
        if self._lib is not None:
            return self._receive_many(sock.fileno(), self._lib)
        try:
            size = sock.recv_into(self._buffer)
        except BlockingIOError:
            return False
        except OSError as error:
            if error.errno != errno.ENOBUFS:
                raise
            self.lost += 1  # the kernel dropped events: the buffer was full
            return True
        self._handle_read(memoryview(self._buffer)[:size])
        return True

    def _receive_many(self, fd: int, lib: ctypes.CDLL) -> bool:
        count = lib.pg_recv_many(fd, self._slots_at, MANY_SLOT, MANY_READS, self._lengths_at)
        if count in (-errno.EAGAIN, -errno.EWOULDBLOCK):
            return False
        if count == -errno.ENOBUFS:
            self.lost += 1  # the kernel dropped events: the buffer was full
            return True
        if count < 0:
            raise OSError(-count, os.strerror(-count))
        if self._many is not None and self._take_many(count):
            return True
        view = memoryview(self._slots)
        for index, length in enumerate(self._lengths[:count]):
            if length & CUT:
                self._failed(ValueError(f"a conntrack report over {MANY_SLOT} bytes"))
                continue
            self._handle_read(view[index * MANY_SLOT : index * MANY_SLOT + length])
        return True

    def _take_many(self, count: int) -> bool:
        """A read's reports rendered at once (`many`); False when they did not fit."""
        assert self._many is not None
        found = self._many(self._slots_at, MANY_SLOT, self._lengths_at, count)
        if found is None:
            return False
        self.received += found.messages
        if found.failures:
            self.errors += found.failures
            self.last_error = f"ValueError: {found.last_failure}"
        if len(found.block):
            try:
                self._on_flow(found.block)
                self.reported += len(found.block)
            except Exception as error:  # the callback's failure: counted
                self._failed(error)
        return True

    def _handle_read(self, data: memoryview) -> None:
        for message in destroy_messages(data):
            self.received += 1
            self._handle(message)

    def _handle(self, message: bytes) -> None:
        try:
            ended = self._parse(message)
            if ended is not None:
                self._on_flow(ended)
                self.reported += 1
        except Exception as error:  # one bad message or callback: counted
            self._failed(error)

    def _failed(self, error: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(error).__name__}: {error}"
