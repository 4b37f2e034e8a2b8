"""The parent of forked workers (`workers = N`): one reload path, a loop that never blocks.

It owns the daemon's control socket and systemd's notify socket. A reload (SIGHUP,
`portguard reload`, the timed re-resolution of host names) is built ONCE, in the load thread
(portguard.service.policyload), which also writes the compiled policy to the run-time directory
(portguard.service.policystate). The loop then hands that file to every worker over the worker's
private control socket (`adopt`, one short-lived thread per worker); each worker loads it in
its own load thread, swaps it in and answers with the version it now runs. `portguard reload`
is answered only when every worker has answered, and the answer lists each worker's version.
Nothing on this loop reads rule files, resolves names or waits for a worker.
"""

from __future__ import annotations

import contextlib
import os
import queue
import selectors
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portguard.config.model import Config
from portguard.core.errors import PolicyError, Problem, StartupError
from portguard.core.events.record import Observer, lifecycle_event
from portguard.core.policy import RuleSet
from portguard.io import notify
from portguard.io.signals import SignalPipe
from portguard.log.writer import EventWriter
from portguard.service.control import ControlServer
from portguard.service.control import request as control_request
from portguard.service.policyload import (
    LoadResult,
    PolicyLoad,
    Reply,
    capped,
    same_files,
    same_resolution,
)
from portguard.service.policystate import remove_handovers, save_resolution, write_handover
from portguard.service.quarantinestate import forward as forward_quarantine
from portguard.service.status import DaemonFacts, collect, gather, worker_socket

WORKER_STATUS_TIMEOUT = 2.0  # seconds the parent waits for each worker's status
ADOPT_TIMEOUT = 120.0  # seconds a worker may take to load and swap in a handed-over policy
MAX_STATUS_THREADS = 4  # `status` requests being gathered at once; more are told to retry
MAX_HANDOVERS = 4  # policies being handed over at once; a newer build beyond waits its turn


@dataclass
class Handover:
    """A built policy on its way to the workers, and who waits for them to take it."""

    ruleset: RuleSet
    path: Path
    trigger: str
    replies: list[Reply]
    answers: dict[int, dict[str, Any]] = field(default_factory=dict)  # queue -> worker's answer
    newer: set[str] = field(default_factory=set)  # versions handed over after this one


