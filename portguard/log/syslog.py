"""Syslog sink: RFC 5424 messages over UDP, TCP or TLS (RFC 5425), octet-counted on streams.

The sink runs in its own writer thread (writer.py), so a slow or absent collector costs that
sink's bounded queue, never a verdict. Over TCP and TLS the frames of a run of events are
collected by `write` and sent together by `flush` (the writer flushes after every run, and at
least every FLUSH_EVERY events: writer.py), so a busy stream costs a system call per run, not
per event; the writer counts a run as written only once its flush succeeded. Delivery is at
most once:

- while the collector is unreachable, `write` holds its event and retries the connection with
  backoff (0.5, 1, 2, 5, 10 s), so the sink's queue fills and the writer counts what overflows;
  `interrupt()` (shutdown, from another thread) makes a waiting `write` raise OSError at once;
- a connection the collector closed between two events is replaced before the next event;
- a run whose send failed part-way is lost (OSError), all of it counted as dropped even if
  the collector got its first frames: nothing is ever sent twice.

An event accepted by the kernel just before the collector dies is lost without notice: plain
TCP syslog (RFC 6587) has no acknowledgements. UDP is fire and forget: a send error raises
OSError for that event, nothing waits. TLS verifies the collector's certificate (the system
trust store or `ca`) and name (`server_name` or the address's host); `cert` and `key` give a
client certificate for collectors that require mutual TLS.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

from portguard.core.events.lines import STAMP_AT, STAMP_SIZE, LineBlock, LogItem, RenderedEvent
from portguard.log import formats
from portguard.log.sinks import LEVELS, StateCallback, severity
from portguard.log.syslogtarget import (
    Target,
    TlsSettings,
    client_context,
    describe,
    parse_address,
)

FACILITY_DAEMON = 3
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)  # seconds between connection attempts, the last repeats
CONNECT_TIMEOUT = 10.0  # seconds for the TCP connect and the TLS handshake
SETTLE = 0.2  # seconds a new connection must stay open (a collector refusing us closes it)
SLICE = 0.1  # seconds a blocked connect, handshake or send waits before checking interrupt()
USER_TIMEOUT_MS = 30_000  # data unacknowledged this long: the collector is gone (TCP_USER_TIMEOUT)
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


_PRI = {level: FACILITY_DAEMON * 8 + number for level, number in LEVELS.items()}


def syslog_frame(event: LogItem, hostname: str, pid: int, fmt: str = "ecs") -> bytes:
    """One RFC 5424 message: header, no structured data, the rendered event as MSG."""
    return syslog_header(event, hostname, pid) + formats.render(event, fmt)


def syslog_header(event: LogItem, hostname: str, pid: int) -> bytes:
    """RFC 5424 header of a message, no structured data: what syslog adds to a format's line."""
    pri = FACILITY_DAEMON * 8 + severity(event)
    stamp = event.stamp if isinstance(event, RenderedEvent) else event.get("@timestamp", "-")
    return f"<{pri}>1 {stamp} {hostname} portguard {pid} - - ".encode()


def block_frames(block: LineBlock, hostname: str, pid: int) -> list[bytes]:
    """The octet-counted messages of a block's ECS lines: what `syslog_frame` and
    `octet_count` make of each of its events, in one loop."""
    tail = f" {hostname} portguard {pid} - - ".encode()
    frames, data, start = [], block.data, 0
    for end, level in zip(block.ends, block.levels, strict=True):
        line = data[start : end - 1]
        message = b"<%d>1 %s%s%s" % (_PRI[level], line[STAMP_AT : STAMP_AT + STAMP_SIZE], tail,
                                     line)  # fmt: skip
        frames.append(b"%d %s" % (len(message), message))
        start = end
    return frames


def octet_count(message: bytes) -> bytes:
    """RFC 6587 / RFC 5425 framing: MSG-LEN SP SYSLOG-MSG."""
    return b"%d %s" % (len(message), message)


class Interrupted(ConnectionAbortedError):
    """interrupt() was called: the sink is shutting down."""


# --- the stream transport (TCP, TLS): non-blocking sockets, waits that heed interrupt() -----


