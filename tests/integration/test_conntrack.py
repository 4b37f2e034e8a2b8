"""Ending allowed connections through their conntrack entries, against the real kernel.

Three namespaces: a client, a gateway that routes between them, a server that echoes lines on
port 25 (IPv4) and 587 (IPv6). The gateway holds the hook (iptables, or the nftables table with an
iptables rule doing its queueing, see `install_hook`) and a queue binder that allows
every queued SYN with `apply_verdict` (direction by port: 25 outbound, 587 inbound), so the
connmark of each connection records verdict and direction. An operator rule sets bit 0x10 of
every new connection's connmark, which portguard must keep. `portguard.io.conntrack` runs in the
gateway namespace (a subprocess per call); the client keeps its connections open in a process
driven line by line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import Netns, require_root, throwaway_netns

from lab import netns as labns
from portguard.core.marks import MARK_DROP, MARK_MASK, MARK_REJECT, VERDICT_MASK, mark_bits
from portguard.core.policy.model import Direction
from portguard.io.conntrack import TrackedConnection
from portguard.io.hooks.backend import HookSpec
from portguard.io.hooks.iptables import IptablesBackend
from portguard.io.hooks.nftables import NftablesBackend, queue_statement

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIENT = {4: "192.0.2.1", 6: "2001:db8:1::1"}
SERVER = {4: "198.51.100.2", 6: "2001:db8:2::2"}
PORTS = {4: 25, 6: 587}
OPERATOR_BIT = 0x10  # an operator's own connmark bit, outside portguard's mask
DIRECTIONS = {25: Direction.OUTBOUND, 587: Direction.INBOUND}

BINDER = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from netfilterqueue import NetfilterQueue
from portguard.core.gate import Verdict
from portguard.io.nfqueue import apply_verdict
from portguard.core.packet.decode import decode
from portguard.core.policy.model import Direction
DIRECTIONS = {{25: Direction.OUTBOUND, 587: Direction.INBOUND}}
def allow(packet):
    try:
        direction = DIRECTIONS.get(decode(packet.get_payload()).dport)
    finally:
        apply_verdict(packet, Verdict.ALLOW, direction)
queue = NetfilterQueue()
queue.bind(0, allow)
print("ready", flush=True)
queue.run()
"""

ECHO_SERVER = f"""
import socket, threading
def echo(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)
def serve(server):
    while True:
        threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
servers = [
    socket.create_server(({SERVER[4]!r}, {PORTS[4]})),
    socket.create_server(({SERVER[6]!r}, {PORTS[6]}), family=socket.AF_INET6),
]
for server in servers:
    threading.Thread(target=serve, args=(server,), daemon=True).start()
print("ready", flush=True)
input()
"""

# Reads "open NAME HOST PORT" (answers the local port) and "echo NAME" (answers "ok", "reset
# SECONDS", "timeout" or "closed") from stdin.
CLIENT_SCRIPT = """
import socket, sys, time
conns = {}
print("ready", flush=True)
for line in sys.stdin:
    command, name, *where = line.split()
    if command == "open":
        conns[name] = socket.create_connection((where[0], int(where[1])), timeout=3)
        print(conns[name].getsockname()[1], flush=True)
        continue
    conn, start = conns[name], time.monotonic()
    conn.settimeout(1.0)
    try:
        conn.sendall(b"ping\\n")
        answer = "ok" if conn.recv(100) == b"ping\\n" else "closed"
    except ConnectionResetError:
        answer = f"reset {time.monotonic() - start:.3f}"
    except TimeoutError:
        answer = "timeout"
    print(answer, flush=True)
"""

# In the gateway: "list" prints the allowed connections; "end HOW JSON" ends one and prints
# whether it was there and the entry's connmark afterwards.
CONNTRACK_SCRIPT = f"""
import dataclasses, json, socket, sys
sys.path.insert(0, {str(ROOT)!r})
from pyroute2 import Conntrack
from portguard.io.conntrack import (
    TrackedConnection, allowed_connections, end_connection, original_tuple,
)
from portguard.core.policy.model import Direction
if sys.argv[1] == "list":
    print(json.dumps([dataclasses.asdict(conn) for conn in allowed_connections()]))
    sys.exit()
fields = json.loads(sys.argv[3])
conn = TrackedConnection(**{{**fields, "direction": Direction(fields["direction"])}})
ended = end_connection(conn, sys.argv[2])
family = socket.AF_INET if conn.version == 4 else socket.AF_INET6
with Conntrack(nfgen_family=family) as ct:
    try:
        mark = ct.entry("get", tuple_orig=original_tuple(conn)).get_attr("CTA_MARK")
    except Exception:
        mark = None
print(json.dumps({{"ended": ended, "mark": mark}}))
"""


