"""bench/floor.py: its header parse against scapy, and its callback's verdict and mark."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from bench import floor
from portguard.core.marks import MARK_ALLOW, MARK_MASK, VERDICT_MASK, direction_of_mark
from portguard.core.policy.model import Direction

ports = st.integers(0, 65535)
flags = st.sampled_from(["S", "SA", "A", "R", "F", "SE", "SEC"])
v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
options = st.sampled_from([[], [("MSS", 1460)], [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]])


def expected(packet: IP | IPv6) -> floor.Syn:
    """The fields as scapy dissects them from the bytes."""
    parsed = (IP if packet.version == 4 else IPv6)(bytes(packet))
    tcp = parsed[TCP]
    return floor.Syn(
        parsed.version,
        int(ipaddress.ip_address(parsed.src)),
        int(ipaddress.ip_address(parsed.dst)),
        tcp.sport,
        tcp.dport,
        int(tcp.flags),
        tcp.seq,
    )


@settings(deadline=None)  # scapy builds each packet: slow on a busy machine
@given(v4, v4, ports, ports, st.integers(0, 2**32 - 1), flags, options, st.integers(0, 10))
def test_ipv4_fields_are_what_scapy_reads(
    src: str, dst: str, sport: int, dport: int, seq: int, flag: str, opts: list, ip_words: int
) -> None:
    ip_options = b"\x01" * (ip_words * 4)  # NOPs: a longer IPv4 header moves the TCP header
    packet = IP(src=src, dst=dst, options=ip_options) / TCP(
        sport=sport, dport=dport, seq=seq, flags=flag, options=opts
    )
    assert floor.parse(bytes(packet)) == expected(packet)


@settings(deadline=None)
@given(v6, v6, ports, ports, st.integers(0, 2**32 - 1), flags, options)
def test_ipv6_fields_are_what_scapy_reads(
    src: str, dst: str, sport: int, dport: int, seq: int, flag: str, opts: list
) -> None:
    packet = IPv6(src=src, dst=dst) / TCP(
        sport=sport, dport=dport, seq=seq, flags=flag, options=opts
    )
    assert floor.parse(bytes(packet)) == expected(packet)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(IP(dst="198.51.100.25") / UDP(dport=25)),  # not TCP
        bytes(IP(dst="198.51.100.25") / TCP(dport=25))[:30],  # TCP header cut short
        bytes(IPv6(dst="2001:db8::25") / TCP(dport=25))[:39],  # IPv6 header cut short
        b"\x50" + bytes(39),  # IP version 5
    ],
)
def test_anything_else_is_not_parsed(data: bytes) -> None:
    assert floor.parse(data) is None


class FakePacket:
    """What the callback uses of a netfilterqueue.Packet."""

    def __init__(self, payload: bytes | Exception, mark: int = 0) -> None:
        self.payload, self.mark, self.verdicts = payload, mark, []

    def get_payload(self) -> bytes:
        if isinstance(self.payload, Exception):
            raise self.payload
        return self.payload

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        self.mark = mark

    def repeat(self) -> None:
        self.verdicts.append("repeat")


def test_the_callback_marks_allow_outbound_keeps_other_bits_and_repeats() -> None:
    callback = floor.Floor()
    packet = FakePacket(bytes(IP(dst="198.51.100.25") / TCP(dport=25, flags="S")), mark=0x5)
    callback(packet)
    assert packet.verdicts == ["repeat"]
    assert packet.mark & VERDICT_MASK == MARK_ALLOW and packet.mark & ~MARK_MASK == 0x5
    assert direction_of_mark(packet.mark) is Direction.OUTBOUND
    assert (callback.packets, callback.unparsed) == (1, 0)


def test_every_packet_gets_its_verdict_even_when_reading_it_fails() -> None:
    callback = floor.Floor()
    callback(FakePacket(b"\x00junk"))
    broken = FakePacket(RuntimeError("no payload"))
    with pytest.raises(RuntimeError):
        callback(broken)
    assert broken.verdicts == ["repeat"]
    assert (callback.packets, callback.unparsed) == (2, 1)
