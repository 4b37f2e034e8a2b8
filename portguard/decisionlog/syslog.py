"""Syslog sink: RFC 5424 messages over UDP, or TCP with octet-counting framing (RFC 6587).

It runs in the event writer's thread, so a slow or absent collector costs queue space, never
a verdict. A broken TCP connection is dropped and retried after a backoff; events written
while it is down are counted as sink errors (issue 4 adds TLS and a retry buffer).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from portguard.decisionlog.formats import render

FACILITY_DAEMON = 3
SEVERITY = {"error": 3, "warning": 4, "info": 6}
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)

Clock = Callable[[], float]


def syslog_frame(event: dict[str, Any], hostname: str, pid: int, fmt: str = "ecs") -> bytes:
    """One RFC 5424 message: header, no structured data, the JSON event as MSG."""
    level = event.get("log", {}).get("level", "info")
    pri = FACILITY_DAEMON * 8 + SEVERITY.get(level, 6)
    stamp = event.get("@timestamp", "-")
    body = render(event, fmt)
    header = f"<{pri}>1 {stamp} {hostname} portguard {pid} - - "
    return header.encode() + body


def octet_count(message: bytes) -> bytes:
    return str(len(message)).encode() + b" " + message


class SyslogStream:
    """A write-only binary stream to a syslog collector (what a Sink writes to)."""

    def __init__(self, address: str, clock: Clock = time.monotonic, fmt: str = "ecs") -> None:
        parts = urlsplit(address)
        if parts.scheme not in ("udp", "tcp") or not parts.hostname or not parts.port:
            raise ValueError(
                f"syslog address must be udp://host:port or tcp://host:port: {address}"
            )
        self.scheme, self.target = parts.scheme, (parts.hostname, parts.port)
        self.hostname = socket.gethostname()
        self.fmt = fmt
        self.pid = os.getpid()
        self._clock = clock
        self._sock: socket.socket | None = None
        self._failures = 0
        self._retry_at = 0.0

    def send(self, event: dict[str, Any]) -> None:
        message = syslog_frame(event, self.hostname, self.pid, self.fmt)
        sock = self._connected()
        try:
            if self.scheme == "udp":
                sock.sendto(message, self.target)
            else:
                sock.sendall(octet_count(message))
            self._failures = 0
        except OSError:
            self._disconnect()
            raise

    def close(self) -> None:
        self._disconnect(backoff=False)

    def _connected(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if self._clock() < self._retry_at:
            raise ConnectionError("syslog collector unreachable; waiting to retry")
        family = socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET
        kind = socket.SOCK_DGRAM if self.scheme == "udp" else socket.SOCK_STREAM
        sock = socket.socket(family, kind)
        try:
            sock.settimeout(2.0)
            if kind == socket.SOCK_STREAM:
                sock.connect(self.target)
        except OSError:
            sock.close()
            self._disconnect()
            raise
        self._sock = sock
        return sock

    def _disconnect(self, backoff: bool = True) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if backoff:
            self._retry_at = self._clock() + BACKOFF[min(self._failures, len(BACKOFF) - 1)]
            self._failures += 1


class SyslogSink:
    """An event sink that sends each event to a syslog collector."""

    def __init__(self, address: str, fmt: str = "ecs") -> None:
        self.name = f"syslog:{address}"
        self.errors = 0
        self.stream = SyslogStream(address, fmt=fmt)

    def write(self, event: dict[str, Any]) -> None:
        try:
            self.stream.send(event)
        except OSError:
            self.errors += 1

    def reopen(self) -> None:
        """Nothing to reopen: a collector is reached by address, not by file name."""

    def close(self) -> None:
        self.stream.close()
