"""Captures written by scapy for the replay tests: SYNs and other packets, in each link type."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet
from scapy.utils import PcapNgWriter, wrpcap

T0 = 1795798800.0  # 2026-11-27T17:00:00Z
SUB4, SUB6 = "100.64.10.10", "2001:db8:64::10"
MX4, MX6 = "198.51.100.25", "2001:db8:25::25"
SMARTHOST4 = "198.51.100.26"
INSIDE = ("100.64.0.0/10", "2001:db8:64::/48")

# link type -> (linktype number for wrpcap, frame builder around an IP packet)
ETHERTYPES = {4: 0x0800, 6: 0x86DD, 0: 0x0806}  # IP version (0: ARP) -> EtherType
LINK_TYPES = ("ethernet", "dot1q", "qinq", "sll", "sll2", "raw4", "raw6", "raw")


def syn(src: str, dst: str, dport: int = 25, sport: int = 40000, seq: int = 1000,
        flags: str = "S") -> Packet:  # fmt: skip
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq)


def framed(link: str, ip: Packet, outgoing: bool = False) -> Packet:
    """`ip` in a frame of link type `link` (one of LINK_TYPES)."""
    ethertype = ETHERTYPES[6 if ip.haslayer(IPv6) else 4 if ip.haslayer(IP) else 0]
    if link == "ethernet":
        return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=ethertype) / ip
    if link == "dot1q":
        return Ether() / Dot1Q(vlan=42) / ip
    if link == "qinq":
        return Ether(type=0x88A8) / Dot1AD(vlan=7) / Dot1Q(vlan=42) / ip
    if link == "sll":
        return CookedLinux(pkttype=4 if outgoing else 0, proto=ethertype) / ip
    if link == "sll2":
        return CookedLinuxV2(pkttype=4 if outgoing else 0, proto=ethertype) / ip
    return ip


LINKTYPE_NUMBERS = {"ethernet": 1, "dot1q": 1, "qinq": 1, "sll": 113, "sll2": 276,
                    "raw4": 228, "raw6": 229, "raw": 101}  # fmt: skip


def write(path: Path, link: str, packets: Sequence[tuple[float, Packet]],
          outgoing: Sequence[bool] = ()) -> Path:  # fmt: skip
    """A pcap of link type `link` with each (time, IP packet) framed for it."""
    frames = []
    for index, (moment, ip) in enumerate(packets):
        frame = framed(link, ip, bool(outgoing[index]) if index < len(outgoing) else False)
        frame.time = moment
        frames.append(frame)
    wrpcap(str(path), frames, linktype=LINKTYPE_NUMBERS[link])
    return path


def write_ng(path: Path, packets: Sequence[tuple[float, Packet]]) -> Path:
    """A pcapng (Ethernet) of the packets, the way PcapNgWriter writes one."""
    with PcapNgWriter(str(path)) as writer:
        for moment, ip in packets:
            frame = Ether() / ip
            frame.time = moment
            writer.write(frame)
    return path


def arp() -> Packet:
    """An ARP request (framed like the IP packets by `framed`)."""
    return ARP(psrc=SUB4, pdst="100.64.0.1")
