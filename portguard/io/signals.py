"""Signals as readable events for a select loop (set_wakeup_fd on a socket pair)."""

from __future__ import annotations

import signal
import socket
from types import FrameType


class SignalPipe:
    """Catches SIGTERM/SIGINT (stop) and SIGHUP (reload); `fileno()` wakes a select loop."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self.stop = False
        self.reload = False
        self.reopen = False
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        signal.signal(signal.SIGUSR1, self._on_reopen)

    def fileno(self) -> int:
        return self._read.fileno()

    def drain(self) -> None:
        try:
            while self._read.recv(512):
                pass
        except BlockingIOError:
            return

    def wake(self) -> None:
        """Wake the select loop from another thread (a finished background job)."""
        try:
            self._write.send(b"\0")
        except (BlockingIOError, OSError):
            return  # already awake, or closing

    def take_reload(self) -> bool:
        wanted, self.reload = self.reload, False
        return wanted

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        self._read.close()
        self._write.close()

    def _on_stop(self, _sig: int, _frame: FrameType | None) -> None:
        self.stop = True

    def take_reopen(self) -> bool:
        wanted, self.reopen = self.reopen, False
        return wanted

    def _on_reopen(self, _sig: int, _frame: FrameType | None) -> None:
        self.reopen = True

    def _on_reload(self, _sig: int, _frame: FrameType | None) -> None:
        self.reload = True