def _wait(sock: socket.socket, stop: threading.Event, deadline: float, write: bool) -> bool:
    """Wait until `sock` is writable (or readable); False at the deadline. Interrupted when
    `stop` is set."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT if write else select.POLLIN)
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if poller.poll(int(min(SLICE, remaining) * 1000) + 1):
            return True
    raise Interrupted("syslog sink interrupted")


def _wait_or_timeout(
    sock: socket.socket, stop: threading.Event, deadline: float, write: bool
) -> None:
    if not _wait(sock, stop, deadline, write):
        raise TimeoutError(errno.ETIMEDOUT, "timed out connecting to the collector")


def _tune(sock: socket.socket) -> None:
    """Non-blocking, and a dead collector is noticed: keepalive and TCP_USER_TIMEOUT."""
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)


def _connect(sock: socket.socket, addr: Any, stop: threading.Event, deadline: float) -> None:
    code = sock.connect_ex(addr)
    if code == errno.EINPROGRESS:
        _wait_or_timeout(sock, stop, deadline, write=True)
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))


def _handshake(sock: ssl.SSLSocket, stop: threading.Event, deadline: float) -> None:
    while True:
        try:
            sock.do_handshake()
            return
        except ssl.SSLWantReadError:
            _wait_or_timeout(sock, stop, deadline, write=False)
        except ssl.SSLWantWriteError:
            _wait_or_timeout(sock, stop, deadline, write=True)


def check_open(sock: socket.socket) -> None:
    """OSError when the collector closed or reset the connection, or sent a TLS alert.

    A collector sends nothing on a syslog connection, except TLS session tickets: whatever
    arrives is read and discarded.
    """
    try:
        while sock.recv(4096):
            pass
    except _WOULD_BLOCK:
        return
    raise ConnectionAbortedError(errno.ECONNABORTED, "the collector closed the connection")


def send_all(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """Send all of `data` on a non-blocking socket, waiting as long as the collector needs."""
    view, sent = memoryview(data), 0
    while sent < len(view):
        try:
            sent += sock.send(view[sent:])
        except (BlockingIOError, ssl.SSLWantWriteError):
            _wait(sock, stop, float("inf"), write=True)
        except ssl.SSLWantReadError:
            _wait(sock, stop, float("inf"), write=False)


def open_stream(
    target: Target,
    context: ssl.SSLContext | None,
    server_name: str,
    stop: threading.Event,
    timeout: float = CONNECT_TIMEOUT,
) -> socket.socket:
    """A connected, non-blocking socket to `target` (TLS verified when `context` is given)
    that stayed open for SETTLE seconds; OSError describing why not."""
    deadline = time.monotonic() + timeout
    failure: OSError = OSError(f"{target.host}: no address")
    for family, kind, proto, _name, addr in socket.getaddrinfo(
        target.host, target.port, type=socket.SOCK_STREAM
    ):
        sock = socket.socket(family, kind, proto)
        try:
            _tune(sock)
            _connect(sock, addr, stop, deadline)
            if context is not None:
                wrap = context.wrap_socket
                sock = wrap(sock, server_hostname=server_name, do_handshake_on_connect=False)
                _handshake(sock, stop, deadline)
            _wait(sock, stop, time.monotonic() + SETTLE, write=False)
            check_open(sock)
            return sock
        except Interrupted:
            sock.close()
            raise
        except OSError as error:
            sock.close()
            failure = error
    raise failure


def _close(sock: socket.socket) -> None:
    """Close; a TLS connection says close_notify first (without waiting for the answer)."""
    if isinstance(sock, ssl.SSLSocket):
        with contextlib.suppress(OSError, ValueError):
            sock.unwrap()
    sock.close()


def _datagram_socket(target: Target) -> socket.socket:
    """A connected UDP socket: the kernel then reports an unreachable collector as an error."""
    family, kind, proto, _name, addr = socket.getaddrinfo(
        target.host, target.port, type=socket.SOCK_DGRAM
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.connect(addr)
    except OSError:
        sock.close()
        raise
    return sock


# --- the sink -------------------------------------------------------------------------------


class SyslogSink:
    """An event sink that sends each event to a syslog collector (see the module docstring)."""

    def __init__(
        self,
        address: str,
        fmt: str = "ecs",
        tls: TlsSettings | None = None,
        backoff: Sequence[float] = BACKOFF,
    ) -> None:
        self.target = parse_address(address)
        if tls is not None and self.target.scheme != "tls":
            raise ValueError(f"syslog TLS settings need a tls:// address, not {address}")
        self.name = f"syslog:{address}"
        self.format = fmt
        # a stream output writes a LineBlock's frames in one go (a datagram is an event)
        self.blocks = fmt == "ecs" and self.target.scheme != "udp"
        self._render = formats.renderer(fmt)  # ValueError for an unknown format
        self.errors = 0  # events that raised OSError (lost)
        self.reconnects = 0  # connections replaced without an outage (collector closed one)
        self.on_state: StateCallback | None = None
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        tls = tls or TlsSettings()
        self._context = client_context(tls) if self.target.scheme == "tls" else None
        self._server_name = tls.server_name or self.target.host
        self._backoff = tuple(backoff) or BACKOFF
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._incoming = select.poll()  # the stream connection: has the collector said anything?
        self._down = False  # inside an outage: on_state(False, ...) was called
        self._failures = 0  # connection attempts failed since the last good connection
        self._frames: list[bytes] = []  # written, not sent yet (streams: sent by `flush`)

    def write(self, event: LogItem | LineBlock) -> None:
        """Send one event (UDP: OSError when it is lost) or collect its frame for `flush`
        (TCP, TLS; a block's frames, when `blocks`)."""
        if isinstance(event, LineBlock):
            self._frames += block_frames(event, self.hostname, self.pid)
            return
        message = syslog_header(event, self.hostname, self.pid) + self._render(event)
        if self.target.scheme != "udp":
            self._frames.append(octet_count(message))
            return
        try:
            self._send_datagram(message)
        except OSError:
            self.errors += 1
            raise

    def flush(self) -> None:
        """Send the frames `write` collected (TCP, TLS); OSError when they are lost."""
        if not self._frames:
            return
        frames, self._frames = b"".join(self._frames), []
        try:
            self._send_frame(frames)
        except OSError:
            self.errors += 1
            raise

    def reopen(self) -> None:
        """Nothing to reopen: a collector is reached by address, not by file name."""

    def interrupt(self) -> None:
        """Shutdown, from another thread: a waiting or blocked write raises OSError within
        SLICE seconds, and later writes never wait."""
        self._stop.set()

    def close(self) -> None:
        self._drop()

    def _send_datagram(self, message: bytes) -> None:
        try:
            if self._sock is None:
                self._sock = _datagram_socket(self.target)
            self._sock.send(message)
        except OSError as error:
            self._report_down(f"{self.target}: {describe(error)}")
            raise
        self._report_up()

    def _send_frame(self, frame: bytes) -> None:
        sock = self._connection()
        try:
            send_all(sock, frame, self._stop)
        except OSError as error:
            self._drop()
            if not isinstance(error, Interrupted):
                self._report_down(f"{self.target}: send failed, event lost: {describe(error)}")
            raise

    def _connection(self) -> socket.socket:
        """The open connection, or a new one: waits (with backoff) until the collector takes
        it. Interrupted when interrupt() was called."""
        if self._sock is not None and self._incoming.poll(0):
            try:
                check_open(self._sock)
            except OSError:
                self._drop()
                self.reconnects += 1
        while self._sock is None:
            if self._stop.is_set():
                raise Interrupted("syslog sink interrupted")
            try:
                self._sock = open_stream(self.target, self._context, self._server_name, self._stop)
                self._incoming.register(self._sock, select.POLLIN)
            except Interrupted:
                raise
            except OSError as error:
                self._report_down(f"{self.target}: cannot connect: {describe(error)}")
                self._stop.wait(self._backoff[min(self._failures, len(self._backoff) - 1)])
                self._failures += 1
        self._failures = 0
        self._report_up()
        return self._sock

    def _drop(self) -> None:
        if self._sock is not None:
            if self.target.scheme != "udp":
                self._incoming.unregister(self._sock)
            _close(self._sock)
            self._sock = None

    def _report_down(self, reason: str) -> None:
        if not self._down:
            self._down = True
            if self.on_state is not None:
                self.on_state(False, reason)

    def _report_up(self) -> None:
        if self._down:
            self._down = False
            if self.on_state is not None:
                self.on_state(True, "")
