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
import threading
import time
from typing import Any

from portguard import __version__
from portguard.config import Config
from portguard.control import ControlServer
from portguard.control import request as control_request
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
from portguard.metrics import MetricsServer, control_fetch
from portguard.policy import RuleSet
from portguard.policyload import LoadResult, PolicyLoad, Reply
from portguard.status import DaemonFacts, WatchedHook, collect, gather, worker_socket
from portguard.worker import StartupError, Worker, capped, make_writer

PR_SET_PDEATHSIG = 1
HOOK_CHECK_INTERVAL = 2.0  # seconds: a removed or bypassed hook is back within about this
WORKER_STATUS_TIMEOUT = 2.0  # seconds the parent waits for each worker's status


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
        self.started = time.time()
        # remembers what the hook watch last saw, for `portguard status`
        self.hook = WatchedHook(select_backend(config.hook.backend))
        self.backend: HookBackend = self.hook
        self.metrics: MetricsServer | None = None
        self.spec = hook_spec(config)
        self.hook_watch: HookWatch | None = None  # puts the hooks back while they are installed
        self.beat: tuple[int, float] | None = None  # forked workers: (pipe fd, interval)
        self.hooks_ours = False  # whether this run touched the hooks (a stop may remove them)

    def run(self) -> int:
        from portguard.policy import load_ruleset

        ruleset = load_ruleset(self.config.rules.paths)  # fail before touching the kernel
        # readable by root only (0440): the portguard user learns it when binding fails
        taken = bound_queues(self.config.queue.num, self.config.queue.workers)
        if taken:
            # another portguard (or any NFQUEUE program) is running here: cleaning "leftovers"
            # would tear down its hooks
            raise StartupError(f"queue {taken[0]} is already bound by another process")
        if self.config.queue.workers == 1:
            worker = Worker(self.config, self.config.queue.num, ruleset, self.observer,
                            control=self.config.daemon.control_socket)  # fmt: skip
            worker.facts = self.facts()
            try:
                return worker.run(on_bound=self._install_hooks, on_stop=self._remove_hooks)
            finally:
                self._stop_hook_watch()  # the loop died: the hooks stay, unwatched
                self._stop_metrics()
        return self._run_forked(ruleset)

    def facts(self) -> DaemonFacts:
        return DaemonFacts.of(self.config, self.started, os.getpid(), self.hook)

    def _start_metrics(self) -> None:
        """The Prometheus endpoint, when configured (after every fork: its thread and socket
        stay in this process)."""
        address = self.config.metrics.address
        if address is None or self.metrics is not None:
            return
        server = MetricsServer(*address, control_fetch(self.config.daemon.control_socket))
        try:
            server.start()
        except OSError as error:
            listen = self.config.metrics.listen
            raise StartupError(f"cannot listen for metrics on {listen}: {error}") from None
        self.metrics = server

    def _stop_metrics(self) -> None:
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None

    def _install_hooks(self, writer: EventQueue) -> None:
        self._start_metrics()  # before the hooks: a port in use fails the start cleanly
        # our queues are bound, so no other daemon runs here: what hooks exist are leftovers
        self.hooks_ours = True
        self._clean_up_leftovers()
        self.backend.install(self.spec)
        writer.submit(self._lifecycle("hook-installed", f"{self.backend.name} hooks installed"))
        self._start_hook_watch(writer)

    def _clean_up_leftovers(self) -> None:
        """Remove what a crashed run left. With keep_on_stop this backend's hooks stay until
        install replaces them in one step, so the hooked ports stay closed across a restart."""
        if not self.config.hook.keep_on_stop:
            cleanup_leftovers()
            return
        for name in ("nftables", "iptables"):
            other = select_backend(name)
            if other.name == self.backend.name:
                continue
            try:
                installed = other.status().installed
            except HookError:  # its tool or kernel support is missing: nothing to clean
                continue
            if installed:
                other.remove()

    def _remove_hooks(self, writer: EventQueue) -> None:
        self._stop_hook_watch()  # first: a check still running would put the hooks back
        if not self.hooks_ours:  # start-up failed first: the hooks there are not this run's
            return
        if self.config.hook.keep_on_stop:  # fail_mode "closed": connections wait or fail
            message = f"{self.backend.name} hooks kept (keep_on_stop): hooked ports stay closed"
            writer.submit(self._lifecycle("hook-kept", message))
            return
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
        supervisor = Supervisor(self.config, ruleset, self.facts())
        supervisor.watchdog = self._worker_watchdog()
        ready_r, ready_w = os.pipe()
        for index in range(self.config.queue.workers):
            supervisor.children.append(self._fork_worker(index, ruleset, ready_w))
        os.close(ready_w)
        if self.beat is not None:
            os.close(self.beat[0])  # the workers hold it now
        writer = supervisor.writer = make_writer(self.config, self.observer, role="supervisor")
        deciding = False
        try:
            _await_ready(ready_r, len(supervisor.children))
            self._install_hooks(writer)
            notify.ready(f"deciding on {len(supervisor.children)} queues")
            deciding = True
            return supervisor.wait()
        finally:
            notify.stopping()
            os.close(ready_r)
            self._stop_hook_watch()  # before any removal; a dead worker leaves the hooks unwatched
            if supervisor.signals.stop or not deciding:  # a dead worker leaves the fail mode on
                self._remove_hooks(writer)
            self._stop_metrics()
            _stop_children(supervisor.children)
            writer.close()

    def _worker_watchdog(self) -> notify.WorkerWatchdog | None:
        """With systemd's watchdog on: a pipe the workers' loops beat into (`self.beat`); the
        parent pings systemd only while every worker beats."""
        interval = notify.watchdog_interval()
        if interval is None:
            return None
        beat_r, beat_w = os.pipe()
        self.beat = (beat_w, interval)
        return notify.WorkerWatchdog(beat_r, self.config.queue.workers, interval)

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
            queue = self.config.queue.num + index
            private = worker_socket(self.config.daemon.control_socket, queue)
            worker = Worker(self.config, queue, ruleset, self.observer,
                            control=private, primary=index == 0)  # fmt: skip
            worker.private_control = True  # the parent asks it for its counters (status)
            if self.beat is not None:
                fd, interval = self.beat
                worker.heartbeat = notify.Heartbeat(interval, notify.pipe_beat(fd, index))
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
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)  # only the parent speaks to systemd


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

    def __init__(self, config: Config, ruleset: RuleSet, facts: DaemonFacts) -> None:
        self.config = config
        self.facts = facts
        self.policy = ruleset  # the last policy validated here: `previous` for the next load
        self.children: list[int] = []
        path = config.daemon.control_socket
        try:
            self.control = ControlServer(path, self.on_control)
        except OSError as error:
            raise StartupError(f"cannot open the control socket {path}: {error}") from None
        self.signals = SignalPipe()
        self.writer: EventWriter | None = None  # the parent's own outputs (hook events)
        self.watchdog: notify.WorkerWatchdog | None = None  # systemd's, fed while workers beat
        self.loads = PolicyLoad(self._load, self.signals.wake)  # SIGHUP's check, in a thread

    def wait(self) -> int:
        with selectors.DefaultSelector() as selector:
            selector.register(self.signals.fileno(), selectors.EVENT_READ, self.signals.drain)
            self.control.register(selector)
            if self.watchdog is not None:
                selector.register(self.watchdog.fileno(), selectors.EVENT_READ, self.watchdog.drain)
            try:
                return self._watch(selector)
            finally:
                self.control.close()
                self.signals.close()
                if self.watchdog is not None:
                    self.watchdog.close()

    def _watch(self, selector: selectors.BaseSelector) -> int:
        while not self.signals.stop:
            for key, _ in selector.select(self._timeout()):
                key.data()
            if self.watchdog is not None:
                self.watchdog.tick(time.monotonic())
            if self.signals.take_reload():
                self._reload_on_signal()
            loaded = self.loads.collect()
            if loaded is not None:
                self._reloaded(loaded)
            if self.signals.take_reopen():
                self._reopen()
            dead = self._dead_child()
            if dead and not self.signals.stop:
                print(f"portguard: worker {dead} exited unexpectedly", file=sys.stderr)
                self.children.remove(dead)
                return 1
        return 0

    def _timeout(self, longest: float = 0.2) -> float:
        if self.watchdog is None:
            return longest
        return self.watchdog.wait(time.monotonic(), longest)

    def _dead_child(self) -> int:
        """A worker that exited (only workers: hook commands run by threads are theirs)."""
        for pid in self.children:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return pid
        return 0

    def on_control(self, request: dict[str, Any], reply: Reply) -> None:
        if request["command"] == "status":  # in a thread: a slow worker must not hold signals
            threading.Thread(target=self._answer_status, args=(reply,), daemon=True).start()
            return
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

    def _answer_status(self, reply: Reply) -> None:
        """Every worker's counters (through its own socket) merged with the parent's."""
        try:
            sections, failures = gather(
                self.facts,
                lambda path: control_request(path, "status", timeout=WORKER_STATUS_TIMEOUT),
            )
            extra = [s.fields() for s in self.writer.stats()] if self.writer is not None else []
            reply(collect(self.facts, sections, failures, extra))
        except Exception as error:  # the client must get an answer whatever went wrong
            reply({"ok": False, "errors": [f"status failed: {error!r}"]})

    def _reopen(self) -> None:
        """SIGUSR1 (logrotate): reopen the parent's file outputs and pass it on to the workers
        (which may have got it too: reopening twice is harmless)."""
        if self.writer is not None:
            self.writer.reopen()
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)

    def _reload_on_signal(self) -> None:
        """SIGHUP (systemctl reload): RELOADING=1; the rule files are checked in a thread (this
        loop goes on feeding the watchdog, however slow the resolver), then `_reloaded`."""
        notify.reloading()
        self.loads.request(reason="sighup")

    def _load(self) -> RuleSet:
        from portguard.policy import load_ruleset

        return load_ruleset(self.config.rules.paths, previous=self.policy)

    def _reloaded(self, result: LoadResult) -> None:
        """Pass the reload on (each worker loads the files and logs its reload or reload-failed
        event), then READY=1 with the outcome of the check."""
        if result.ruleset is not None:
            self.policy = result.ruleset
            outcome = f"policy {self.policy.version} on {len(self.children)} queues"
        else:
            outcome = f"reload failed; policy {self.policy.version} kept"
        self._forward_reload()
        notify.ready(outcome)

    def _forward_reload(self) -> None:
        for pid in self.children:
            os.kill(pid, signal.SIGHUP)


def _stop_children(children: list[int], grace: float = 20.0) -> None:
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
