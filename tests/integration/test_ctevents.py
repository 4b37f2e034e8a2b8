"""Flow-end reports from conntrack DESTROY events, against the real kernel.

One namespace is both client and server (documentation addresses on its loopback): its mangle
OUTPUT chains give every new TCP connection to port 25 portguard's allow + outbound connmark, as
the hook does for an allowed connection; port 26 gets only an operator's connmark bit.
``FlowEndListener`` runs in the namespace in a subprocess (selecting on its socket and reading
what waits, as the log process does) that prints each reported flow as a JSON line. TIME_WAIT
and CLOSE last 1 s there instead of 120 s and 10 s; conntrack then forgets a connection when
something looks at the table (here ``conntrack -L``) or when its garbage collector next runs (up
to a minute on an idle table).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import Netns, require_root, throwaway_netns

from lab import netns as labns
from portguard.core.marks import MARK_ALLOW, MARK_MASK, mark_bits
from portguard.core.policy.model import Direction

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIENT = {4: "198.51.100.1", 6: "2001:db8::1"}
SERVER = {4: "198.51.100.25", 6: "2001:db8::25"}
SENT, ANSWERED = 3000, 700  # payload bytes each way
ALLOW_OUTBOUND = mark_bits(MARK_ALLOW, Direction.OUTBOUND)
OPERATOR_BIT = 0x10  # an operator's own connmark, outside portguard's bits

# argv: receive buffer, seconds the first report stalls. Prints a "ready" line, one line per
# flow, and the listener's counters after a line on stdin stops it.
LISTENER = f"""
import json, select, sys, time
sys.path.insert(0, {str(ROOT)!r})
from portguard.io.ctevents import FlowEndListener, enable_accounting
stall = [float(sys.argv[2])]
def report(ended):
    print(json.dumps(ended._asdict()), flush=True)
    time.sleep(stall.pop() if stall else 0)
failed = enable_accounting()
listener = FlowEndListener(report, receive_buffer=int(sys.argv[1]))
listener.open()
print(json.dumps({{"failed": failed, "filtered": listener.filtered}}), flush=True)
while True:  # the log process's way: select, then read what waits
    readable, _, _ = select.select([listener.fileno(), sys.stdin], [], [])
    if sys.stdin in readable:
        break
    listener.read_waiting()
listener.read_waiting()
listener.close()
counts = {{k: getattr(listener, k) for k in ("received", "reported", "lost", "errors")}}
print(json.dumps({{"stopped": True, **counts}}), flush=True)
"""

# argv: "VERSION:PORT" or "VERSION:PORT:reset" each; prints [[version, port, client port], ...]
TRAFFIC = f"""
import json, socket, struct, sys
CLIENT, SERVER = {CLIENT!r}, {SERVER!r}
done = []
for spec in sys.argv[1:]:
    version, port, *how = spec.split(":")
    version, port = int(version), int(port)
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with socket.create_server((SERVER[version], port), family=family) as server:
        source = (CLIENT[version], 0)
        client = socket.create_connection((SERVER[version], port), source_address=source)
        peer, _ = server.accept()
        client.sendall(b"m" * {SENT})
        received = 0
        while received < {SENT}:
            received += len(peer.recv(65536))
        peer.sendall(b"r" * {ANSWERED})
        received = 0
        while received < {ANSWERED}:
            received += len(client.recv(65536))
        done.append([version, port, client.getsockname()[1]])
        if how:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        peer.close()
print(json.dumps(done))
"""


class Listener:
    """The listener's subprocess; its output lines arrive in a queue."""

    def __init__(self, ns: Netns, receive_buffer: int = 8 << 20, stall: float = 0.0) -> None:
        argv = (sys.executable, "-c", LISTENER, str(receive_buffer), str(stall))
        self.proc = ns.popen(*argv)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.next(10.0)
        self.flows: list[dict[str, Any]] = []

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def next(self, timeout: float) -> Any:
        return json.loads(self.lines.get(timeout=timeout))

    def collect(self) -> list[dict[str, Any]]:
        """The flows reported so far."""
        while not self.lines.empty():
            self.flows.append(self.next(0))
        return self.flows

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        while True:
            line = self.next(5.0)
            if "stopped" in line:
                return dict(line)
            self.flows.append(line)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate()


def connect(ns: Netns, *specs: str) -> list[tuple[int, int, int]]:
    """Run the connections (each one opened, used both ways, closed); their ends."""
    return [tuple(end) for end in json.loads(ns.run(sys.executable, "-c", TRAFFIC, *specs))]


