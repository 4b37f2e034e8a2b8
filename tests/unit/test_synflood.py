"""The lab's SYN generator: packet bytes against scapy, the fast template, pacing (fake clock)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.utils import checksum as scapy_checksum

from lab import synflood as sf
from portguard.core.packet.decode import decode
from portguard.core.packet.model import SYN

SUB4, MX4 = int(ipaddress.IPv4Address("100.64.10.10")), int(ipaddress.IPv4Address("198.51.100.25"))
SUB6 = int(ipaddress.IPv6Address("2001:db8:64:10::10"))
MX6 = int(ipaddress.IPv6Address("2001:db8:25::25"))

ports = st.integers(0, 65535)
isns = st.integers(0, 2**32 - 1)


def scapy_syn(
    version: int, src: int, dst: int, sport: int, dport: int, seq: int, ident: int
) -> bytes:
    """The same SYN as scapy builds it (scapy computes both checksums itself)."""
    tcp = TCP(sport=sport, dport=dport, seq=seq, flags="S", window=sf.WINDOW,
              options=[("MSS", 1460)])  # fmt: skip
    if version == 4:
        ip = IP(src=str(ipaddress.IPv4Address(src)), dst=str(ipaddress.IPv4Address(dst)),
                id=ident, flags="DF", ttl=sf.TTL)  # fmt: skip
        return bytes(ip / tcp)
    ip6 = IPv6(src=str(ipaddress.IPv6Address(src)), dst=str(ipaddress.IPv6Address(dst)), hlim=64)
    return bytes(ip6 / tcp)


def test_checksum_of_the_rfc_1071_example() -> None:
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert sf.ones_sum(data) == 0x2DDF0
    assert sf.fold(0x2DDF0) == 0xDDF2
    assert sf.checksum(data) == 0x220D


@given(st.binary(max_size=200))
def test_checksum_agrees_with_scapy(data: bytes) -> None:
    assert sf.checksum(data) == scapy_checksum(data)


@given(ports, ports, isns, st.integers(0, 0xFFFF))
def test_ipv4_syn_is_byte_for_byte_what_scapy_builds(
    sport: int, dport: int, seq: int, ident: int
) -> None:
    ours = sf.syn_packet(4, SUB4, MX4, sport, dport, seq, ident)
    assert ours == scapy_syn(4, SUB4, MX4, sport, dport, seq, ident)


@given(ports, ports, isns)
def test_ipv6_syn_is_byte_for_byte_what_scapy_builds(sport: int, dport: int, seq: int) -> None:
    ours = sf.syn_packet(6, SUB6, MX6, sport, dport, seq)
    assert ours == scapy_syn(6, SUB6, MX6, sport, dport, seq, 0)


@pytest.mark.parametrize(("version", "src", "dst"), [(4, SUB4, MX4), (6, SUB6, MX6)])
@given(st.integers(0, 7), ports, isns, st.integers(0, 0xFFFF))
def test_template_builds_the_reference_packet(
    version: int, src: int, dst: int, source: int, sport: int, seq: int, ident: int
) -> None:
    template = sf.SynTemplate(version, [src + i for i in range(8)], dst, 25)
    expected = sf.syn_packet(
        version, src + source, dst, sport, 25, seq, ident if version == 4 else 0
    )
    assert template.packet(source, sport, seq, ident) == expected


def test_checksums_verify_to_zero_and_the_daemon_decodes_a_syn() -> None:
    data = sf.SynTemplate(4, [SUB4], MX4, 25).packet(0, 40312, 0xDEADBEEF, 7)
    assert sf.checksum(data[:20]) == 0
    assert sf.checksum(sf.pseudo_header(4, SUB4, MX4, sf.TCP_LEN) + data[20:]) == 0
    packet = decode(data)
    assert (packet.version, packet.src, packet.dst) == (4, SUB4, MX4)
    assert (packet.sport, packet.dport, packet.seq, packet.flags) == (40312, 25, 0xDEADBEEF, SYN)
    six = decode(sf.SynTemplate(6, [SUB6], MX6, 587).packet(0, 1024, 1))
    assert (six.version, six.src, six.dst, six.dport) == (6, SUB6, MX6, 587)


def test_template_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        sf.SynTemplate(5, [SUB4], MX4, 25)
    with pytest.raises(ValueError):
        sf.SynTemplate(4, [], MX4, 25)


def test_attempts_are_distinct_until_every_source_and_port_was_used() -> None:
    sources = 3
    span = sources * sf.PORT_COUNT
    seen = {sf.attempt(index, sources) for index in range(span)}
    assert len(seen) == span
    assert all(sf.FIRST_PORT <= port <= 65535 and 0 <= src < sources for src, port in seen)
    assert sf.attempt(span, sources) == sf.attempt(0, sources)  # then it wraps
    assert [sf.attempt(i, 3)[0] for i in range(4)] == [0, 1, 2, 0]  # sources rotate first


def test_batch_size_sends_what_is_due_capped_and_never_beyond_the_total() -> None:
    assert sf.batch_cap(20_000) == 80  # 20 a millisecond, 4 ms of catching up at most
    assert sf.batch_size(0.0, 20_000, 0, 1000) == 0
    assert sf.batch_size(0.001, 20_000, 0, 1000) == 20
    assert sf.batch_size(0.5, 20_000, 0, 100_000) == 80  # far behind: capped
    assert sf.batch_size(1.0, 20_000, 990, 1000) == 10  # never past the total
    assert sf.batch_size(0.001, 20_000, 30, 1000) == 0  # ahead: nothing
    assert sf.batch_cap(10) == 1


class FakeClock:
    """Time moves only by sleeping and by a fixed cost per send."""

    def __init__(self, send_cost: float = 2e-6) -> None:
        self.now = 100.0
        self.send_cost = send_cost
        self.sent: list[bytes] = []
        self.batches: list[int] = []
        self._batch = 0

    def clock(self) -> float:
        """flood reads the clock before every batch: what was sent since is one batch."""
        self.batches.append(self._batch)
        self._batch = 0
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds + 50e-6  # a sleep overshoots a little, as on Linux

    def send(self, data: bytes) -> None:
        self.sent.append(data)
        self._batch += 1
        self.now += self.send_cost


def test_flood_paces_distinct_syns_at_the_rate() -> None:
    fake = FakeClock()
    template = sf.SynTemplate(4, [SUB4, SUB4 + 1], MX4, 25)
    result = sf.flood(fake.send, template, 20_000, 0.5, fake.clock, fake.sleep)
    assert result.sent == len(fake.sent) == 10_000 and result.errors == 0
    assert result.rate == pytest.approx(20_000, rel=0.03)
    assert max(fake.batches) <= sf.batch_cap(20_000)
    keys = {(p.src, p.sport) for p in map(decode, fake.sent)}
    assert len(keys) == 10_000  # every SYN a connection attempt of its own
    assert len({decode(data).seq for data in fake.sent}) > 9_900  # random ISNs


def test_flood_catches_up_after_a_stall_in_capped_batches() -> None:
    fake = FakeClock()
    stalled = False

    def send(data: bytes) -> None:
        nonlocal stalled
        fake.send(data)
        if len(fake.sent) == 100 and not stalled:
            stalled = True
            fake.now += 0.05  # 50 ms without the CPU: 1,000 SYNs overdue

    template = sf.SynTemplate(4, [SUB4], MX4, 25)
    result = sf.flood(send, template, 20_000, 0.5, fake.clock, fake.sleep)
    assert result.sent == 10_000
    assert result.rate == pytest.approx(20_000, rel=0.03)
    assert max(fake.batches) <= sf.batch_cap(20_000) < 1000


def test_failed_sends_are_errors_not_sent() -> None:
    fake = FakeClock()
    calls = 0

    def send(data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls % 10 == 0:
            raise OSError(105, "No buffer space available")
        fake.send(data)

    result = sf.flood(send, sf.SynTemplate(4, [SUB4], MX4, 25), 1000, 1.0, fake.clock, fake.sleep)
    assert (result.sent, result.errors) == (900, 100)
    line = json.loads(result.json())
    assert line["sent"] == 900 and line["errors"] == 100
    assert line["rate"] == pytest.approx(900 / line["seconds"], rel=0.01)


def test_source_addresses_are_consecutive() -> None:
    assert sf.source_addresses("100.64.10.100", 3) == (4, [SUB4 + 90, SUB4 + 91, SUB4 + 92])
    version, six = sf.source_addresses("2001:db8:64:10::ffff", 2)
    assert version == 6 and six == [SUB6 - 0x10 + 0xFFFF, SUB6 - 0x10 + 0x10000]
    with pytest.raises(ValueError):
        sf.source_addresses("255.255.255.255", 2)


def test_arguments_are_checked_before_any_socket_is_opened() -> None:
    with pytest.raises(SystemExit):
        sf.parse_args(["--src", "100.64.10.10", "--dst", "198.51.100.25", "--rate", "0",
                       "--seconds", "1"])  # fmt: skip
    mixed = ["--src", "100.64.10.10", "--dst", "2001:db8:25::25", "--rate", "10", "--seconds", "1"]
    assert sf.main(mixed) == 2
