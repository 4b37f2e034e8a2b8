"""Link layers of captured frames: strip them down to the IP packet the gate decodes.

`portguard replay` reads captures whose frames start with a link-layer header; the queue hands
the daemon bare IP packets. `ip_packet` takes the capture's link type and one frame and returns
the IP bytes (and whether the capture saw the frame leave the host), or None for a frame that
carries no IP (ARP, LLDP, ...). Pure: struct and slicing only, no scapy.

Link types (https://www.tcpdump.org/linktypes.html): Ethernet (with 802.1Q / 802.1ad tags,
any number: QinQ), Linux cooked capture v1 (SLL, `tcpdump -i any` before libpcap 1.10) and v2
(SLL2), and raw IP (LINKTYPE_RAW and the DLT_RAW values 12 and 14 some systems write,
LINKTYPE_IPV4, LINKTYPE_IPV6).
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

ETHERNET: Final = 1
RAW: Final = 101  # LINKTYPE_RAW
RAW_DLT: Final = (12, 14)  # DLT_RAW on some systems (OpenBSD writes 14), written as is
LINUX_SLL: Final = 113
IPV4: Final = 228
IPV6: Final = 229
LINUX_SLL2: Final = 276
LINK_TYPES: Final = {
    ETHERNET: "Ethernet",
    RAW: "raw IP",
    12: "raw IP",
    14: "raw IP",
    LINUX_SLL: "Linux cooked capture",
    IPV4: "raw IPv4",
    IPV6: "raw IPv6",
    LINUX_SLL2: "Linux cooked capture v2",
}

ETHERTYPE_IPV4: Final = 0x0800
ETHERTYPE_IPV6: Final = 0x86DD
VLAN_TAGS: Final = frozenset({0x8100, 0x88A8, 0x9100})  # 802.1Q, 802.1ad, old QinQ
PACKET_OUTGOING: Final = 4  # Linux packet type: sent by this host (SLL, SLL2)

_SHORT: Final = struct.Struct("!H")


class LinkError(ValueError):
    """A frame too short for its own link-layer header."""


class Stripped(NamedTuple):
    data: bytes  # the IP packet
    outgoing: bool  # the capture saw it leave this host (a forwarded packet's second copy)


def supported(linktype: int) -> bool:
    return linktype in LINK_TYPES


def ip_packet(linktype: int, frame: bytes) -> Stripped | None:
    """The IP packet in `frame`, None when it carries something else (ARP, LLDP, ...).

    Raises LinkError when the frame is shorter than its link-layer header and ValueError for
    a link type `supported` refuses."""
    if linktype == ETHERNET:
        return _after_tags(_ethertype(frame, 12, "Ethernet"), frame, 14, False)
    if linktype == LINUX_SLL:
        ethertype = _ethertype(frame, 14, "Linux cooked capture")
        return _after_tags(ethertype, frame, 16, _SHORT.unpack_from(frame)[0] == PACKET_OUTGOING)
    if linktype == LINUX_SLL2:
        _need(frame, 20, "Linux cooked capture v2")
        ethertype = _SHORT.unpack_from(frame)[0]
        return _after_tags(ethertype, frame, 20, frame[10] == PACKET_OUTGOING)
    if linktype in (RAW, *RAW_DLT):
        return _raw(frame, (4, 6))
    if linktype == IPV4:
        return _raw(frame, (4,))
    if linktype == IPV6:
        return _raw(frame, (6,))
    raise ValueError(f"link type {linktype} is not supported")


def _ethertype(frame: bytes, offset: int, what: str) -> int:
    _need(frame, offset + 2, what)
    ethertype: int = _SHORT.unpack_from(frame, offset)[0]
    return ethertype


def _after_tags(ethertype: int, frame: bytes, offset: int, outgoing: bool) -> Stripped | None:
    """The payload at `offset` after any VLAN tags (TCI and the next EtherType, 4 bytes each)."""
    while ethertype in VLAN_TAGS:
        ethertype = _ethertype(frame, offset + 2, "VLAN tag")
        offset += 4
    if ethertype not in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
        return None
    return Stripped(frame[offset:], outgoing)


def _raw(frame: bytes, versions: tuple[int, ...]) -> Stripped | None:
    if not frame or frame[0] >> 4 not in versions:
        return None
    return Stripped(frame, False)


def _need(frame: bytes, length: int, what: str) -> None:
    if len(frame) < length:
        raise LinkError(f"{what} header cut short ({len(frame)} of {length} bytes)")
