"""Packet decoder: literal packets, scapy cross-checks, malformed input and properties."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    HBHOptUnknown,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw

from portguard.core.packet import ACK, SYN, DecodeError, Endpoints, Packet, decode, endpoints
from portguard.core.packet.decode import decode_syn
from tests import packetfuzz
from tests.strategies import PacketSpec, mutated_packets, packet_specs, random_packets

# A Linux-style SYN 100.64.10.10:40312 -> 198.51.100.25:25 with MSS 1460, SACK permitted,
# timestamps (0xaabbccdd, 0), NOP, window scale 7 (checksums correct, as scapy built it).
V4_SYN = bytes.fromhex(
    "4500003c1c464000400685df64400a0ac63364199d7800196b8b456700000000"
    "a002faf0ee5a0000020405b40402080aaabbccdd0000000001030307"
)
# The same SYN over IPv6: 2001:db8:64::10:40312 -> 2001:db8:25::25:587, hop limit 64.
V6_SYN = bytes.fromhex(
    "600000000028064020010db800640000000000000000001020010db800250000"
    "00000000000000259d78024b1234567800000000a002fd206ea60000020405b4"
    "0402080aaabbccdd0000000001030307"
)
LINUX_OPTIONS = (
    (2, b"\x05\xb4"),
    (4, b""),
    (8, b"\xaa\xbb\xcc\xdd\x00\x00\x00\x00"),
    (1, b""),
    (3, b"\x07"),
)
SCAPY_OPTIONS = [
    ("MSS", 1460),
    ("SAckOK", b""),
    ("Timestamp", (0xAABBCCDD, 0)),
    ("NOP", None),
    ("WScale", 7),
]
V4_TCP = 20  # offset of the TCP header in V4_SYN
V6_TCP = 40


def address(text: str) -> int:
    return int(ipaddress.ip_address(text))


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def v6_with(chain: ScapyPacket) -> bytes:
    """An IPv6 SYN to port 25 behind the given extension headers (scapy sets the lengths)."""
    base = IPv6(src="2001:db8::1", dst="2001:db8::25")
    return bytes(base / chain / TCP(sport=40000, dport=25, flags="S", options=SCAPY_OPTIONS))


def destination_options(count: int) -> ScapyPacket:
    chain = IPv6ExtHdrDestOpt()
    for _ in range(count - 1):
        chain = chain / IPv6ExtHdrDestOpt()
    return chain


# --- well-formed packets ---------------------------------------------------------------------


def test_literal_v4_syn() -> None:
    packet = decode(V4_SYN)
    assert packet == Packet(
        version=4, src=address("100.64.10.10"), dst=address("198.51.100.25"), sport=40312,
        dport=25, flags=SYN, seq=0x6B8B4567, ack=0, window=64240, ttl=64, length=60,
        options=LINUX_OPTIONS, payload_len=0,
    )  # fmt: skip


def test_literal_v6_syn() -> None:
    packet = decode(V6_SYN)
    assert packet == Packet(
        version=6, src=address("2001:db8:64::10"), dst=address("2001:db8:25::25"), sport=40312,
        dport=587, flags=SYN, seq=0x12345678, ack=0, window=64800, ttl=64, length=80,
        options=LINUX_OPTIONS, payload_len=0,
    )  # fmt: skip


@pytest.mark.parametrize(
    "ip",
    [
        IP(src="100.64.1.2", dst="203.0.113.25", ttl=57, flags="DF"),
        IPv6(src="2001:db8:1::2", dst="2001:db8:2::25", hlim=250),
    ],
)
def test_fields_match_scapy(ip: ScapyPacket) -> None:
    tcp = TCP(
        sport=51000, dport=465, seq=4_000_000_000, ack=12345, flags="PA", window=502,
        options=[("NOP", None), ("NOP", None), ("Timestamp", (7, 9))],
    )  # fmt: skip
    wire = bytes(ip / tcp / Raw(b"EHLO client.example\r\n"))
    parsed = (IP if ip.version == 4 else IPv6)(wire)
    packet = decode(wire)
    assert (packet.src_ip, packet.dst_ip) == (
        ipaddress.ip_address(parsed.src),
        ipaddress.ip_address(parsed.dst),
    )
    got = (packet.sport, packet.dport, packet.seq, packet.ack, packet.flags, packet.window)
    tcp_layer = parsed[TCP]
    assert got == (51000, 465, 4_000_000_000, 12345, int(tcp_layer.flags), 502)
    assert packet.ttl == (parsed.ttl if ip.version == 4 else parsed.hlim)
    assert packet.length == len(wire)
    assert packet.payload_len == len(b"EHLO client.example\r\n")
    assert packet.options == ((1, b""), (1, b""), (8, struct.pack("!II", 7, 9)))
    assert packet.flags == 0x18 and packet.has(ACK) and not packet.has(SYN)


def test_v6_hop_by_hop_destination_options_and_first_fragment() -> None:
    chain = IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrFragment(offset=0, m=1)
    packet = decode(v6_with(chain))
    assert (packet.version, packet.dport, packet.flags) == (6, 25, SYN)
    assert packet.options == LINUX_OPTIONS


def test_v6_routing_and_authentication_headers() -> None:
    auth = AH(nh=6, payloadlen=4, spi=0x100, icv=bytes(12))  # 24 bytes: (4 + 2) * 4
    wire = v6_with(IPv6ExtHdrRouting(addresses=["2001:db8::99"]) / auth)
    assert (wire[6], wire[40], wire[64:66]) == (43, 51, b"\x06\x04")
    packet = decode(wire)
    assert (packet.sport, packet.dport, packet.options) == (40000, 25, LINUX_OPTIONS)


@pytest.mark.parametrize("count", [8, 9, 100])
def test_any_number_of_extension_headers_is_walked(count: int) -> None:
    packet = decode(v6_with(destination_options(count)))  # Linux accepts them all
    assert (packet.dport, packet.flags, packet.options) == (25, SYN, LINUX_OPTIONS)


def test_skippable_unknown_options_in_a_1_kib_destination_options_header() -> None:
    unknown = [HBHOptUnknown(otype=0x1E, optdata=b"\xa5" * 254)] * 4  # action 00: skip
    wire = v6_with(IPv6ExtHdrDestOpt(options=unknown))
    assert wire[41] >= 127  # (127 + 1) * 8 = 1 KiB
    assert decode(wire).dport == 25


def test_ipv4_options_are_skipped() -> None:
    wire = bytes(IP(dst="192.0.2.25", options=b"\x01" * 8) / TCP(dport=25, flags="S"))
    assert wire[0] == 0x47
    assert decode(wire).dport == 25


def test_first_ipv4_fragment_carries_the_tcp_header() -> None:
    wire = bytes(IP(dst="192.0.2.25", flags="MF", frag=0) / TCP(dport=25) / Raw(bytes(64)))
    assert decode(wire).payload_len == 64


def test_truncated_copy_keeps_the_stated_lengths() -> None:
    wire = bytes(IP(dst="192.0.2.25") / TCP(dport=25, options=SCAPY_OPTIONS) / Raw(bytes(1000)))
    packet = decode(wire[:60])  # the kernel copied only the headers
    assert (packet.length, packet.payload_len) == (1060, 1000)
    assert packet == decode(wire)


def test_bytes_beyond_the_stated_length_are_ignored() -> None:
    assert decode(V4_SYN + b"\x00" * 6) == decode(V4_SYN)
    assert decode(V6_SYN + b"trailer") == decode(V6_SYN)


def test_eol_ends_the_option_list() -> None:
    wire = patched(V4_SYN, V4_TCP + 20, b"\x02\x04\x05\xb4\x00\xff\xff\xff")
    assert decode(wire).options == ((2, b"\x05\xb4"),)


@pytest.mark.parametrize("base", [V4_SYN, V6_SYN], ids=["v4", "v6"])
def test_every_prefix_decodes_the_same_or_raises(base: bytes) -> None:
    whole = decode(base)
    for size in range(len(base) + 1):
        if size < len(base):  # the SYN has no payload: every shorter prefix cuts a header
            with pytest.raises(DecodeError):
                decode(base[:size])
        else:
            assert decode(base[:size]) == whole


@given(spec=packet_specs())
@settings(max_examples=100, deadline=None)
def test_every_prefix_of_generated_packets(spec: PacketSpec) -> None:
    wire, whole = spec.to_bytes(), spec.expected()
    for size in range(len(wire)):
        if size >= spec.header_len:
            assert decode(wire[:size]) == whole
        else:
            with pytest.raises(DecodeError):
                decode(wire[:size])


def syn_fields_or_error(data: bytes) -> tuple[int, ...] | str:
    """What `decode_syn` makes of `data`: its fields, or its error's message."""
    try:
        return decode_syn(data)
    except DecodeError as error:
        return str(error)


