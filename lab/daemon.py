"""Run the real portguard daemon inside the lab's gateway namespace.

daemon = LabDaemon(lab, rules=[SHIPPED_RULES])
daemon.start()            # writes the config, starts `python -m portguard run`, waits
...                       # until the queue is bound and the hooks are in place
daemon.events()           # the decision events written so far (the file output)
daemon.stop()             # SIGTERM: the daemon removes its hooks and exits
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import portguard
from lab import addresses as a
from lab.netns import LabError
from lab.peers import python_env, read_jsonl, read_tail
from lab.topology import Lab, terminate

SHIPPED_RULES = Path(portguard.__file__).resolve().parent / "shipped" / "rules"
HOOK_PORTS = (a.PORT_SMTP, a.PORT_SUBMISSIONS, a.PORT_SUBMISSION)
GRACE_WITHOUT_HOOK_SIGN = 3.0  # seconds to wait after the queue is bound for READY=1 or hooks


def forked_children(pid: int, settle: float = 0.3) -> list[int]:
    """The daemon's forked children (workers, log processes): the children with the daemon's
    command line in two reads `settle` s apart. A command the daemon runs meanwhile (the hook
    watch's iptables check) is a child too, but it execs, and it is gone or renamed by then."""

    def forks() -> set[int]:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return {child for child in map(int, children) if _cmdline(child) == own}

    own = _cmdline(pid)
    first = forks()
    time.sleep(settle)
    return sorted(first & forks())


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b""


def toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def render_config(
    rules: Sequence[Path],
    events: Path,
    queue_num: int = 0,
    backend: str = "auto",
    fail_mode: str = "closed",
    workers: int = 1,
    control: Path | None = None,
    max_len: int = 4096,
    reevaluate: bool = False,
    flood_window: int = 60,
    extra_outputs: Sequence[str] = (),
    log_options: str = "",
    extra_config: str = "",
    deny_cache: int = 0,
) -> str:
    """The daemon config for the lab: WAN = gw-wan, forward chain, stdout and file outputs.

    The deny cache is off unless `deny_cache` (seconds) is given: a lab flood measures and
    tests the decision path; tests of the cache ask for it.

    `extra_outputs` are more [log] outputs as TOML inline tables (e.g. a syslog collector);
    `log_options` are more lines for the [log] table; `extra_config` more tables at the end
    (e.g. `[metrics]`).
    """
    outputs = ", ".join(
        ['{ type = "stdout" }', f'{{ type = "file", path = {toml_string(str(events))} }}',
         *extra_outputs]
    )  # fmt: skip
    paths = ", ".join(toml_string(str(path)) for path in rules)
    socket_path = toml_string(str(control or events.parent / "control.sock"))
    return (
        f"[queue]\nnum = {queue_num}\nworkers = {workers}\nfail_mode = {toml_string(fail_mode)}\n"
        f"max_len = {max_len}\ndeny_cache = {deny_cache}\n\n"
        f'[network]\nwan = ["{a.GW_WAN_IF}"]\n\n'
        f"[hook]\nbackend = {toml_string(backend)}\n"
        f'ports = [{", ".join(str(p) for p in HOOK_PORTS)}]\nchains = ["forward"]\n\n'
        f"[rules]\npaths = [{paths}]\nreevaluate = {str(reevaluate).lower()}\n\n"
        f"[log]\noutputs = [{outputs}]\nflood_window = {flood_window}\n{log_options}"
        f"\n[daemon]\ncontrol_socket = {socket_path}\n"
        f"state_dir = {toml_string(str(events.parent / 'state'))}\n{extra_config}"
    )


def hooks_installed(lab: Lab) -> bool:
    """Whether the gateway has portguard's queue hooks for both IPv4 and IPv6."""
    nft = run_text(lab, ["nft", "list", "ruleset"])
    if "table inet portguard" in nft and "queue" in nft:
        return True
    v4, v6 = run_text(lab, ["iptables-save"]), run_text(lab, ["ip6tables-save"])
    return "NFQUEUE" in v4 and "NFQUEUE" in v6


def hooks_leftover(lab: Lab) -> bool:
    """Whether any trace of portguard's hooks is left in the gateway."""
    nft = run_text(lab, ["nft", "list", "ruleset"])
    saves = run_text(lab, ["iptables-save"]) + run_text(lab, ["ip6tables-save"])
    return "portguard" in nft or "NFQUEUE" in saves or "portguard" in saves.lower()


def run_text(lab: Lab, argv: list[str]) -> str:
    try:
        proc = lab.run("gw", argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


class LabDaemon:
    """`python -m portguard run --config CFG` in the gateway namespace, with its files."""

    def __init__(
        self,
        lab: Lab,
        rules: Sequence[Path] = (SHIPPED_RULES,),
        queue_num: int = 0,
        command: Sequence[str] = (),
        fail_mode: str = "closed",
        workers: int = 1,
        max_len: int = 4096,
        reevaluate: bool = False,
        flood_window: int = 60,
        extra_outputs: Sequence[str] = (),
        log_options: str = "",
        extra_config: str = "",
        deny_cache: int = 0,
    ) -> None:
        """`command` replaces `python -m portguard` (it gets `run --config CFG` appended)."""
        self.lab = lab
        self.command = list(command) or lab.python("portguard")
        self.queue_num = queue_num
        self.dir = Path(tempfile.mkdtemp(prefix="daemon-", dir=lab.workdir))
        self.config = self.dir / "portguard.toml"
        self.events_path = self.dir / "decisions.jsonl"
        self.stdout_path = self.dir / "stdout.log"
        self.stderr_path = self.dir / "stderr.log"
        self.config.write_text(
            render_config(
                rules,
                self.events_path,
                queue_num,
                fail_mode=fail_mode,
                workers=workers,
                max_len=max_len,
                reevaluate=reevaluate,
                flood_window=flood_window,
                extra_outputs=extra_outputs,
                log_options=log_options,
                extra_config=extra_config,
                deny_cache=deny_cache,
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify = self._notify_socket()

    def _notify_socket(self) -> socket.socket:
        """A systemd-style NOTIFY_SOCKET (a path: abstract sockets do not cross namespaces)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.dir / "notify.sock"))
        sock.setblocking(False)
        return sock

    def start(self, timeout: float = 20.0) -> None:
        argv = [*self.command, "run", "--config", str(self.config)]
        env = python_env({"NOTIFY_SOCKET": str(self.dir / "notify.sock")})
        stale_hooks = hooks_installed(self.lab)  # a crashed run's: no sign of this run's readiness
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = self.lab.popen("gw", argv, stdout=out, stderr=err, env=env)
        self.wait_ready(timeout, hooks_are_a_sign=not stale_hooks)

    def wait_ready(self, timeout: float, hooks_are_a_sign: bool = True) -> None:
        """Until the queue is bound and (READY=1 was notified or the hooks are visible). Hooks a
        killed run left behind are no sign: the new run removes and reinstalls them."""
        deadline = time.monotonic() + timeout
        bound_at: float | None = None
        notified = False
        while time.monotonic() < deadline:
            self._check_alive()
            notified = notified or self._notified_ready()
            if bound_at is None and self.lab.queue_stats(self.queue_num) is not None:
                bound_at = time.monotonic()
            signed = notified or (hooks_are_a_sign and hooks_installed(self.lab))
            if bound_at is not None and signed:
                return
            waited = time.monotonic() - bound_at if bound_at is not None else 0.0
            if hooks_are_a_sign and waited > GRACE_WITHOUT_HOOK_SIGN:
                return  # bound, but hooks unrecognised and no READY=1: go on regardless
            time.sleep(0.05)
        raise LabError(f"portguard not ready within {timeout:.0f} s:\n{self.stderr_tail()}")

    def _notified_ready(self) -> bool:
        with contextlib.suppress(BlockingIOError):
            while True:
                message = self._notify.recv(4096).decode(errors="replace")
                if "READY=1" in message.splitlines():
                    return True
        return False

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise LabError(f"portguard exited with {self.proc.returncode}:\n{self.stderr_tail()}")

    def stderr_tail(self, lines: int = 30) -> str:
        return read_tail(self.stderr_path, lines)

    def events(self) -> list[dict[str, Any]]:
        return read_jsonl(self.events_path)

    def restart(self, timeout: float = 20.0) -> None:
        """Stop (SIGTERM) and start again with the same config, state directory and logs."""
        self.stop()
        (self.dir / "notify.sock").unlink(missing_ok=True)
        self._notify = self._notify_socket()
        self.start(timeout)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM and wait; the exit code (None if it never started)."""
        self._notify.close()
        if self.proc is None:
            return None
        terminate(self.proc, grace)
        return self.proc.returncode
