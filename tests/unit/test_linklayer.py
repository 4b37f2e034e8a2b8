"""Link layers: each captured frame stripped to the IP packet scapy put in it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard.core.packet.linklayer import (
    LINK_TYPES,
    LinkError,
    Stripped,
    ip_packet,
    supported,
)
from tests.captures import LINKTYPE_NUMBERS, MX4, MX6, SUB4, SUB6, arp, framed, syn

# a raw IPv4 link holds no IPv6 packet and the other way round
CASES = [(link, v) for link in sorted(LINKTYPE_NUMBERS) for v in (4, 6)
         if (link, v) not in {("raw4", 6), ("raw6", 4)}]  # fmt: skip


@pytest.mark.parametrize(("link", "version"), CASES)
def test_every_link_type_gives_the_ip_packet(link: str, version: int) -> None:
    ip = syn(SUB4, MX4) if version == 4 else syn(SUB6, MX6)
    frame = bytes(framed(link, ip))
    assert ip_packet(LINKTYPE_NUMBERS[link], frame) == Stripped(bytes(ip), False)


@pytest.mark.parametrize("link", ["sll", "sll2"])
def test_cooked_captures_tell_outgoing_frames(link: str) -> None:
    ip = syn(SUB4, MX4)
    stripped = ip_packet(LINKTYPE_NUMBERS[link], bytes(framed(link, ip, outgoing=True)))
    assert stripped == Stripped(bytes(ip), True)


def test_sll2_with_a_vlan_tag() -> None:
    ip = syn(SUB4, MX4)
    frame = bytes(framed("sll2", ip))
    tagged = b"\x81\x00" + frame[2:20] + b"\x00\x2a\x08\x00" + frame[20:]
    assert ip_packet(276, tagged) == Stripped(bytes(ip), False)


def test_frames_without_ip_are_none() -> None:
    assert ip_packet(1, bytes(framed("ethernet", arp()))) is None
    assert ip_packet(113, bytes(framed("sll", arp()))) is None
    assert ip_packet(101, b"") is None
    assert ip_packet(228, bytes(syn(SUB6, MX6))) is None  # a raw IPv4 link: only IPv4
    assert ip_packet(229, bytes(syn(SUB4, MX4))) is None


@pytest.mark.parametrize(("linktype", "frame"), [
    (1, b"\x02" * 13),  # Ethernet: no EtherType
    (1, b"\x02" * 12 + b"\x81\x00\x00"),  # a cut VLAN tag
    (113, b"\x00" * 15),
    (276, b"\x08\x00" + b"\x00" * 17),
])  # fmt: skip
def test_frames_cut_inside_their_link_header_are_errors(linktype: int, frame: bytes) -> None:
    with pytest.raises(LinkError, match="cut short"):
        ip_packet(linktype, frame)


def test_unsupported_link_types() -> None:
    assert all(supported(linktype) for linktype in LINK_TYPES)
    assert not supported(105)  # 802.11
    with pytest.raises(ValueError, match="not supported"):
        ip_packet(105, b"")


@given(linktype=st.sampled_from(sorted(LINK_TYPES)), frame=st.binary(max_size=64))
def test_any_bytes_give_a_packet_none_or_a_link_error(linktype: int, frame: bytes) -> None:
    try:
        stripped = ip_packet(linktype, frame)
    except LinkError:
        return
    assert stripped is None or frame.endswith(stripped.data)
