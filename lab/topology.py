"""The lab: four network namespaces wired as subscriber, business, gateway and internet.

    with Lab() as lab:
        lab.start_smtp_servers()
        result = lab.send_mail("sub", MX.v4, 25)

Every namespace, interface, route and process the lab makes lives in namespaces named
`pg-<6 hex>-<role>`; leaving the `with` block (also through an exception or Ctrl-C) stops the
processes and deletes the namespaces. Nothing is created in the root namespace. See docs/lab.md.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from lab import addresses as a
from lab import netns
from lab.netns import LabError
from lab.peers import (
    SendResult,
    SmtpServers,
    parse_send_result,
    python_env,
    smtpc_argv,
)
from portguard.io.queuestats import QUEUE_STATS_FILE, parse_queue_stats

__all__ = ["Lab", "LabError", "SendResult", "build_commands", "parse_queue_stats"]


def _addr(host: a.DualStack, version: int, prefix: str) -> str:
    suffix = " nodad" if version == 6 else ""
    return f"addr add {host.family(version)}/{prefix} dev {{dev}}{suffix}"


def _host_commands(dev: str, host: a.DualStack, router: a.DualStack) -> list[str]:
    """An end host: one link, both families, default routes via the gateway."""
    return [
        "link set lo up",
        f"link set {dev} up",
        _addr(host, 4, a.LINK_PREFIX.v4).format(dev=dev),
        _addr(host, 6, a.LINK_PREFIX.v6).format(dev=dev),
        f"route add default via {router.v4} dev {dev}",
        f"route add ::/0 via {router.v6} dev {dev}",
    ]


def _gw_commands(names: dict[str, str]) -> list[str]:
    links = [
        (a.GW_SUB_IF, a.SUB_IF, "sub", a.GW_SUB),
        (a.GW_BIZ_IF, a.BIZ_IF, "biz", a.GW_BIZ),
        (a.GW_WAN_IF, a.NET_IF, "net", a.GW_WAN),
    ]
    commands = ["link set lo up"]
    for dev, peer, role, host in links:
        commands.append(f"link add {dev} type veth peer name {peer} netns {names[role]}")
        commands.append(f"link set {dev} up")
        commands.append(_addr(host, 4, a.LINK_PREFIX.v4).format(dev=dev))
        commands.append(_addr(host, 6, a.LINK_PREFIX.v6).format(dev=dev))
    commands.append(f"route add {a.SERVER_NET.v4} via {a.INTERNET.v4} dev {a.GW_WAN_IF}")
    commands.append(f"route add {a.SERVER_NET.v6} via {a.INTERNET.v6} dev {a.GW_WAN_IF}")
    return commands


def _net_commands() -> list[str]:
    commands = _host_commands(a.NET_IF, a.INTERNET, a.GW_WAN)
    for server in a.SERVERS:
        commands.append(_addr(server, 4, "32").format(dev=a.SERVER_IF))
        commands.append(_addr(server, 6, "128").format(dev=a.SERVER_IF))
    return commands


def build_commands(names: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(namespace, `ip -batch` lines) in the order they must run; gw creates the veth pairs."""
    return [
        (names["gw"], _gw_commands(names)),
        (names["sub"], _host_commands(a.SUB_IF, a.SUBSCRIBER, a.GW_SUB)),
        (names["biz"], _host_commands(a.BIZ_IF, a.BUSINESS, a.GW_BIZ)),
        (names["net"], _net_commands()),
    ]