class Supervisor:
    """Serves the control socket, builds reloads aside, stops on SIGTERM/SIGINT or a dead
    worker."""

    def __init__(
        self, config: Config, ruleset: RuleSet, facts: DaemonFacts, observer: Observer
    ) -> None:
        self.config = config
        self.facts = facts
        self.observer = observer
        self.policy = ruleset  # the newest policy built here: `previous` for the next load
        self.children: list[int] = []
        path = config.daemon.control_socket
        self.runtime = path.parent  # hand-over files live next to the control socket
        try:
            self.control = ControlServer(path, self.on_control, on_problem=self._log)
        except OSError as error:
            raise StartupError(f"cannot open the control socket {path}: {error}") from None
        remove_handovers(self.runtime)  # a crashed run's
        self.signals = SignalPipe()
        self.writer: EventWriter | None = None  # the parent's own outputs (hook events)
        self.watchdog: notify.WorkerWatchdog | None = None  # systemd's, fed while workers beat
        self.loads = PolicyLoad(self._load, self.signals.wake)  # the one reload path
        self.handovers: list[Handover] = []
        self._built: Path | None = None  # the last build's hand-over file (load thread -> loop)
        self._adopted: queue.SimpleQueue[tuple[Handover, int, dict[str, Any]]] = queue.SimpleQueue()
        self._status_slots = threading.BoundedSemaphore(MAX_STATUS_THREADS)
        interval = config.rules.resolve_interval
        self._resolve_due = time.monotonic() + interval if interval else None

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
                remove_handovers(self.runtime)

    def _watch(self, selector: selectors.BaseSelector) -> int:
        while not self.signals.stop:
            for key, _ in selector.select(self._timeout()):
                key.data()
            if self.watchdog is not None:
                self.watchdog.tick(time.monotonic())
            self._between_events()
            dead = self._dead_child()
            if dead and not self.signals.stop:
                return self._worker_exited(dead)
        return 0

    def _worker_exited(self, pid: int) -> int:
        """A worker died: the daemon exits 1 (the hooks stay, the fail mode applies). Whoever
        waits on a reload is told why first, not left with a closed connection."""
        queue_num = self.config.queue.num + self.children.index(pid)  # forked in queue order
        print(f"portguard: worker {pid} (queue {queue_num}) exited unexpectedly", file=sys.stderr)
        self.children.remove(pid)
        waiting = [reply for handover in self.handovers for reply in handover.replies]
        answer = {"ok": False, "errors": [f"worker on queue {queue_num} exited"]}
        for reply in [*waiting, *self.loads.abandon()]:
            reply(answer)
        return 1

    def _between_events(self) -> None:
        """Signals, finished builds, workers' answers, idle control clients, timers."""
        if self.signals.take_reload():
            notify.reloading()  # SIGHUP (systemctl reload)
            self.loads.request(reason="sighup")
        self.loads.collect(self._reloaded)  # a finished build handed over (or refused)
        self._collect_adopted()
        if self.signals.take_reopen():
            self._reopen()
        now = time.monotonic()
        self.control.sweep(now)
        if self._resolve_due is not None and now >= self._resolve_due:
            self._resolve_due = now + self.config.rules.resolve_interval
            if self.policy.has_hosts:
                self.loads.request(reason="resolve")

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
        command = request["command"]
        if command == "status":
            self._start_status(reply)
        elif command == "reload":
            self.loads.request(reply, reason="control")  # answered once every worker swapped
        elif command.startswith("quarantine-"):  # each worker keeps its own table: ask all
            threading.Thread(target=self._forward_quarantine, args=(request, reply),
                             daemon=True).start()  # fmt: skip
        else:
            reply({"ok": False, "errors": [f"unknown command {command!r}"]})

    def _start_status(self, reply: Reply) -> None:
        """In a thread (a slow worker must not hold the loop); a bounded number of them."""
        if not self._status_slots.acquire(blocking=False):
            reply({"ok": False, "errors": ["status requests are being answered; try again"]})
            return
        threading.Thread(target=self._answer_status, args=(reply,), daemon=True).start()

    def _answer_status(self, reply: Reply) -> None:
        """Every worker's counters (through its own socket) merged with the parent's."""
        try:
            sections, failures = gather(
                self.facts,
                lambda path: control_request(path, "status", timeout=WORKER_STATUS_TIMEOUT),
            )
            extra = [s.fields() for s in self.writer.stats()] if self.writer is not None else []
            document = collect(self.facts, sections, failures, extra)
            document["control"] = self.control.stats.fields()
            reply(document)
        except Exception as error:  # the client must get an answer whatever went wrong
            reply({"ok": False, "errors": [f"status failed: {error!r}"]})
        finally:
            self._status_slots.release()

    def _forward_quarantine(self, request: dict[str, Any], reply: Reply) -> None:
        sockets = [worker_socket(self.facts.control_socket, q) for q in self.facts.queues]
        ask = lambda path, req: control_request(path, timeout=WORKER_STATUS_TIMEOUT, **req)  # noqa: E731
        reply(forward_quarantine(sockets, request, ask))

    def _reopen(self) -> None:
        """SIGUSR1 (logrotate): reopen the parent's file outputs and pass it on to the workers
        (which may have got it too: reopening twice is harmless)."""
        if self.writer is not None:
            self.writer.reopen()
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)

    def _load(self) -> RuleSet:
        """The load thread: compile once, write the hand-over file, keep the resolution."""
        from portguard.io.policyfiles import load_ruleset

        ruleset = load_ruleset(self.config.rules.paths, previous=self.policy)
        try:
            self._built = write_handover(self.runtime, ruleset)  # read once the loop collects
        except OSError as error:  # disk full, the directory gone: the reload is refused
            reason = error.strerror or str(error)
            message = f"cannot write the policy for the workers: {reason}"
            raise PolicyError([Problem(self.runtime, None, message)]) from None
        try:
            save_resolution(self.config.daemon.state_dir, ruleset)
        except OSError as error:  # the policy is good all the same
            self._log("state-error", f"keeping the host resolution failed: {error}")
        return ruleset

    def _reloaded(self, result: LoadResult) -> None:
        new, path = result.ruleset, self._built
        self._built = None
        if new is None or path is None:
            self._refuse(result)
            return
        for warning in new.warnings:  # e.g. a host name that failed keeps its addresses
            self._log("reload-warning", warning.format(), policy_version=new.version)
        if result.reason == "resolve" and not self._resolution_applies(new):
            self._discard(path, result.replies)
            return
        if len(self.handovers) >= MAX_HANDOVERS:  # workers stuck: the next build retries
            self._discard(path, result.replies, "workers are still loading earlier policies")
            return
        self.policy = new
        self._hand_over(Handover(new, path, result.reason, result.replies))

    def _resolution_applies(self, new: RuleSet) -> bool:
        """A timed re-resolution applies only new addresses, never unreviewed file edits."""
        if not same_files(self.policy, new):
            self._log("reload-warning", "rule files changed on disk since the last reload; "
                      "host names are re-resolved once `portguard reload` takes them",
                      policy_version=self.policy.version)  # fmt: skip
            return False
        return not same_resolution(self.policy, new)

    def _discard(self, path: Path, replies: list[Reply], error: str | None = None) -> None:
        with contextlib.suppress(OSError):
            path.unlink()
        answer: dict[str, Any] = {"ok": error is None, "policy_version": self.policy.version}
        if error is not None:
            answer["errors"] = [error]
        for reply in replies:
            reply(answer)

    def _refuse(self, result: LoadResult) -> None:
        errors = capped(result.errors)
        version = self.policy.version
        self._log("reload-failed", "reload failed; the previous policy stays in force",
                  errors=errors, policy_version=version, trigger=result.reason)  # fmt: skip
        notify.ready(f"reload failed; policy {version} kept")
        for reply in result.replies:
            reply({"ok": False, "errors": errors, "policy_version": version})

    def _hand_over(self, handover: Handover) -> None:
        for earlier in self.handovers:  # a worker may answer those with this newer version
            earlier.newer.add(handover.ruleset.version)
        self.handovers.append(handover)
        for index in range(self.config.queue.workers):
            queue_num = self.config.queue.num + index
            threading.Thread(target=self._adopt, args=(handover, queue_num), daemon=True,
                             name=f"portguard-adopt-{queue_num}").start()  # fmt: skip

    def _adopt(self, handover: Handover, queue_num: int) -> None:
        """A thread: ask one worker to take the policy; its answer goes back to the loop."""
        path = worker_socket(self.config.daemon.control_socket, queue_num)
        try:
            answer = control_request(path, "adopt", timeout=ADOPT_TIMEOUT,
                                     file=str(handover.path), trigger=handover.trigger)  # fmt: skip
        except (OSError, ValueError) as error:
            answer = {"ok": False, "errors": [f"worker of queue {queue_num}: {error}"]}
        self._adopted.put((handover, queue_num, answer))
        self.signals.wake()

    def _collect_adopted(self) -> None:
        while True:
            try:
                handover, queue_num, answer = self._adopted.get_nowait()
            except queue.Empty:
                return
            handover.answers[queue_num] = answer
            if len(handover.answers) == self.config.queue.workers:
                self._handed_over(handover)

    def _handed_over(self, handover: Handover) -> None:
        """Every worker answered: reply to who asked, with each worker's version."""
        self.handovers.remove(handover)
        with contextlib.suppress(OSError):
            handover.path.unlink()  # every build has its own file
        answer = handover_answer(handover)
        for reply in handover.replies:
            reply(answer)
        if answer["ok"]:
            notify.ready(f"policy {handover.ruleset.version} on {len(answer['workers'])} queues")
        else:
            notify.ready(f"reload incomplete: {'; '.join(answer['errors'])}")

    def _log(self, action: str, message: str, **extra: object) -> None:
        if self.writer is not None:
            event = lifecycle_event(action, message, self.observer, time.time(), **extra)
            self.writer.submit(event)


def handover_answer(handover: Handover) -> dict[str, Any]:
    """The answer to `portguard reload`: ok when every worker runs the new policy (or a
    newer one handed over meanwhile); a worker that answers with another version failed."""
    workers: list[dict[str, Any]] = []
    errors: list[str] = []
    ruleset = handover.ruleset
    accepted = {ruleset.version, *handover.newer}
    for queue_num, answer in sorted(handover.answers.items()):
        version = answer.get("policy_version")
        ok = bool(answer.get("ok"))
        errors.extend(str(e) for e in answer.get("errors", []))
        if ok and version not in accepted:
            ok = False
            errors.append(f"worker on queue {queue_num} runs policy {version}, "
                          f"not the handed-over {ruleset.version}")  # fmt: skip
        workers.append({"queue": queue_num, "ok": ok, "policy_version": version})
    result: dict[str, Any] = {
        "ok": all(w["ok"] for w in workers),
        "policy_version": ruleset.version,
        "rules": len(ruleset.rules),
        "workers": workers,
    }
    if not result["ok"]:
        result["errors"] = capped(errors) or ["a worker did not take the new policy"]
    return result
