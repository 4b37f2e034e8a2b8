"""`portguard quarantine list|add|release`: the running daemon's quarantine, over its control
socket (docs/abuse-desk-quarantine.md)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from portguard.config.model import Config
from portguard.core.policy.detectors import parse_duration, parse_source

QUARANTINE_TIMEOUT = 10.0  # seconds


def parse_ports(text: str) -> list[int]:
    """``25,465,587`` as ports (argparse type)."""
    try:
        ports = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of ports") from None
    if not ports or not all(1 <= port <= 65535 for port in ports):
        raise ValueError(f"{text!r}: ports are from 1 to 65535")
    return ports


def request_for(action: str, address: str | None, duration: str | None,
                ports: Sequence[int] | None) -> dict[str, Any]:  # fmt: skip
    """The control request of a `portguard quarantine` command; ValueError when the
    arguments are wrong (checked here, before the daemon is asked)."""
    if action == "list":
        return {"command": "quarantine-list"}
    if address is None:
        raise ValueError(f"quarantine {action} needs an ADDRESS")
    parse_source(address)
    if action == "release":
        return {"command": "quarantine-release", "address": address}
    if duration is None:
        raise ValueError("quarantine add needs --for DURATION (e.g. 1h)")
    parse_duration(duration)
    fields: dict[str, Any] = {"command": "quarantine-add", "address": address, "for": duration}
    if ports:
        fields["ports"] = list(ports)
    return fields


def quarantine(config: Config, action: str, address: str | None, duration: str | None,
               ports: Sequence[int] | None, as_json: bool) -> int:  # fmt: skip
    """0 done, 1 refused, 2 bad arguments, 3 no daemon."""
    from portguard.service.control import request

    try:
        fields = request_for(action, address, duration, ports)
    except ValueError as error:
        print(f"portguard: {error}", file=sys.stderr)
        return 2
    path = config.daemon.control_socket
    try:
        command = fields.pop("command")
        answer = request(path, command, timeout=QUARANTINE_TIMEOUT, **fields)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"portguard: no daemon listens on {path}", file=sys.stderr)
        return 3
    except (OSError, ValueError) as error:
        print(f"portguard: talking to the daemon on {path} failed: {error}", file=sys.stderr)
        return 3
    if as_json:
        print(json.dumps(answer, indent=2))
    else:
        print("\n".join(format_answer(answer)))
    for message in answer.get("errors", []):
        print(f"portguard: {message}", file=sys.stderr)
    return 0 if answer.get("ok") else 1


def format_answer(answer: dict[str, Any]) -> list[str]:
    if "released" in answer:
        released = answer["released"]
        return [f"released {item['source']}" for item in released] or ["not quarantined"]
    items = answer.get("quarantined", [])
    if not items:
        return ["no source is quarantined"]
    lines = [f"{'source':<26} {'detector':<14} {'until':<28} ports"]
    for item in sorted(items, key=lambda found: str(found["until"])):
        ports = ",".join(str(port) for port in item["ports"])
        lines.append(f"{item['source']:<26} {item['detector']:<14} {item['until']:<28} {ports}")
    return lines