def sysctls(role: str) -> dict[str, str]:
    """No duplicate address detection (addresses usable at once); forwarding on the gateway."""
    settings = {
        "net.ipv6.conf.all.accept_dad": "0",
        "net.ipv6.conf.default.accept_dad": "0",
        "net.ipv6.conf.default.accept_ra": "0",
    }
    if role == "gw":
        settings |= {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}
    return settings


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while tearing down, so teardown is never cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back for a moment; they are delivered when the block ends."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class LabTerminated(SystemExit):
    """SIGTERM arrived while a lab was up: unwind through `with`/finally so it is removed."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise LabTerminated(128 + signum)


class Lab:
    """Four namespaces (sub, biz, gw, net), their links, addresses, routes and SMTP peers."""

    def __init__(self, prefix: str | None = None, keep_workdir: bool = False) -> None:
        self.prefix = prefix or f"pg-{secrets.token_hex(3)}"
        self.names = {role: f"{self.prefix}-{role}" for role in a.ROLES}
        self.keep_workdir = keep_workdir
        self._workdir: Path | None = None
        self._created: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._servers = SmtpServers(self)
        self._closed = False
        self._took_sigterm = False

    # --- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Create and wire the namespaces; on any failure remove what was made and re-raise."""
        if self._workdir is not None or self._closed:
            raise LabError("a Lab can be started once")
        self._workdir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        atexit.register(self.close)
        self._take_sigterm()
        try:
            for role in a.ROLES:
                with _signals_blocked():  # no Ctrl-C between creating and recording
                    netns.add(self.names[role])
                    self._created.append(self.names[role])
                netns.sysctl(self.names[role], sysctls(role))
            for namespace, commands in build_commands(self.names):
                netns.batch(namespace, commands)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every process, delete every namespace this lab created. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with _signals_deferred():
            self._stop_processes()
            errors = self._delete_namespaces()
            if self._workdir is not None and not self.keep_workdir:
                shutil.rmtree(self._workdir, ignore_errors=True)
        atexit.unregister(self.close)
        self._give_back_sigterm()
        if errors:
            raise LabError("; ".join(errors))

    def _take_sigterm(self) -> None:
        """Turn an unhandled SIGTERM into an exception (main thread, default handler only)."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_terminated)
            self._took_sigterm = True

    def _give_back_sigterm(self) -> None:
        if self._took_sigterm and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            self._took_sigterm = False

    def _stop_processes(self) -> None:
        for proc in reversed(self._procs):
            terminate(proc)

    def _delete_namespaces(self) -> list[str]:
        errors = []
        for namespace in reversed(self._created):
            try:
                netns.delete(namespace)
            except (LabError, OSError, subprocess.SubprocessError) as exc:
                errors.append(str(exc))
        return errors

    @property
    def workdir(self) -> Path:
        """A private temporary directory (certificates, server logs), removed at close."""
        if self._workdir is None:
            raise LabError("the lab is not started")
        return self._workdir

    # --- running things inside ----------------------------------------------------------------

    def ns(self, role: str) -> str:
        """The namespace name of a role ("sub", "biz", "gw", "net"); full names pass through."""
        if role in self.names:
            return self.names[role]
        if role in self.names.values():
            return role
        raise KeyError(f"no namespace {role!r} in lab {self.prefix}")

    def argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        return netns.exec_argv(self.ns(ns), argv)

    def run(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run of `argv` inside namespace `ns`."""
        return subprocess.run(self.argv(ns, argv), **kw)

    def popen(self, ns: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen of `argv` inside `ns` in its own session (so Ctrl-C reaches only
        this process, which stops children in order); the lab terminates it at close."""
        if self._closed:
            raise LabError("the lab is closed")
        kw.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(ns, argv), **kw)
        self._procs.append(proc)
        return proc

    def python(self, module: str, *args: str) -> list[str]:
        """argv running `module` with this interpreter (run it through run/popen)."""
        return [sys.executable, "-m", module, *args]

    def queue_stats(self, queue_num: int = 0) -> dict[str, int] | None:
        """The gateway's NFQUEUE counters for `queue_num`, or None when nothing is bound."""
        proc = self.run("gw", ["cat", str(QUEUE_STATS_FILE)], capture_output=True, text=True)
        if proc.returncode != 0:
            return None  # nfnetlink_queue not loaded: no queue bound anywhere
        return parse_queue_stats(proc.stdout, queue_num)

    def link_drops(self) -> int:
        """Packets the subscriber link dropped (sub0 sending, gw-sub receiving): with the queue's
        and the hook's counters, what accounts for every SYN a flood sent."""
        total = 0
        for ns, dev, side in (("sub", a.SUB_IF, "tx"), ("gw", a.GW_SUB_IF, "rx")):
            proc = self.run(ns, ["ip", "-s", "-j", "link", "show", dev], capture_output=True,
                            text=True, check=True)  # fmt: skip
            (link,) = json.loads(proc.stdout)
            total += int(link["stats64"][side]["dropped"])
        return total

    # --- SMTP peers -----------------------------------------------------------------------------

    def start_smtp_servers(self, timeout: float = 15.0) -> None:
        """Start the servers (net: MX, smarthost, submission; sub: inbound) and wait for READY."""
        self._servers.start(timeout)

    def send_mail(
        self,
        from_ns: str,
        to_addr: str,
        port: int,
        mode: str = "plain",
        size: int = 1000,
        timeout: float = 5.0,
        connect_only: bool = False,
        source: str | None = None,
    ) -> SendResult:
        """Send one message from `from_ns` (bound to its client address, or `source`) and
        report the result."""
        source = source or client_address(from_ns, to_addr)
        argv = smtpc_argv(to_addr, port, mode, size, timeout, connect_only, source)
        limit = timeout * 4 + 30 + size / 1e6
        proc = self.run(
            from_ns, self.python("lab.smtpc", *argv),
            capture_output=True, text=True, timeout=limit, env=python_env(),
        )  # fmt: skip
        return parse_send_result(proc.stdout, proc.stderr)

    def received(self, server_addr: str) -> list[dict[str, Any]]:
        """Messages the lab's servers received on `server_addr`, in arrival order."""
        return self._servers.received(server_addr)


def client_address(role: str, to_addr: str) -> str:
    """The source address a client in `role` uses towards `to_addr` (same family)."""
    short = role.rsplit("-", 1)[-1]
    version = ipaddress.ip_address(to_addr).version
    return a.CLIENT_ADDRESS[short].family(version)


def terminate(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
