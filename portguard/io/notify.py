"""systemd's notify protocol: one datagram to $NOTIFY_SOCKET (no extra dependency)."""

from __future__ import annotations

import os
import socket
import time


def notify(*fields: str) -> bool:
    """Send `KEY=VALUE` lines to the service manager; False when there is none or it failed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)  # a manager that does not read must never stop the daemon
            sock.sendto("\n".join(fields).encode(), address)
    except OSError:  # includes BlockingIOError: its queue is full, the message is dropped
        return False
    return True


def ready(status: str) -> bool:
    return notify("READY=1", f"STATUS={status}")


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")
