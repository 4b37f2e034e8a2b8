"""Syslog sink: RFC 5424 framing, octet counting, and delivery to real local sockets."""

from __future__ import annotations

import re
import socket

import orjson
import pytest

from portguard.decisionlog.syslog import SyslogSink, SyslogStream, octet_count, syslog_frame

EVENT = {
    "@timestamp": "2026-11-27T17:00:00.000000Z",
    "log": {"level": "error"},
    "event": {"action": "reload-failed"},
}


def test_rfc5424_header_and_json_body() -> None:
    frame = syslog_frame(dict(EVENT), "gw1", 42)
    header, body = frame.split(b" - - ", 1)
    assert header == b"<27>1 2026-11-27T17:00:00.000000Z gw1 portguard 42"
    assert orjson.loads(body) == EVENT


def test_octet_counting() -> None:
    assert octet_count(b"hello") == b"5 hello"


def test_bad_addresses_are_refused() -> None:
    for address in ("syslog://h:1", "tcp://:514", "udp://host"):
        with pytest.raises(ValueError):
            SyslogStream(address)


def test_udp_delivery_on_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        sink = SyslogSink(f"udp://127.0.0.1:{server.getsockname()[1]}")
        sink.write(dict(EVENT))
        sink.close()
        server.settimeout(2)
        assert b'"reload-failed"' in server.recv(65535)


def test_tcp_delivery_and_backoff_when_down() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        sink = SyslogSink(f"tcp://127.0.0.1:{server.getsockname()[1]}")
        sink.write(dict(EVENT))
        conn, _ = server.accept()
        conn.settimeout(2)
        data = conn.recv(65535)
        conn.close()
        assert re.match(rb"^\d+ <27>1 ", data)
        sink.close()
    down = SyslogSink(f"tcp://127.0.0.1:{_free_port()}")
    down.write(dict(EVENT))
    down.write(dict(EVENT))  # inside the backoff: counted, no new connect attempt
    assert down.errors == 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_syslog_sink_can_carry_cef() -> None:
    event = {
        "@timestamp": "2026-11-27T17:00:00.000000Z",
        "event": {"kind": "event", "category": ["network"], "type": ["connection", "denied"],
                  "action": "reject", "outcome": "success", "dataset": "portguard.decision"},
        "rule": {"id": "block-25", "ruleset": "10-isp.toml"},
        "source": {"ip": "100.64.10.10", "port": 40312},
        "destination": {"ip": "198.51.100.25", "port": 25},
        "network": {"transport": "tcp", "type": "ipv4", "direction": "outbound"},
        "observer": {"product": "portguard", "version": "0.1.0"},
        "portguard": {"reason": "r", "policy_version": "v"},
    }  # fmt: skip
    frame = syslog_frame(event, "gw1", 42, "cef")
    assert frame.split(b" - - ", 1)[1].startswith(b"CEF:0|portguard|portguard|")
    assert b"src=100.64.10.10" in frame and b"dpt=25" in frame
