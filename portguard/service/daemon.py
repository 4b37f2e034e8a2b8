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
import signal
import socket
import sys
import time

from portguard import __version__
from portguard.config.model import Config
from portguard.core.errors import HOST_KEPT, SourceError, StartupError
from portguard.core.events.record import Observer, lifecycle_event
from portguard.core.policy import RuleSet
from portguard.io import notify
from portguard.io.hooks.backend import HookBackend, HookError
from portguard.io.hooks.factory import cleanup_leftovers, select_backend
from portguard.io.hooks.watch import HookWatch
from portguard.io.queuestats import bound_queues
from portguard.log.outputs import make_writer
from portguard.log.writer import EventQueue
from portguard.service.hookspec import hook_spec
from portguard.service.metrics import MetricsServer, control_fetch
from portguard.service.policystate import RESOLVED_FILE, save_resolution, saved_resolution
from portguard.service.status import DaemonFacts, worker_socket
from portguard.service.supervisor import Supervisor
from portguard.service.watchedhook import WatchedHook
from portguard.service.worker import Worker

PR_SET_PDEATHSIG = 1
HOOK_CHECK_INTERVAL = 2.0  # seconds: a removed or bypassed hook is back within about this


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
        ruleset, start_events = first_policy(self.config)  # fail before touching the kernel
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
            worker.cache_backend = self.backend.name  # the deny cache's sets are the hook's
            worker.start_events = start_events
            try:
                return worker.run(on_bound=self._install_hooks, on_stop=self._remove_hooks)
            finally:
                self._stop_hook_watch()  # the loop died: the hooks stay, unwatched
                self._stop_metrics()
        return self._run_forked(ruleset, start_events)

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

        self.hook.report_drops_to(writer.submit, self._lifecycle)  # `prequeue-dropped` events
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

    def _run_forked(self, ruleset: RuleSet, start_events: list[StartEvent]) -> int:
        # handlers and the control socket first: before any worker, before any hook
        supervisor = Supervisor(self.config, ruleset, self.facts(), self.observer)
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
            for action, message, extra in start_events:
                writer.submit(self._lifecycle(action, message, **extra))
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

    def _fork_worker(self, index: int, ruleset: RuleSet, ready_w: int) -> int:
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
            worker.cache_backend = self.backend.name
            if self.beat is not None:
                fd, interval = self.beat
                worker.heartbeat = notify.Heartbeat(interval, notify.pipe_beat(fd, index))
            code = worker.run(on_bound=lambda _w: _signal_ready(ready_w), on_stop=None)
        finally:
            os._exit(code)


StartEvent = tuple[str, str, dict[str, object]]


def first_policy(config: Config) -> tuple[RuleSet, list[StartEvent]]:
    """The policy to start with. Host names that do not resolve now (a transient failure: a
    DNS outage at boot) keep their addresses from the state directory, and an event says so;
    a good resolution is kept there for the next start."""
    from portguard.io.policyfiles import load_ruleset

    state = config.daemon.state_dir
    ruleset = load_ruleset(config.rules.paths, previous=saved_resolution(state))
    events: list[StartEvent] = []
    kept = [w.format() for w in ruleset.warnings if w.kind == HOST_KEPT]
    if kept:
        message = (f"{len(kept)} host names did not resolve at start; their last good "
                   f"addresses from {state / RESOLVED_FILE} are used")  # fmt: skip
        extra: dict[str, object] = {"warnings": kept, "policy_version": ruleset.version}
        events.append(("resolve-fallback", message, extra))
    try:
        save_resolution(state, ruleset)
    except OSError as error:
        print(f"portguard: cannot keep the host resolution in {state}: {error}", file=sys.stderr)
    return ruleset, events


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
