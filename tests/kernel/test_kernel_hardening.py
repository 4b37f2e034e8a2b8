"""The stages before the queue (`[queue] per_source`, the INVALID drop) on the stock kernel.

The per-source limit is an nft meter: a dynamic set per family whose elements carry a `limit`;
the INVALID drop matches `ct state invalid` SYNs. Both count what they drop in named counters
(`hook status`); a SYN is either dropped there or queued, so the two figures add up to what was
sent. One daemon, with a small limit so that a short flood exceeds it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from kernel_lab import gw_runner, in_netns, queued, send
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon, hooks_leftover
from lab.synflood import FloodResult, SynTemplate, flood, raw_socket
from portguard.io.hooks.backend import COUNTER_INVALID, COUNTER_PER_SOURCE
from portguard.io.hooks.nftables import NftablesBackend

RATE, BURST = 10, 20
FLOOD = 300  # SYNs in one second, from one source: far over RATE + BURST
LIMIT = f'per_source = {{ rate = "{RATE}/second", burst = {BURST} }}\n'


@pytest.fixture(scope="module")
def daemon(lab: Lab) -> Iterator[LabDaemon]:
    running = LabDaemon(lab)
    text = running.config.read_text()
    running.config.write_text(text.replace("max_len = 4096\n", "max_len = 4096\n" + LIMIT, 1))
    running.start(timeout=120)
    try:
        yield running
    finally:
        running.stop()
    assert not hooks_leftover(lab)


def counters(lab: Lab) -> dict[str, int]:
    return dict(NftablesBackend(gw_runner(lab)).status().counters)


def syn_flood(src: str, dst: str) -> FloodResult:
    """FLOOD distinct SYNs (own source port each) to dst:25 within about a second."""
    address, target = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    template = SynTemplate(address.version, [int(address)], int(target), 25)
    with raw_socket(address.version) as sock:
        return flood(lambda data: sock.sendto(data, (dst, 0)), template, FLOOD, 1.0)


def send_raw(packet: bytes, dst: str, version: int) -> None:
    with raw_socket(version) as sock:
        sock.sendto(packet, (dst, 0))


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_a_flood_from_one_source_is_cut_before_the_queue(
    lab: Lab, daemon: LabDaemon, version: int
) -> None:
    before_queued, before = queued(lab), counters(lab)
    src, dst = a.SUBSCRIBER.family(version), a.MX.family(version)
    result = in_netns(lab, "sub", syn_flood, src, dst)
    assert result.sent == FLOOD and result.errors == 0, result
    dropped = counters(lab)[COUNTER_PER_SOURCE] - before[COUNTER_PER_SOURCE]
    passed = queued(lab) - before_queued
    assert dropped + passed == FLOOD, (dropped, passed)  # every SYN: dropped or queued
    allowance = BURST + RATE * (result.seconds + 5)  # generous: TCG's clock runs unevenly
    assert BURST <= passed <= allowance, (passed, result)
    # another source has its own bucket: a business customer still gets through
    assert send(lab, "biz", a.MX.family(version), 25).outcome == "delivered"


@pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])
def test_an_invalid_syn_is_dropped_before_the_queue(
    lab: Lab, daemon: LabDaemon, version: int
) -> None:
    """SYN+FIN: conntrack calls it INVALID, so `ct state new` would not queue it and it would
    pass to the server unseen; the hook drops and counts it."""
    src, dst = a.BUSINESS.family(version), a.MX.family(version)
    layer = IP(src=src, dst=dst) if version == 4 else IPv6(src=src, dst=dst)
    packet = bytes(layer / TCP(sport=40999, dport=25, flags="SF", seq=1))
    before_queued, before = queued(lab), counters(lab)
    in_netns(lab, "biz", send_raw, packet, dst, version)
    assert counters(lab)[COUNTER_INVALID] - before[COUNTER_INVALID] == 1
    assert queued(lab) == before_queued
