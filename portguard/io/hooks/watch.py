"""Self-healing hooks: a thread that puts portguard's hook back when another tool breaks it.

Firewall managers and scripts (``nft flush ruleset``, ``iptables -F``, a firewalld or ufw
reload, a rule inserted above portguard's jump) can remove or bypass the hook while the daemon
runs; the kernel then lets every connection through unseen. ``HookWatch`` asks the backend every
``interval`` seconds whether the hook is still exactly as installed and, when it is not,
installs it again (``install`` is idempotent and puts the jump first) and reports what was wrong.

``repair_reason`` is the pure decision: a ``HookStatus`` in, what is wrong (or None) out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

from portguard.io.hooks.backend import HookBackend, HookError, HookSpec, HookStatus

DEFAULT_INTERVAL: Final = 2.0  # seconds between checks: a broken hook is back within about this


def repair_reason(status: HookStatus) -> str | None:
    """What is wrong with the hook ``status`` describes; None when it is intact.

    ``status`` must come from ``backend.status(spec)``: only with the spec does ``complete``
    compare what the kernel holds with what the daemon installed (rules, jumps, their order).
    """
    if not status.installed:
        state = "missing"
    elif status.rule_sets > 1:
        state = "duplicated"
    elif not status.complete:
        state = "altered"
    else:
        return None
    return f"{state}: {'; '.join(line.strip() for line in status.detail.splitlines() if line)}"


def error_text(error: Exception) -> str:
    """A failure as one line: a HookError names its command already."""
    return str(error) if isinstance(error, HookError) else f"{type(error).__name__}: {error}"


class HookWatch:
    """Checks the hook every ``interval`` seconds in a daemon thread and repairs it.

    ``on_repair(reason)`` follows a repair; ``on_error(message)`` reports a failed check or a
    repair that did not take, each distinct message once until a check succeeds again (then the
    record clears, so a later outage is reported anew). A repair that did not take is retried
    at every check, but reported again only once it takes or the problem changes: a status that
    stays wrong whatever is installed costs a reinstall per check, not an event per check. Both
    callbacks run in the watch thread, under the watch's lock.
    """

    def __init__(
        self,
        backend: HookBackend,
        spec: HookSpec,
        on_repair: Callable[[str], None],
        interval: float = DEFAULT_INTERVAL,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"the check interval must be positive, not {interval}")
        self._backend = backend
        self._spec = spec
        self._on_repair = on_repair
        self._on_error = on_error
        self.interval = interval
        self._lock = threading.Lock()  # held by a check and by stop: no install after stop
        self._stopping = threading.Event()
        self._reported: set[str] = set()
        self._unrepaired: str | None = None  # the problem of the last repair that did not take
        self._thread = threading.Thread(target=self._run, name="portguard-hookwatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop checking. When this returns, no check, install or callback runs any more.

        A check in progress is waited for (each of its commands ends within the command
        timeout); otherwise this returns at once.
        """
        self._stopping.set()
        with self._lock:  # a check holding the lock finishes; later ones see the flag
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def check(self) -> str | None:
        """One check (and repair): what was wrong, or None (intact, failed, or stopped)."""
        with self._lock:
            if self._stopping.is_set():
                return None
            try:
                reason = self._repair_if_needed()
            except Exception as error:  # the watch must outlive any failure: report it
                self._report(error_text(error))
                return None
            self._reported.clear()
            return reason

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.check()

    def _repair_if_needed(self) -> str | None:
        reason = repair_reason(self._backend.status(self._spec))
        if reason is None:
            self._unrepaired = None
            return None
        self._backend.install(self._spec)
        left = repair_reason(self._backend.status(self._spec))
        retried = reason == self._unrepaired
        self._unrepaired = None if left is None else reason
        if left is None or not retried:
            self._on_repair(reason)
        if left is not None:
            raise HookError(f"{self._backend.name} hooks still {left} after a repair")
        return reason

    def _report(self, message: str) -> None:
        if message in self._reported:
            return
        self._reported.add(message)
        if self._on_error is not None:
            self._on_error(message)
