"""Literal decision-log events for the output format tests (ECS, OCSF, CEF, the sinks): a
reject decision and a flow end with fixed times and addresses, and a CEF reader."""

from __future__ import annotations

import re
from typing import Any

import orjson

from portguard.core.detect.fanout import Alert
from portguard.core.detect.quarantine import entry
from portguard.core.events.detection import alert_event, quarantine_event
from portguard.core.events.flowend import Counters, EndedFlow, FlowOrigin, flow_end_event
from portguard.core.events.record import Event, Observer, decision_event
from portguard.core.policy.detectors import Detector
from portguard.core.policy.model import Action, Decision, Direction
from portguard.core.policy.ports import PortSet
from portguard.log.formats import render

OBSERVER = Observer("gw1", "0.1.0")
NOW = 1795798800.123456  # 2026-11-27T17:00:00.123456Z
V4 = (4, 0x64400A0A, 0xC6336419, 40312, 25)  # 100.64.10.10 -> 198.51.100.25:25
V6 = (6, 0x20010DB8006400100000000000000010, 0x20010DB8002500000000000000000025, 40312, 25)
COMMUNITY_ID = "1:OdycsWwxvNC2HezuIzlUEha8Xqw="
START_NS = 1795798740_000001999  # 2026-11-27T16:59:00.000001999Z
STOP_NS = START_NS + 61_500_999_999  # 61.500999999 s later
ORIGIN = FlowOrigin("smarthost", "10-isp.toml", flow_id="2a", policy_version="v7")


def decided(action: Action = Action.REJECT, key: tuple[int, int, int, int, int] = V4) -> Event:
    decision = Decision(action, "block-25", "10-isp.toml", "no direct mail", "matched rule")
    return decision_event(decision, key, "2a", Direction.OUTBOUND, "v1", OBSERVER, NOW)


MAIL_PORTS = PortSet.from_ranges([(25, 25), (465, 465), (587, 587)])
FANOUT = Detector(
    "fanout", PortSet.from_ranges([(25, 25)]), 3, 600, "quarantine", 3600, MAIL_PORTS,
    "20-detect.toml",
)  # fmt: skip
SAMPLES = (0xC6336419, 0xC633641A, 0xC633641B)  # 198.51.100.25-27


def alerted(key: tuple[int, int] = (4, V4[1]), src: int = V4[1], version: int = 4) -> Event:
    """The fan-out detector's alert: 100.64.10.10 tried 3 servers (4 attempts) in 60 s."""
    alert = Alert(FANOUT, key, version, src, 3, 4, SAMPLES, NOW - 60, NOW)
    return alert_event(alert, OBSERVER, NOW)


def quarantined(action: str = "quarantine-added", key: tuple[int, int] = (4, V4[1])) -> Event:
    found = entry(key, "fanout", NOW, NOW + 3600, [25, 465, 587])
    return quarantine_event(action, found, OBSERVER, NOW, "detector")


def flow_end(
    origin: FlowOrigin | None = ORIGIN,
    counted: bool = True,
    start_ns: int | None = START_NS,
    stop_ns: int | None = STOP_NS,
    direction: Direction = Direction.OUTBOUND,
) -> Event:
    """A flow-end event: the client sent 12 packets / 4321 bytes, the server 9 / 876."""
    version, src, dst, sport, dport = V4
    ended = EndedFlow(
        version=version,
        src=src,
        dst=dst,
        sport=sport,
        dport=dport,
        direction=direction,
        original=Counters(12, 4321) if counted else None,
        reply=Counters(9, 876) if counted else None,
        start_ns=start_ns,
        stop_ns=stop_ns,
    )
    return flow_end_event(ended, OBSERVER, NOW, origin)


def ocsf(event: Event) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(render(event, "ocsf"))
    return data


def parse_cef(line: str) -> dict[str, Any]:
    """A CEF reader for the tests: header split on unescaped pipes, extension on `key=`."""
    parts: list[str] = []
    rest = line
    for _ in range(7):
        match = re.match(r"((?:[^|\\]|\\.)*)\|", rest)
        assert match is not None, rest
        parts.append(re.sub(r"\\(.)", r"\1", match[1]))
        rest = rest[match.end() :]
    pairs = re.findall(r"(\w+)=((?:[^\\=]|\\.)*?)(?= \w+=|$)", rest)
    unescape = {"n": "\n", "r": "\r"}
    extension = {k: re.sub(r"\\(.)", lambda m: unescape.get(m[1], m[1]), v) for k, v in pairs}
    return {"header": parts, "extension": extension}