def start(ns: Netns, script: str) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = ns.popen(sys.executable, "-c", script)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


class Client:
    """The client process: keeps named connections open across the test's steps."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def open(self, name: str, version: int) -> int:
        return int(self.ask(f"open {name} {SERVER[version]} {PORTS[version]}"))

    def echo(self, name: str) -> str:
        return self.ask(f"echo {name}")


@dataclasses.dataclass
class Lab:
    client: Netns
    gateway: Netns
    server: Netns
    procs: list[subprocess.Popen[str]]

    def conntrack(self, *args: str) -> Any:
        return json.loads(self.gateway.run(sys.executable, "-c", CONNTRACK_SCRIPT, *args))

    def allowed(self) -> dict[int, TrackedConnection]:
        """The allowed connections in the gateway, by client port."""
        listed = self.conntrack("list")
        conns = [TrackedConnection(**{**c, "direction": Direction(c["direction"])}) for c in listed]
        return {conn.sport: conn for conn in conns}

    def end(self, conn: TrackedConnection, how: str) -> tuple[bool, int | None]:
        answer = self.conntrack("end", how, json.dumps(dataclasses.asdict(conn)))
        return answer["ended"], answer["mark"]


def wire(a: Netns, b: Netns, a_host: int, b_host: int, subnet: dict[int, str]) -> None:
    """A veth pair between a and b, with host numbers in the subnet of each family."""
    ifa, ifb = f"pg{a.name[-6:]}a", f"pg{b.name[-6:]}b"
    labns.batch(a.name, [f"link add {ifa} type veth peer name {ifb} netns {b.name}"])
    for ns, dev, host in ((a, ifa, a_host), (b, ifb, b_host)):
        labns.batch(
            ns.name,
            [
                f"addr add {subnet[4]}{host}/24 dev {dev}",
                f"addr add {subnet[6]}{host:x}/64 dev {dev} nodad",
                f"link set {dev} up",
            ],
        )


def operator_connmark(ns: Netns, chain: str) -> None:
    for family in ("iptables", "ip6tables"):
        bit = f"{OPERATOR_BIT:#x}/{OPERATOR_BIT:#x}"
        new = ("-m", "conntrack", "--ctstate", "NEW")
        ns.run(
            family, "-w", "-t", "mangle", "-A", chain, *new, "-j", "CONNMARK", "--set-xmark", bit
        )


GATEWAY_HOOK = HookSpec(0, 1, (25, 587), ("forward",), False)


def install_hook(gateway: Netns, backend: str) -> None:
    """The gateway's hook. This kernel has no nft queue: for nftables, the queue rule only
    counts, and an iptables rule in mangle FORWARD (which runs before the filter chains) queues
    the SYN; the binder's NF_REPEAT re-runs that rule, then the portguard table sees the mark."""
    if backend == "iptables":
        IptablesBackend(gateway.runner).install(GATEWAY_HOOK)
        return
    text = NftablesBackend().render(GATEWAY_HOOK)
    gateway.run("nft", "-f", "-", stdin=text.replace(queue_statement(GATEWAY_HOOK), "counter"))
    for family in ("iptables", "ip6tables"):
        gateway.run(family, "-w", "-t", "mangle", "-A", "FORWARD", *QUEUE_FIRST_SYN)


QUEUE_FIRST_SYN = (
    *("-p", "tcp", "--syn", "-m", "multiport", "--dports", "25,587"),
    *("-m", "conntrack", "--ctstate", "NEW", "-m", "mark", "--mark", f"0/{MARK_MASK:#x}"),
    *("-j", "NFQUEUE", "--queue-num", "0"),
)


