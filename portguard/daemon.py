"""The daemon: wires config, policy, gate, kernel queue, hooks and log; handles signals.

One worker (the default) runs in this process. With `workers = N` the daemon forks N
workers, one kernel queue each (the kernel spreads flows over them); the parent installs and
removes the hooks and forwards SIGHUP/SIGTERM. Workers die with the parent (PDEATHSIG), so a
crashed daemon never leaves a bound queue behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

from portguard import __version__
from portguard.config import Config
from portguard.control import ControlServer
from portguard.decisionlog.record import Observer, lifecycle_event
from portguard.decisionlog.writer import EventQueue, EventWriter
from portguard.errors import SourceError
from portguard.io import notify
from portguard.io.hook import (
    HookBackend,
    HookError,
    HookSpec,
    cleanup_leftovers,
    select_backend,
)
from portguard.io.hookwatch import HookWatch
from portguard.io.queuestats import bound_queues
from portguard.io.signals import SignalPipe
from portguard.policy import RuleSet
from portguard.policyload import Reply
from portguard.worker import StartupError, Worker, capped, make_writer

PR_SET_PDEATHSIG = 1
HOOK_CHECK_INTERVAL = 2.0  # seconds: a removed or bypassed hook is back within about this


def hook_spec(config: Config) -> HookSpec:
    return HookSpec(
        queue_num=config.queue.num,
        workers=config.queue.workers,
        ports=tuple(config.hook.ports),
        chains=tuple(config.hook.chains),
        fail_open=config.queue.fail_mode == "open",
    )


class Daemon:
    """The running service: one config, its hook backend, its workers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.observer = Observer(socket.gethostname(), __version__)
        self.backend: HookBackend = select_backend(config.hook.backend)
        self.spec = hook_spec(config)
        self.hook_watch: HookWatch | None = None  # puts the hooks back while they are installed

    def run(self) -> int:
        from portguard.policy import load_ruleset

        ruleset = load_ruleset(self.config.rules.paths)  # fail before touching the kernel
        taken = bound_queues(self.config.queue.num, self.config.queue.workers)
        if taken:
            # another portguard (or any NFQUEUE program) is running here: cleaning "leftovers"
            # would tear down its hooks
            raise StartupError(f"queue {taken[0]} is already bound by another process")
        cleanup_leftovers()
        if self.config.queue.workers == 1:
            worker = Worker(self.config, self.config.queue.num, ruleset, self.observer,
                            control=self.config.daemon.control_socket)  # fmt: skip
            try:
                return worker.run(on_bound=self._install_hooks, on_stop=self._remove_hooks)
            finally:
                self._stop_hook_watch()  # the loop died: the hooks stay, unwatched
        return self._run_forked(ruleset)

    def _install_hooks(self, writer: EventQueue) -> None:
        self.backend.install(self.spec)
        writer.submit(self._lifecycle("hook-installed", f"{self.backend.name} hooks installed"))
        self._start_hook_watch(writer)

    def _remove_hooks(self, writer: EventQueue) -> None:
        self._stop_hook_watch()  # first: a check still running would put the hooks back
        self.backend.remove()
        writer.submit(self._lifecycle("hook-removed", f"{self.backend.name} hooks removed"))

    def _start_hook_watch(self, writer: EventQueue) -> None:
        name = self.backend.name

        def repaired(problem: str) -> None:
            message = f"{name} hooks reinstalled; they were {problem}"
            writer.submit(self._lifecycle("hook-repaired", message, problem=problem))

        def failed(problem: str) -> None:
            message = f"checking or repairing the {name} hooks failed: {problem}"
            writer.submit(self._lifecycle("hook-repair-failed", message, problem=problem))

        self.hook_watch = HookWatch(self.backend, self.spec, repaired, HOOK_CHECK_INTERVAL, failed)
        self.hook_watch.start()

    def _stop_hook_watch(self) -> None:
        if self.hook_watch is not None:
            self.hook_watch.stop()
            self.hook_watch = None

    def _lifecycle(self, action: str, message: str, **extra: object) -> dict[str, object]:
        return lifecycle_event(
            action, message, self.observer, time.time(), backend=self.backend.name, **extra
        )

    def _run_forked(self, ruleset: object) -> int:
        from portguard.policy import RuleSet

        assert isinstance(ruleset, RuleSet)
        # handlers and the control socket first: before any worker, before any hook
        supervisor = Supervisor(self.config, ruleset)
        ready_r, ready_w = os.pipe()
        for index in range(self.config.queue.workers):
            supervisor.children.append(self._fork_worker(index, ruleset, ready_w))
        os.close(ready_w)
        writer = supervisor.writer = make_writer(self.config, self.observer, role="supervisor")
        deciding = False
        try:
            _await_ready(ready_r, len(supervisor.children))
            self._install_hooks(writer)
            notify.ready(f"deciding on {len(supervisor.children)} queues")
            deciding = True
            return supervisor.wait()
        finally:
            os.close(ready_r)
            self._stop_hook_watch()  # before any removal; a dead worker leaves the hooks unwatched
            if supervisor.signals.stop or not deciding:  # a dead worker leaves the fail mode on
                self._remove_hooks(writer)
            _stop_children(supervisor.children)
            writer.close()

    def _fork_worker(self, index: int, ruleset: object, ready_w: int) -> int:
        from portguard.policy import RuleSet

        assert isinstance(ruleset, RuleSet)
        parent = os.getpid()
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            _become_worker(parent)
            worker = Worker(self.config, self.config.queue.num + index, ruleset, self.observer,
                            reevaluates=index == 0)  # fmt: skip
            code = worker.run(on_bound=lambda _w: _signal_ready(ready_w), on_stop=None)
        finally:
            os._exit(code)