def tracked(ns: Netns) -> int:
    """TCP entries conntrack still holds; listing them makes it forget the expired ones."""
    proc = subprocess.run(
        ns.argv(["conntrack", "-L", "-p", "tcp"]), capture_output=True, text=True, timeout=30
    )
    return proc.stdout.count("\n")


def settle(ns: Netns, listener: Listener, reports: int, timeout: float = 20.0) -> None:
    """Until conntrack has forgotten every connection and ``reports`` flows came, then a
    moment for any report that should not come."""
    deadline = time.monotonic() + timeout
    while tracked(ns) or len(listener.collect()) < reports:
        assert time.monotonic() < deadline, f"{tracked(ns)} entries left, {listener.flows}"
        time.sleep(0.3)
    time.sleep(0.5)
    listener.collect()


@pytest.fixture
def host() -> Iterator[Netns]:
    require_root()
    with throwaway_netns() as ns:
        addresses = [f"{CLIENT[4]}/32", f"{SERVER[4]}/32", f"{CLIENT[6]}/128", f"{SERVER[6]}/128"]
        labns.batch(ns.name, [f"addr add {address} dev lo" for address in addresses])
        labns.sysctl(
            ns.name,
            {
                "net.netfilter.nf_conntrack_tcp_timeout_time_wait": "1",
                "net.netfilter.nf_conntrack_tcp_timeout_close": "1",
            },
        )
        marks = {25: f"{ALLOW_OUTBOUND:#x}/{MARK_MASK:#x}", 26: f"{OPERATOR_BIT:#x}"}
        for tool, (port, mark) in itertools.product(("iptables", "ip6tables"), marks.items()):
            rule = ("-p", "tcp", "--dport", str(port), "-j", "CONNMARK", "--set-mark", mark)
            ns.run(tool, "-w", "-t", "mangle", "-A", "OUTPUT", *rule)
        yield ns


@pytest.fixture
def listener(host: Netns) -> Iterator[Listener]:
    started = Listener(host)
    try:
        yield started
    finally:
        started.kill()


def test_reports_exactly_the_allowed_flows_with_their_counts(
    host: Netns, listener: Listener
) -> None:
    assert listener.ready == {"failed": {}, "filtered": True}
    assert host.run("sysctl", "-n", "net.netfilter.nf_conntrack_acct").strip() == "1"
    ends = connect(host, "4:25", "6:25", "4:25:reset", "4:26", "6:26")
    settle(host, listener, reports=3)
    stats = listener.stop()
    reported = {(flow["version"], flow["dport"], flow["sport"]): flow for flow in listener.flows}
    assert sorted(reported) == sorted(end for end in ends if end[1] == 25)
    for (version, _port, _sport), flow in reported.items():
        assert flow["src"] == int(ipaddress.ip_address(CLIENT[version]))
        assert flow["dst"] == int(ipaddress.ip_address(SERVER[version]))
        assert flow["direction"] == "outbound" and flow["mark"] == ALLOW_OUTBOUND
        (sent_packets, sent_bytes), (reply_packets, reply_bytes) = flow["original"], flow["reply"]
        assert sent_packets > 2 and sent_bytes > SENT
        assert reply_packets > 1 and reply_bytes > ANSWERED
        duration = flow["stop_ns"] - flow["start_ns"]
        assert 0.9e9 < duration < 30e9  # TIME_WAIT / CLOSE (1 s here) included
        assert abs(flow["stop_ns"] / 1e9 - time.time()) < 60
    # the kernel's filter kept the other connections' events from the socket
    assert stats == {"stopped": True, "received": 3, "reported": 3, "lost": 0, "errors": 0}


def test_lost_events_are_counted_and_the_listener_goes_on(host: Netns) -> None:
    """A minimal receive buffer and a report that stalls: the kernel drops the events that do
    not fit; the listener counts that and still reports a later flow."""
    stalled = Listener(host, receive_buffer=1, stall=1.5)
    try:
        burst = connect(host, *["4:25"] * 30)
        settle(host, stalled, reports=1)
        time.sleep(1.5)  # the stalled report ends
        [later] = connect(host, "4:25")
        deadline = time.monotonic() + 20
        while later[2] not in {flow["sport"] for flow in stalled.collect()}:
            assert time.monotonic() < deadline, stalled.flows
            tracked(host)
            time.sleep(0.3)
        stats = stalled.stop()
    finally:
        stalled.kill()
    ports = [flow["sport"] for flow in stalled.flows]
    assert len(ports) == len(set(ports)) and set(ports) <= {end[2] for end in [*burst, later]}
    assert stats["lost"] >= 1 and stats["errors"] == 0
    assert len(ports) < len(burst) + 1 == 31
    assert stats["reported"] == len(ports)
