"""The fail-open queue flag against the real kernel: a full queue passes or drops new connections.

A client namespace hooks its own outgoing SYNs to port 25 (OUTPUT) into queue 0, which a holder
process binds with room for one packet and never reads. A burst of connections to a listener
namespace then overflows the queue: with fail-open the overflow connects, without it it times out.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns import Netns, link, require_root, throwaway_netns

from portguard.io.hooks.backend import HookSpec
from portguard.io.hooks.iptables import IptablesBackend

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIENT, SERVER = "192.0.2.1", "192.0.2.2"
PORT = 25
BURST = 6
QUEUE = 0

HOLDER = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from netfilterqueue import NetfilterQueue
from portguard.io.queueflags import set_fail_open
queue = NetfilterQueue()
queue.bind({QUEUE}, lambda packet: packet.accept(), max_len=1)
set_fail_open(queue.get_fd(), {QUEUE}, sys.argv[1] == "open")
print("ready", flush=True)
sys.stdin.read()  # never reads the queue; exits when the test closes stdin
"""

LISTENER = f"""
import socket
server = socket.create_server(({SERVER!r}, {PORT}), backlog=64)
print("ready", flush=True)
while True:
    server.accept()[0].close()
"""

BURST_CLIENT = f"""
import socket
from concurrent.futures import ThreadPoolExecutor
def connect(_):
    try:
        socket.create_connection(({SERVER!r}, {PORT}), timeout=3).close()
        return 1
    except OSError:
        return 0
with ThreadPoolExecutor({BURST}) as pool:
    print(sum(pool.map(connect, range({BURST}))))
"""


@dataclass(frozen=True)
class QueueStats:
    """One line of /proc/net/netfilter/nfnetlink_queue."""

    queue_num: int
    waiting: int
    dropped: int
    user_dropped: int


def queue_stats(ns: Netns) -> QueueStats:
    for line in ns.run("cat", "/proc/net/netfilter/nfnetlink_queue").splitlines():
        fields = [int(word) for word in line.split()]
        if fields[0] == QUEUE:
            return QueueStats(fields[0], fields[2], fields[5], fields[6])
    raise AssertionError(f"queue {QUEUE} is not bound")


def start(ns: Netns, script: str, *args: str) -> subprocess.Popen[str]:
    proc = ns.popen(sys.executable, "-c", script, *args)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


@pytest.fixture
def lab() -> Iterator[tuple[Netns, Netns]]:
    """(client, server) namespaces joined by a veth pair."""
    require_root()
    with throwaway_netns() as client, throwaway_netns() as server:
        link(client, server, f"{CLIENT}/24", f"{SERVER}/24")
        yield client, server


@pytest.mark.parametrize("fail_open", [True, False])
def test_full_queue_passes_connections_only_when_failing_open(
    lab: tuple[Netns, Netns], fail_open: bool
) -> None:
    client, server = lab
    procs = [start(server, LISTENER)]
    try:
        procs.append(start(client, HOLDER, "open" if fail_open else "closed"))
        spec = HookSpec(QUEUE, 1, (PORT,), ("output",), fail_open=False)  # no bypass: bound
        IptablesBackend(client.runner).install(spec)
        connected = int(client.run(sys.executable, "-c", BURST_CLIENT))
        stats = queue_stats(client)
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
    # The first SYN fills the queue and waits for a verdict that never comes; TCP does not
    # retransmit a packet still held in its own host, so that one connection cannot succeed.
    assert stats.waiting == 1
    if fail_open:
        assert (connected, stats.dropped) == (BURST - 1, 0)
    else:
        assert connected == 0 and stats.dropped >= BURST - 1