@pytest.fixture(params=["iptables", "nftables"])
def routed(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """client - gateway (hook, binder) - server (echo), both families."""
    require_root()
    with throwaway_netns() as client, throwaway_netns() as gateway, throwaway_netns() as server:
        wire(client, gateway, 1, 254, {4: "192.0.2.", 6: "2001:db8:1::"})
        wire(gateway, server, 254, 2, {4: "198.51.100.", 6: "2001:db8:2::"})
        for ns, via in (
            (client, "192.0.2.254 2001:db8:1::fe"),
            (server, "198.51.100.254 2001:db8:2::fe"),
        ):
            v4, v6 = via.split()
            labns.batch(ns.name, [f"route add default via {v4}", f"route add ::/0 via {v6}"])
        labns.sysctl(
            gateway.name, {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}
        )
        operator_connmark(gateway, "PREROUTING")
        install_hook(gateway, request.param)
        procs = [start(server, ECHO_SERVER), start(gateway, BINDER)]
        try:
            yield Lab(client, gateway, server, procs)
        finally:
            for proc in procs:
                proc.kill()
                proc.communicate()


def open_two(lab: Lab) -> tuple[Client, int, int]:
    client = Client(start(lab.client, CLIENT_SCRIPT))
    lab.procs.append(client.proc)
    v4, v6 = client.open("v4", 4), client.open("v6", 6)
    assert (client.echo("v4"), client.echo("v6")) == ("ok", "ok")
    return client, v4, v6


def test_connmark_records_verdict_direction_and_keeps_operator_bits(routed: Lab) -> None:
    _client, v4, v6 = open_two(routed)
    allowed = routed.allowed()
    assert set(allowed) == {v4, v6}
    for port, version in ((v4, 4), (v6, 6)):
        conn = allowed[port]
        assert (conn.version, conn.dport) == (version, PORTS[version])
        assert conn.direction is DIRECTIONS[conn.dport]
        assert conn.mark == OPERATOR_BIT | mark_bits(0x01000000, conn.direction)
        assert conn.src == int(ipaddress.ip_address(CLIENT[version]))


def test_reject_resets_the_connection_at_once_and_spares_the_other(routed: Lab) -> None:
    client, v4, v6 = open_two(routed)
    ended, mark = routed.end(routed.allowed()[v4], "reject")
    assert ended and mark == OPERATOR_BIT | mark_bits(MARK_REJECT, Direction.OUTBOUND)
    answer = client.echo("v4")
    assert answer.startswith("reset "), answer
    assert float(answer.split()[1]) < 1.0
    assert client.echo("v6") == "ok"
    assert set(routed.allowed()) == {v6}


def test_drop_silences_the_connection_and_spares_the_other(routed: Lab) -> None:
    client, v4, v6 = open_two(routed)
    ended, mark = routed.end(routed.allowed()[v6], "drop")
    assert ended and mark == OPERATOR_BIT | mark_bits(MARK_DROP, Direction.INBOUND)
    assert client.echo("v6") == "timeout"
    assert client.echo("v4") == "ok"
    assert set(routed.allowed()) == {v4}


def test_ending_an_entry_that_is_gone_is_false(routed: Lab) -> None:
    client, v4, _v6 = open_two(routed)
    conn = routed.allowed()[v4]
    gone = dataclasses.replace(conn, sport=conn.sport ^ 1)
    assert routed.end(gone, "reject") == (False, None)
    routed.gateway.run("conntrack", "-D", "-p", "tcp", "--orig-port-src", str(conn.sport))
    assert routed.end(conn, "reject") == (False, None)
    # Why connections are ended by mark, not by deleting their entry: conntrack picks the
    # connection up again from its next packet, unmarked, and the hook lets it pass.
    assert client.echo("v4") == "ok"
    assert routed.gateway.run("conntrack", "-L", "-p", "tcp", "--orig-port-src", str(v4)).count(
        f"sport={v4} "
    )


@pytest.fixture
def own_host() -> Iterator[Lab]:
    """A host hooking its own connections (chain output), directly linked to the server."""
    require_root()
    with throwaway_netns() as host, throwaway_netns() as server:
        wire(host, server, 1, 2, {4: "198.51.100.", 6: "2001:db8:2::"})
        IptablesBackend(host.runner).install(HookSpec(0, 1, (25, 587), ("output",), False))
        procs = [start(server, ECHO_SERVER), start(host, BINDER)]
        try:
            yield Lab(host, host, server, procs)
        finally:
            for proc in procs:
                proc.kill()
                proc.communicate()


def test_reject_in_the_output_chain_lets_its_own_reset_out(own_host: Lab) -> None:
    """The host's own reset carries the connmark through OUTPUT: the hook must not reject it."""
    client, v4, _v6 = open_two(own_host)
    allowed = own_host.allowed()
    assert {conn.mark & MARK_MASK for conn in allowed.values()} == {0x05000000, 0x09000000}
    ended, mark = own_host.end(allowed[v4], "reject")
    assert ended and mark is not None and mark & VERDICT_MASK == MARK_REJECT
    answer = client.echo("v4")
    assert answer.startswith("reset "), answer
    assert float(answer.split()[1]) < 1.0
    assert client.echo("v6") == "ok"
