"""Packet decoding: bytes from the kernel queue to a typed Packet (pure, no I/O)."""

from portguard.packet.decode import decode
from portguard.packet.model import ACK, FIN, RST, SYN, DecodeError, Packet, to_address

__all__ = ["ACK", "FIN", "RST", "SYN", "DecodeError", "Packet", "decode", "to_address"]
