"""Packet decoding: bytes from the kernel queue to a typed Packet (pure, no I/O)."""

from portguard.core.packet.decode import decode, endpoints
from portguard.core.packet.model import (
    ACK,
    FIN,
    RST,
    SYN,
    DecodeError,
    Endpoints,
    Packet,
    to_address,
)

__all__ = [
    "ACK",
    "FIN",
    "RST",
    "SYN",
    "DecodeError",
    "Endpoints",
    "Packet",
    "decode",
    "endpoints",
    "to_address",
]
