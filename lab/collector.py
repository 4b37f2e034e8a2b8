"""A real syslog collector for tests: Debian's rsyslogd, started by the test, usually inside a
network namespace, with its own config, pid file and spool directory in a work directory.

    with Collector(workdir, argv_prefix=["ip", "netns", "exec", ns], tls=server_pair) as c:
        ...                         # send to tcp://127.0.0.1:514 or tls://127.0.0.1:6514
        c.wait_for(1000, timeout=10)
        c.messages()                # rsyslog's parse of each message (one JSON object a line)
        c.events()                  # the MSG of each message, parsed as JSON
        c.kill(); c.restart()       # a collector crash and its return

It listens on imtcp (plain, octet-counted or LF-framed) and, when given a server certificate,
on a second imtcp with the OpenSSL stream driver (TLS only, `anon` auth: the client verifies
the server). Every message becomes one line of `messages.jsonl`, written synchronously at the
end of each batch, so `count()` is exact shortly after delivery.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from lab.tls import CertPair

PLAIN_PORT = 514
TLS_PORT = 6514  # RFC 5425
MAX_MESSAGE = "64k"
# rsyslog's own parse of the RFC 5424 header, then the MSG (outname, property)
FIELDS = (
    ("protocol-version", "protocol-version"), ("pri", "pri"),
    ("facility", "syslogfacility"), ("severity", "syslogseverity"),
    ("timestamp", "timestamp"), ("hostname", "hostname"), ("app-name", "app-name"),
    ("procid", "procid"), ("msgid", "msgid"), ("structured-data", "structured-data"),
    ("input", "inputname"), ("fromhost-ip", "fromhost-ip"), ("msg", "msg"),
)  # fmt: skip
LISTEN = "0A"  # TCP state in /proc/net/tcp


class CollectorError(RuntimeError):
    """rsyslogd did not start, or stopped on its own."""


def template() -> str:
    lines = [
        f'  property(outname="{out}" name="{name}" format="jsonf"'
        + (' dateFormat="rfc3339")' if name == "timestamp" else ")")
        for out, name in FIELDS
    ]
    body = "\n".join(lines)
    return f'template(name="portguard-json" type="list" option.jsonf="on") {{\n{body}\n}}\n'


def tls_input(port: int, server: CertPair, ca: Path | None) -> str:
    ca_file = f' streamDriver.caFile="{ca}"' if ca is not None else ""
    return (
        f'input(type="imtcp" name="tls" port="{port}" ruleset="collect"\n'
        f'      streamDriver.name="ossl" streamDriver.mode="1" streamDriver.authMode="anon"\n'
        f'      streamDriver.certFile="{server.cert}"\n'
        f'      streamDriver.keyFile="{server.key}"{ca_file})\n'
    )


def render_config(
    spool: Path,
    output: Path,
    port: int = PLAIN_PORT,
    tls: CertPair | None = None,
    tls_port: int = TLS_PORT,
    ca: Path | None = None,
) -> str:
    """rsyslog.conf: imtcp inputs bound to one ruleset that writes every message as JSON."""
    return (
        f'global(workDirectory="{spool}" maxMessageSize="{MAX_MESSAGE}" net.enableDNS="off")\n'
        'main_queue(queue.type="FixedArray" queue.size="200000" queue.dequeueBatchSize="1024")\n'
        'module(load="imtcp" maxSessions="200")\n'
        f"{template()}"
        'ruleset(name="collect") {\n'
        f'  action(type="omfile" file="{output}" template="portguard-json"\n'
        '         asyncWriting="off" flushOnTXEnd="on" ioBufferSize="256k")\n'
        "}\n"
        f'input(type="imtcp" name="tcp" port="{port}" ruleset="collect")\n'
        + (tls_input(tls_port, tls, ca) if tls is not None else "")
    )


def listening_ports(pid: int) -> set[int]:
    """TCP ports listening in the network namespace of process `pid`."""
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == LISTEN:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _message(line: bytes) -> dict[str, Any] | None:
    """One line of the output: a message, or the message a restarted rsyslogd appended to the
    part of one its killed predecessor wrote (that part is lost, as in its memory); None when
    nothing whole is left."""
    try:
        return dict(json.loads(line))
    except ValueError:
        pass
    start = line.rfind(b'{"')
    while start > 0:
        try:
            return dict(json.loads(line[start:]))
        except ValueError:
            start = line.rfind(b'{"', 0, start)
    return None


class Collector:
    """rsyslogd in the foreground (`-n`), run through `argv_prefix` (e.g. `ip netns exec NS`)."""

    def __init__(
        self,
        workdir: Path,
        argv_prefix: Sequence[str] = (),
        port: int = PLAIN_PORT,
        tls: CertPair | None = None,
        tls_port: int = TLS_PORT,
        ca: Path | None = None,
    ) -> None:
        self.dir = workdir
        self.argv_prefix = list(argv_prefix)
        self.ports = [port] + ([tls_port] if tls is not None else [])
        self.config = workdir / "rsyslog.conf"
        self.output = workdir / "messages.jsonl"
        self.pidfile = workdir / "rsyslogd.pid"
        self.log = workdir / "rsyslogd.log"  # rsyslogd's own messages (stderr)
        self.spool = workdir / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.config.write_text(render_config(self.spool, self.output, port, tls, tls_port, ca))
        self.proc: subprocess.Popen[bytes] | None = None
        self._counted = (0, 0)  # (bytes read, newlines in them) of messages.jsonl

    def __enter__(self) -> Collector:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def argv(self) -> list[str]:
        rsyslogd = ["rsyslogd", "-n", "-f", str(self.config), "-i", str(self.pidfile)]
        return [*self.argv_prefix, *rsyslogd]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start rsyslogd and wait until all its ports accept connections."""
        if self.running:
            return
        self.pidfile.unlink(missing_ok=True)  # a killed rsyslogd leaves it; the next one refuses
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise CollectorError(f"rsyslogd did not start: {self.log_tail()}")
            time.sleep(0.02)

    def _listening(self) -> bool:
        assert self.proc is not None
        pid = self.proc.pid  # ip netns exec and env exec rsyslogd: the same process
        return _command_name(pid) == "rsyslogd" and set(self.ports) <= listening_ports(pid)

    def kill(self) -> None:
        """SIGKILL: a crash. What rsyslogd had received but not yet written is lost."""
        self._end(signal.SIGKILL, 5.0)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (rsyslogd writes what it holds), SIGKILL when it takes too long."""
        if not self._end(signal.SIGTERM, timeout):
            self.kill()

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def _end(self, signum: int, timeout: float) -> bool:
        if self.proc is None:
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signum)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self.proc = None
        self.pidfile.unlink(missing_ok=True)
        return True

    def count(self) -> int:
        """Messages written so far: complete lines, counted incrementally."""
        done, lines = self._counted
        try:
            with open(self.output, "rb") as output:
                if os.fstat(output.fileno()).st_size < done:
                    done, lines = 0, 0  # truncated or replaced
                output.seek(done)
                while chunk := output.read(1 << 20):
                    done, lines = done + len(chunk), lines + chunk.count(b"\n")
        except FileNotFoundError:
            return 0
        self._counted = (done, lines)
        return lines

    def wait_for(self, count: int, timeout: float = 10.0) -> int:
        """Wait until at least `count` messages were written (or `timeout`); the count then."""
        deadline = time.monotonic() + timeout
        while (seen := self.count()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return seen

    def messages(self) -> list[dict[str, Any]]:
        """Every message written so far, as rsyslog parsed it (keys: FIELDS' outnames)."""
        try:
            data = self.output.read_bytes()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        return [found for line in complete.splitlines() if (found := _message(line)) is not None]

    def events(self) -> list[Any]:
        """The MSG of every message, parsed as JSON (portguard's ECS events)."""
        return [json.loads(message["msg"]) for message in self.messages()]

    def log_tail(self, size: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""
