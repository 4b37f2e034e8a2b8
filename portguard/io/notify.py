"""systemd's notify protocol: one datagram to $NOTIFY_SOCKET (no extra dependency).

The watchdog: with `WatchdogSec=` in the unit, systemd passes $WATCHDOG_USEC (and $WATCHDOG_PID)
and restarts the service when no `WATCHDOG=1` arrives for that long. portguard sends it from the
packet loop's tick (`Heartbeat`), so a loop that hangs stops the pings. With forked workers only
the parent talks to systemd: each worker's loop beats into a pipe (`pipe_beat`), and the parent
pings only while every worker has beaten recently (`WorkerWatchdog`).
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Mapping

WATCHDOG_SHARE = 4  # ping every quarter of the watchdog time (systemd asks for every half)
STALE_AFTER = 2  # a worker silent for this many ping intervals counts as stuck


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


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping(text: str | None = None) -> bool:
    return notify("STOPPING=1", *([f"STATUS={text}"] if text else []))


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between `WATCHDOG=1` pings; None when systemd asked for none, or asked another
    process ($WATCHDOG_PID names the one it watches)."""
    env = os.environ if environ is None else environ
    usec, owner = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1e6 / WATCHDOG_SHARE


class Heartbeat:
    """Calls `send` at most once per `interval` seconds of the `now` given to `beat`.

    A loop calls `beat(now)` on every round and never blocks longer than `wait(now, ...)`,
    so the beats keep coming exactly as long as the loop keeps turning. No interval: never.
    """

    def __init__(self, interval: float | None, send: Callable[[], object]) -> None:
        self.interval = interval
        self._send = send
        self._due = -math.inf

    def beat(self, now: float) -> bool:
        if self.interval is None or now < self._due:
            return False
        self._due = now + self.interval
        self._send()
        return True

    def wait(self, now: float, longest: float) -> float:
        """How long the loop may block at most before it must beat again."""
        if self.interval is None:
            return longest
        return max(0.0, min(longest, self._due - now))


def watchdog(environ: Mapping[str, str] | None = None) -> Heartbeat:
    """The systemd watchdog of this process (a heartbeat that never sends when there is none)."""
    return Heartbeat(watchdog_interval(environ), lambda: notify("WATCHDOG=1"))


def pipe_beat(fd: int, index: int) -> Callable[[], bool]:
    """A forked worker's beat: its index, one byte, into the parent's pipe (never blocks)."""
    os.set_blocking(fd, False)
    token = bytes([index])

    def send() -> bool:
        try:
            os.write(fd, token)
        except OSError:  # full (the parent is stuck: it stops pinging anyway) or gone
            return False
        return True

    return send


class WorkerWatchdog:
    """The forked parent's watchdog: `WATCHDOG=1` only while every worker beat recently.

    `fd` is the read end of the pipe the workers beat into (`pipe_beat`); `tick(now)` from the
    parent's loop pings systemd at `interval` while no worker has been silent for longer than
    STALE_AFTER intervals. A worker that never beat yet counts as silent.
    """

    def __init__(self, fd: int, workers: int, interval: float) -> None:
        self.fd = fd
        self.heard = [-math.inf] * workers
        self.stale_after = STALE_AFTER * interval
        self.heartbeat = Heartbeat(interval, lambda: notify("WATCHDOG=1"))
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def seen(self, tokens: bytes, now: float) -> None:
        for index in tokens:
            if index < len(self.heard):
                self.heard[index] = now

    def all_alive(self, now: float) -> bool:
        return all(now - heard <= self.stale_after for heard in self.heard)

    def tick(self, now: float) -> bool:
        return self.all_alive(now) and self.heartbeat.beat(now)

    def wait(self, now: float, longest: float) -> float:
        return self.heartbeat.wait(now, longest)

    def drain(self) -> None:
        """Read what the workers wrote (the parent's selector calls this when it is readable)."""
        try:
            tokens = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        self.seen(tokens, time.monotonic())

    def close(self) -> None:
        os.close(self.fd)