def _become_worker(parent: int) -> None:
    """In a fresh child: default signal handling until the worker's own, die with the parent."""
    signal.set_wakeup_fd(-1)  # the parent's wake-up socket is not ours
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    os.environ.pop("NOTIFY_SOCKET", None)  # only the parent speaks to systemd


def _signal_ready(ready_w: int) -> None:
    os.write(ready_w, b".")
    os.close(ready_w)  # so the parent sees EOF when every worker has either bound or died


def _await_ready(ready_r: int, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    seen = 0
    os.set_blocking(ready_r, False)
    while seen < count:
        if time.monotonic() > deadline:
            raise StartupError("workers did not bind their queues in time")
        try:
            chunk = os.read(ready_r, 64)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        if not chunk:
            if seen < count:
                raise StartupError("a worker exited before binding its queue")
            return
        seen += len(chunk)


class Supervisor:
    """The parent of forked workers: forwards reloads, stops on SIGTERM/SIGINT or a dead worker.

    It serves the control socket itself: a `reload` request is checked here first (the parent
    loads the rule files aside); only a valid policy is passed on to the workers (SIGHUP).
    """

    def __init__(self, config: Config, ruleset: RuleSet) -> None:
        self.config = config
        self.policy = ruleset  # the last policy validated here: `previous` for the next load
        self.children: list[int] = []
        path = config.daemon.control_socket
        try:
            self.control = ControlServer(path, self.on_control)
        except OSError as error:
            raise StartupError(f"cannot open the control socket {path}: {error}") from None
        self.signals = SignalPipe()
        self.writer: EventWriter | None = None  # the parent's own outputs (hook events)

    def wait(self) -> int:
        with selectors.DefaultSelector() as selector:
            selector.register(self.signals.fileno(), selectors.EVENT_READ, self.signals.drain)
            self.control.register(selector)
            try:
                return self._watch(selector)
            finally:
                self.control.close()
                self.signals.close()

    def _watch(self, selector: selectors.BaseSelector) -> int:
        while not self.signals.stop:
            for key, _ in selector.select(timeout=0.2):
                key.data()
            if self.signals.take_reload():
                self._forward_reload()
            if self.signals.take_reopen():
                self._reopen()
            pid, _status = os.waitpid(-1, os.WNOHANG)
            if pid and not self.signals.stop:
                print(f"portguard: worker {pid} exited unexpectedly", file=sys.stderr)
                self.children.remove(pid)
                return 1
        return 0

    def on_control(self, request: dict[str, Any], reply: Reply) -> None:
        if request["command"] != "reload":
            reply({"ok": False, "errors": [f"unknown command {request['command']!r}"]})
            return
        from portguard.policy import load_ruleset

        try:
            ruleset = load_ruleset(self.config.rules.paths, previous=self.policy)
        except SourceError as error:
            reply({"ok": False, "errors": capped(list(error.messages))})
            return
        self.policy = ruleset
        self._forward_reload()
        reply({"ok": True, "policy_version": ruleset.version, "rules": len(ruleset.rules)})

    def _reopen(self) -> None:
        """SIGUSR1 (logrotate): reopen the parent's file outputs and pass it on to the workers
        (which may have got it too: reopening twice is harmless)."""
        if self.writer is not None:
            self.writer.reopen()
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)

    def _forward_reload(self) -> None:
        notify.reloading()
        for pid in self.children:
            os.kill(pid, signal.SIGHUP)
        notify.ready(f"reload sent to {len(self.children)} workers")


def _stop_children(children: list[int], grace: float = 10.0) -> None:
    """SIGTERM the workers, wait up to `grace` seconds, then SIGKILL what is left."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    waiting = set(children)
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    continue
            waiting.discard(pid)
        time.sleep(0.05)
    for pid in waiting:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run(config: Config) -> int:
    try:
        return Daemon(config).run()
    except SourceError as error:
        for message in error.messages:
            print(message, file=sys.stderr)
        return 1
    except HookError as error:
        print(f"portguard: installing the hooks failed: {error}", file=sys.stderr)
        return 1
    except StartupError as error:
        print(f"portguard: {error}", file=sys.stderr)
        return 1