def decoded_or_error(data: bytes) -> tuple[int, ...] | str:
    """The same fields through `decode`, or its error's message."""
    try:
        p = decode(data)
    except DecodeError as error:
        return str(error)
    return (p.version, p.src, p.dst, p.sport, p.dport, p.flags, p.seq)


@pytest.mark.parametrize("seed", range(4))
def test_decode_syn_refuses_and_reads_exactly_what_decode_does(seed: int) -> None:
    """The gate's fast decode against the full one on 20,000 generated and mutated packets
    (every prefix of a few, too): same fields, or the same error."""
    for data in packetfuzz.packets(seed, 5000):
        assert syn_fields_or_error(data) == decoded_or_error(data)
    for base in (V4_SYN, V6_SYN):
        for size in range(len(base) + 1):
            assert syn_fields_or_error(base[:size]) == decoded_or_error(base[:size])


@given(spec=packet_specs())
@settings(max_examples=200, deadline=None)
def test_decode_syn_on_generated_packets(spec: PacketSpec) -> None:
    wire = spec.to_bytes()
    assert syn_fields_or_error(wire) == decoded_or_error(wire)


# --- malformed packets -----------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x45", V4_SYN[:19], V6_SYN[:39]])
def test_too_short_for_an_ip_header(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


@pytest.mark.parametrize("first", [0x05, 0x55, 0xF5, 0x35, 0x75])
def test_ip_version_neither_4_nor_6(first: int) -> None:
    with pytest.raises(DecodeError, match="version"):
        decode(bytes([first]) + V4_SYN[1:])


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_ipv4_header_length_below_20(ihl: int) -> None:
    with pytest.raises(DecodeError, match="header length"):
        decode(bytes([0x40 | ihl]) + V4_SYN[1:])


def test_ipv4_header_length_beyond_the_buffer() -> None:
    with pytest.raises(DecodeError):
        decode(b"\x4f" + V4_SYN[1:])  # 60-byte IP header leaves no room for TCP


@pytest.mark.parametrize("total", [0, 19, 20, 39, 59])
def test_ipv4_total_length_too_small_for_the_headers(total: int) -> None:
    with pytest.raises(DecodeError):
        decode(patched(V4_SYN, 2, struct.pack("!H", total)))


def test_v6_payload_length_too_small_for_the_headers() -> None:
    with pytest.raises(DecodeError):
        decode(patched(V6_SYN, 4, struct.pack("!H", 39)))
    with pytest.raises(DecodeError, match="jumbogram"):
        decode(patched(V6_SYN, 4, b"\x00\x00"))


@pytest.mark.parametrize("offset", [1, 185, 0x1FFF])
def test_ipv4_later_fragment(offset: int) -> None:
    with pytest.raises(DecodeError, match="fragment"):
        decode(patched(V4_SYN, 6, struct.pack("!H", 0x2000 | offset)))


def test_v6_later_fragment() -> None:
    with pytest.raises(DecodeError, match="fragment"):
        decode(v6_with(IPv6ExtHdrFragment(offset=1, m=1)))


@pytest.mark.parametrize(
    "wire",
    [
        bytes(IP(dst="192.0.2.1") / UDP(dport=25)),
        bytes(IP(dst="192.0.2.1") / ICMP()),
        bytes(IPv6(dst="2001:db8::1") / UDP(dport=25)),
        bytes(IPv6(dst="2001:db8::1") / ICMPv6EchoRequest()),
        bytes(IPv6(dst="2001:db8::1") / IPv6ExtHdrDestOpt() / UDP(dport=25)),
    ],
    ids=["udp4", "icmp4", "udp6", "icmp6", "destopt-udp6"],
)
def test_not_tcp(wire: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(wire)


@pytest.mark.parametrize(
    ("next_header", "message"),
    [(50, "ESP"), (59, "no next header"), (17, "neither TCP"), (253, "neither TCP")],
)
def test_v6_chain_stops(next_header: int, message: str) -> None:
    wire = patched(V6_SYN, 6, bytes([next_header])) + bytes(8)
    with pytest.raises(DecodeError, match=message):
        decode(wire)


def test_v6_hop_by_hop_must_come_first() -> None:
    with pytest.raises(DecodeError, match="hop-by-hop"):
        decode(v6_with(IPv6ExtHdrDestOpt() / IPv6ExtHdrHopByHop()))


def test_v6_extension_header_beyond_the_packet() -> None:
    wire = v6_with(IPv6ExtHdrDestOpt())
    with pytest.raises(DecodeError, match="truncated"):
        decode(patched(wire, 41, b"\x20"))  # claims 33 * 8 bytes


@pytest.mark.parametrize("nibble", [0, 1, 4])
def test_tcp_data_offset_below_20(nibble: int) -> None:
    with pytest.raises(DecodeError, match="data offset"):
        decode(patched(V4_SYN, V4_TCP + 12, bytes([nibble << 4])))


def test_tcp_data_offset_beyond_the_packet() -> None:
    with pytest.raises(DecodeError, match="truncated"):
        decode(patched(V4_SYN, V4_TCP + 12, b"\xf0"))  # 60-byte header in a 40-byte segment


NOP = (1, b"")
MSS = (2, b"\x05\xb4")


@pytest.mark.parametrize(
    ("options", "parsed"),
    [
        (b"\x02\x04\x05\xb4\x02\x00\x05\xb4", (MSS,)),  # length 0
        (b"\x02\x04\x05\xb4\x02\x01\x05\xb4", (MSS,)),  # length 1
        (b"\x02\x04\x05\xb4\x02\x05\x05\xb4", (MSS,)),  # runs past the header
        (b"\x02\x04\x05\xb4\x01\x01\x01\x08", (MSS, NOP, NOP, NOP)),  # a lone kind byte
        (b"\x01\x01\x08\x0b\x02\x04\x05\xb4", (NOP, NOP)),  # timestamps need 11 bytes
        (b"\x02\x00\x02\x04\x05\xb4\x01\x01", ()),  # nothing after the stop counts
    ],
)
def test_option_parsing_stops_where_linux_stops(options: bytes, parsed: tuple[object]) -> None:
    """Linux's tcp_parse_options stops at a bad length and accepts the segment: so does decode."""
    wire = patched(V4_SYN, V4_TCP + 12, b"\x70")[:48]  # header of 28 bytes: 8 option bytes
    wire = patched(patched(wire, 2, struct.pack("!H", 48)), 40, options)
    packet = decode(wire)
    assert (packet.dport, packet.flags, packet.options) == (25, SYN, parsed)


def test_endpoints_reads_what_it_can() -> None:
    assert endpoints(b"") is None and endpoints(V4_SYN[:19]) is None
    v4 = Endpoints(4, address("100.64.10.10"), address("198.51.100.25"))
    assert endpoints(V4_SYN[:20]) == v4
    assert endpoints(V4_SYN[:24]) == v4._replace(sport=40312, dport=25)
    assert endpoints(patched(V4_SYN, 9, b"\x11")[:24]) == v4  # UDP: no TCP ports
    assert endpoints(patched(V4_SYN, 6, b"\x00\x10")) == v4  # a later fragment
    v6 = Endpoints(6, address("2001:db8:64::10"), address("2001:db8:25::25"))
    assert endpoints(V6_SYN[:40]) == v6
    assert endpoints(V6_SYN[:44]) == v6._replace(sport=40312, dport=587)
    assert endpoints(patched(V6_SYN, 6, b"\x32")) == v6  # ESP
    behind = v6_with(destination_options(20))
    found = endpoints(behind[: 40 + 20 * 8 + 4])
    assert found is not None and (found.sport, found.dport) == (40000, 25)


@given(data=random_packets() | mutated_packets())
@settings(max_examples=300, deadline=None)
def test_endpoints_never_raises(data: bytes) -> None:
    found = endpoints(data)
    assert found is None or found.version in (4, 6)


# --- properties -------------------------------------------------------------------------------


@given(spec=packet_specs())
@settings(max_examples=200, deadline=None)
def test_generated_packets_decode_to_their_fields(spec: PacketSpec) -> None:
    assert decode(spec.to_bytes()) == spec.expected()


def scapy_dissects(spec: PacketSpec) -> bool:
    """scapy does not dissect past an IPv6 AH header, and gives up on the whole TCP header at
    a TCP-AO option (kind 29) that is not a full MAC (scapy 2.8)."""
    no_ah = all(kind != 51 for kind, _ in spec.extensions)
    return no_ah and all(kind != 29 for kind, _ in spec.options)


@given(spec=packet_specs().filter(scapy_dissects))
@settings(max_examples=60, deadline=None)
def test_generated_packets_agree_with_scapy(spec: PacketSpec) -> None:
    wire = spec.to_bytes()
    parsed = (IP if spec.version == 4 else IPv6)(wire)
    tcp = parsed[TCP]
    packet = decode(wire)
    assert packet.src_ip == ipaddress.ip_address(parsed.src)
    assert (packet.sport, packet.dport, packet.seq, packet.ack) == (
        tcp.sport,
        tcp.dport,
        tcp.seq,
        tcp.ack,
    )
    assert (packet.flags, packet.window) == (int(tcp.flags), tcp.window)


def check_only_decode_errors(data: bytes) -> None:
    try:
        packet = decode(data)
    except DecodeError:
        return
    assert packet.version in (4, 6)
    assert 0 <= packet.sport <= 0xFFFF and 0 <= packet.dport <= 0xFFFF
    assert 0 <= packet.payload_len <= packet.length - 40
    assert all(kind != 0 for kind, _ in packet.options)


@given(data=random_packets())
@settings(max_examples=500, deadline=None)
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    check_only_decode_errors(data)


@given(data=mutated_packets())
@settings(max_examples=400, deadline=None)
def test_mutated_packets_raise_only_decode_error(data: bytes) -> None:
    check_only_decode_errors(data)


@given(data=st.binary(min_size=40, max_size=80), version=st.sampled_from([0x45, 0x60]))
@settings(max_examples=300, deadline=None)
def test_tcp_after_arbitrary_headers_raises_only_decode_error(data: bytes, version: int) -> None:
    protocol_at = 9 if version == 0x45 else 6  # set TCP, so the TCP parse runs
    check_only_decode_errors(patched(bytes([version]) + data[1:], protocol_at, b"\x06"))
