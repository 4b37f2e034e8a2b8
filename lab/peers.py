"""The lab's SMTP peers as processes: the servers in `net` and `sub`, the one-shot client."""

from __future__ import annotations

import ipaddress
import json
import os
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab import addresses as a
from lab.netns import LabError
from lab.tls import CertPair, make_self_signed

if TYPE_CHECKING:
    from lab.topology import Lab

OUTCOMES = ("delivered", "connected", "refused", "reset", "timeout", "error")


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the client saw: one of OUTCOMES, how long it took, and a human detail."""

    outcome: str
    elapsed_ms: float
    detail: str


@dataclass(frozen=True, slots=True)
class ServerSpec:
    role: str  # the namespace it runs in
    listens: tuple[str, ...]  # "ip:port" / "[ip6]:port"


def endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def server_specs() -> list[ServerSpec]:
    """net: MX, smarthost and submission on every server port; sub: inbound port 25."""
    net = tuple(
        endpoint(server.family(version), port)
        for server in a.SERVERS
        for version in (4, 6)
        for port in a.SERVER_PORTS
    )
    sub = tuple(endpoint(a.SUBSCRIBER.family(version), a.PORT_SMTP) for version in (4, 6))
    return [ServerSpec("net", net), ServerSpec("sub", sub)]


def smtpd_argv(spec: ServerSpec, pair: CertPair, log: Path) -> list[str]:
    argv = [f"--listen={listen}" for listen in spec.listens]
    argv += [f"--tls-implicit-port={a.PORT_SUBMISSIONS}", "--starttls"]
    return [*argv, f"--cert={pair.cert}", f"--key={pair.key}", f"--log={log}"]


def smtpc_argv(
    to_addr: str,
    port: int,
    mode: str,
    size: int,
    timeout: float,
    connect_only: bool,
    source: str | None,
) -> list[str]:
    argv = [f"--to={to_addr}", f"--port={port}", f"--mode={mode}", f"--size={size}"]
    argv.append(f"--timeout={timeout}")
    if source:
        argv.append(f"--source={source}")
    if connect_only:
        argv.append("--connect-only")
    return argv


def parse_send_result(stdout: str, stderr: str = "") -> SendResult:
    """The client's JSON line; an `error` result if the client printed none."""
    for line in reversed(stdout.splitlines()):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("outcome") in OUTCOMES:
            return SendResult(str(data["outcome"]), float(data["elapsed_ms"]), str(data["detail"]))
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    return SendResult("error", 0.0, f"smtpc printed no result: {tail}")


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's environment with this checkout importable (for `python -m portguard...`)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def wait_ready(proc: subprocess.Popen[str], deadline: float, what: str, errlog: Path) -> None:
    """Block until `proc` prints READY; LabError (with its stderr) if it exits or times out."""
    assert proc.stdout is not None
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if not ready:
            break
        line = proc.stdout.readline()
        if line.strip() == "READY":
            return
        if not line:
            raise LabError(f"{what} exited ({proc.wait()}): {read_tail(errlog)}")
    raise LabError(f"{what} not ready in time: {read_tail(errlog)}")


def read_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a partly written last line is skipped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


class SmtpServers:
    """The lab's aiosmtpd processes: one per namespace, each on several address:port pairs."""

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self.logs: dict[str, Path] = {}

    def start(self, timeout: float) -> None:
        if self.logs:
            raise LabError("SMTP servers already started")
        workdir = self._lab.workdir
        pair = make_self_signed(workdir)
        started = []
        for spec in server_specs():
            log, errlog = workdir / f"smtpd-{spec.role}.jsonl", workdir / f"smtpd-{spec.role}.err"
            self.logs[spec.role] = log
            started.append((spec.role, self._spawn(spec, pair, log, errlog), errlog))
        deadline = time.monotonic() + timeout
        for role, proc, errlog in started:
            wait_ready(proc, deadline, f"SMTP server in {role}", errlog)

    def _spawn(
        self, spec: ServerSpec, pair: CertPair, log: Path, errlog: Path
    ) -> subprocess.Popen[str]:
        argv = self._lab.python("lab.smtpd", *smtpd_argv(spec, pair, log))
        with errlog.open("w") as err:
            return self._lab.popen(
                spec.role, argv, stdout=subprocess.PIPE, stderr=err, text=True, env=python_env()
            )

    def received(self, server_addr: str) -> list[dict[str, Any]]:
        wanted = ipaddress.ip_address(server_addr)
        return [
            record
            for log in self.logs.values()
            for record in read_jsonl(log)
            if ipaddress.ip_address(str(record.get("local_ip"))) == wanted
        ]
