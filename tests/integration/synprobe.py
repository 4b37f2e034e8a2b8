"""Send crafted SYNs with scapy from inside a lab namespace and report what answers.

    python synprobe.py '{"shape": "lone-kind", "src": "100.64.10.10", "dst": "198.51.100.25",
                         "sport": 40001, "dport": 25, "seq": 1000, "iface": "sub0"}'

Optional keys: "count" (send the same SYN, same tuple and ISN, this many times; default 1),
"reset" (after a SYN-ACK, send the RST that aborts the handshake; default true), "wait"
(seconds to wait for an answer to each SYN; default 2).

Prints one JSON object: {"answers": [[flags, ...], ...]}, one list per SYN sent, with the TCP
flags (scapy's letters: "SA" a SYN-ACK, "R"/"RA" a reset) of the packets that came back.

Shapes: "plain" (an MSS option), "lone-kind" (options MSS, NOP x3 and a lone timestamp kind byte:
Linux's tcp_parse_options stops there and accepts the SYN), "destopts-9" (IPv6: nine
destination-options headers), "destopts-1k" (IPv6: one ~1 KiB destination-options header of
skippable unknown options).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from scapy.all import (  # type: ignore[attr-defined]
    IP,
    TCP,
    AsyncSniffer,
    HBHOptUnknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    PadN,
    Raw,
    send,
)

LONE_KIND_OPTIONS = b"\x02\x04\x05\xb4\x01\x01\x01\x08"  # MSS 1460, NOP, NOP, NOP, kind 8 alone
SKIPPABLE_UNKNOWN = 0x1E  # option type with action bits 00: "skip over this option"


def segment(spec: dict[str, Any], flags: str, seq: int) -> Any:
    ports = {"sport": spec["sport"], "dport": spec["dport"], "seq": seq, "flags": flags}
    if spec["shape"] == "lone-kind" and flags == "S":
        return TCP(**ports, dataofs=7) / Raw(LONE_KIND_OPTIONS)  # the options count as header
    return TCP(**ports, options=[("MSS", 1460)] if flags == "S" else [])


def ip_layers(spec: dict[str, Any]) -> Any:
    if ":" not in spec["dst"]:
        return IP(src=spec["src"], dst=spec["dst"])
    layers = IPv6(src=spec["src"], dst=spec["dst"])
    if spec["shape"] == "destopts-9":
        for _ in range(9):
            layers = layers / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00" * 4)])
    elif spec["shape"] == "destopts-1k":
        unknown = [HBHOptUnknown(otype=SKIPPABLE_UNKNOWN, optdata=b"\xa5" * 254)] * 4
        layers = layers / IPv6ExtHdrDestOpt(options=unknown)
    return layers


def attempt(spec: dict[str, Any]) -> list[str]:
    """Send the SYN once; the flags of what answers it within `wait` seconds."""
    answers: list[str] = []

    def keep(packet: Any) -> None:
        tcp, ip = packet.getlayer(TCP), packet.getlayer(IP) or packet.getlayer(IPv6)
        if tcp is None or ip is None or ip.src != spec["dst"]:
            return  # not from the peer (the SYN itself is captured on its way out)
        if tcp.sport == spec["dport"] and tcp.dport == spec["sport"]:
            answers.append(str(tcp.flags))

    sniffer = AsyncSniffer(iface=spec["iface"], prn=keep, store=False)
    sniffer.start()
    time.sleep(0.3)  # let the capture socket open before the SYN leaves
    send(ip_layers(spec) / segment(spec, "S", spec["seq"]), verbose=0)
    deadline = time.monotonic() + spec.get("wait", 2.0)
    while not answers and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # a second answer (a SYN-ACK and a reset) has a moment to show
    if "SA" in answers and spec.get("reset", True):
        send(ip_layers(spec) / segment(spec, "R", spec["seq"] + 1), verbose=0)
        time.sleep(0.2)
    sniffer.stop()
    return answers


def main() -> None:
    spec = json.loads(sys.argv[1])
    answers = [attempt(spec) for _ in range(spec.get("count", 1))]
    print(json.dumps({"answers": answers}))


if __name__ == "__main__":
    main()
