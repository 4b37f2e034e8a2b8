"""Syslog sink: RFC 5424 framing, octet counting, and delivery over UDP, TCP and TLS to real
collectors on 127.0.0.1 (a test CA made with the openssl CLI), through outages and restarts."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from lab.pki import Authority, issue, make_ca
from lab.tls import CertPair
from portguard.log.syslog import SyslogSink, octet_count, syslog_frame
from portguard.log.syslogtarget import Target, TlsSettings, parse_address

EVENT = {
    "@timestamp": "2026-11-27T17:00:00.000000Z",
    "log": {"level": "error"},
    "event": {"action": "reload-failed"},
}
FAST = (0.05, 0.1)  # backoff for tests
RFC5424 = re.compile(rb"^<(\d+)>1 (\S+) (\S+) portguard (\d+) - - (.*)$", re.S)


def send(sink: SyslogSink, event: dict[str, Any]) -> None:
    """What the writer does with one event: write it, then flush (a stream sends on flush)."""
    sink.write(event)
    sink.flush()


def event(seq: int, message: str = "") -> dict[str, object]:
    return {"@timestamp": "2026-11-27T17:00:00.000000Z", "log": {"level": "info"},
            "event": {"action": "allow", "sequence": seq}, "message": message}  # fmt: skip


def sequence(frame: bytes) -> int:
    match = RFC5424.match(frame)
    assert match is not None, frame[:200]
    return int(orjson.loads(match.group(5))["event"]["sequence"])


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@dataclass
class FrameServer:
    """A syslog collector on 127.0.0.1: octet-counted frames, optionally over TLS."""

    context: ssl.SSLContext | None = None
    port: int = 0
    stall_first: bool = False  # never read the first connection: a stuck collector
    frames: list[bytes] = field(default_factory=list)
    accepted: int = 0
    conns: list[socket.socket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                self.accepted += 1
                self.conns.append(conn)
                if self.stall_first and self.accepted == 1:
                    continue
                threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buffer = b""
        with contextlib.suppress(OSError):
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
                self.conns.append(conn)
            while chunk := conn.recv(65536):
                buffer += chunk
                while (space := buffer.find(b" ")) > 0 and len(buffer) > space + int(
                    buffer[:space]
                ):
                    end = space + 1 + int(buffer[:space])
                    self.frames.append(buffer[space + 1 : end])
                    buffer = buffer[end:]

    def stalled_connection(self) -> socket.socket:
        wait_until(lambda: self.accepted > 0)
        return self.conns[0]

    def drop_connections(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.conns.clear()

    def close(self) -> None:
        stop_listening(self.listener)
        self.drop_connections()


def stop_listening(listener: socket.socket) -> None:
    """Close a listener another thread waits in accept() on (close alone keeps it listening)."""
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()


@dataclass(frozen=True)
class Pki:
    ca: Authority
    other_ca: Authority
    server: CertPair
    client: CertPair

    def server_context(self, require_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server.cert, self.server.key)
        if require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.ca.cert)
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "portguard test CA")
    other = make_ca(directory, "some other CA")
    server = issue(ca, directory, "collector.test", ips=["127.0.0.1"])
    return Pki(ca, other, server, issue(ca, directory, "gw.test"))


@contextlib.contextmanager
def serving(
    context: ssl.SSLContext | None = None, stall_first: bool = False
) -> Iterator[FrameServer]:
    server = FrameServer(context, stall_first=stall_first)
    try:
        yield server
    finally:
        server.close()


class States(list[tuple[bool, str]]):
    def __call__(self, up: bool, reason: str) -> None:
        self.append((up, reason))


def sink_for(address: str, tls: TlsSettings | None = None) -> tuple[SyslogSink, States]:
    sink = SyslogSink(address, tls=tls, backoff=FAST)
    states = States()
    sink.on_state = states
    return sink, states


class Writing(threading.Thread):
    """sink.write(event) in a thread, keeping what it raised and when it returned."""

    def __init__(self, sink: SyslogSink, event: dict[str, object]) -> None:
        super().__init__(daemon=True)
        self.sink, self.event = sink, event
        self.error: OSError | None = None
        self.ended = 0.0
        self.start()

    def run(self) -> None:
        try:
            send(self.sink, self.event)
        except OSError as error:
            self.error = error
        self.ended = time.monotonic()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- framing and addresses ------------------------------------------------------------------


def test_rfc5424_header_and_json_body() -> None:
    frame = syslog_frame(dict(EVENT), "gw1", 42)
    header, body = frame.split(b" - - ", 1)
    assert header == b"<27>1 2026-11-27T17:00:00.000000Z gw1 portguard 42"
    assert orjson.loads(body) == EVENT


def test_priority_follows_the_level() -> None:
    levels = {"debug": b"<31>", "info": b"<30>", "notice": b"<29>", "warning": b"<28>"}
    for level, pri in levels.items():
        assert syslog_frame({"log": {"level": level}}, "gw1", 1).startswith(pri + b"1 - gw1")


def test_octet_counting() -> None:
    assert octet_count(b"hello") == b"5 hello"


def test_addresses() -> None:
    assert parse_address("tls://[2001:db8::514]:6514") == Target("tls", "2001:db8::514", 6514)
    assert str(parse_address("tls://[2001:db8::514]:6514")) == "tls://[2001:db8::514]:6514"
    assert parse_address("udp://collector.test:514") == Target("udp", "collector.test", 514)
    for address in ("syslog://h:1", "tcp://:514", "udp://host", "tcp://h:99999"):
        with pytest.raises(ValueError):
            parse_address(address)


def test_bad_sink_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="need a tls:// address"):
        SyslogSink("tcp://127.0.0.1:514", tls=TlsSettings(ca=tmp_path / "ca.pem"))
    with pytest.raises(ValueError, match=r"CA bundle .*missing\.pem"):
        SyslogSink("tls://127.0.0.1:6514", tls=TlsSettings(ca=tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="needs its certificate"):
        SyslogSink("tls://127.0.0.1:6514", tls=TlsSettings(key=tmp_path / "key.pem"))
    with pytest.raises(ValueError, match="unknown log format"):
        SyslogSink("udp://127.0.0.1:514", fmt="xml")


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


# --- UDP ------------------------------------------------------------------------------------


def test_udp_delivery_on_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        sink = SyslogSink(f"udp://127.0.0.1:{server.getsockname()[1]}")
        send(sink, dict(EVENT))
        sink.close()
        server.settimeout(2)
        assert RFC5424.match(server.recv(65535))


def test_udp_send_error_raises_for_that_event_without_waiting() -> None:
    sink, states = sink_for(f"udp://127.0.0.1:{_free_port()}")
    send(sink, event(1))  # no one listens: the kernel's ICMP answer fails the next send
    time.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        send(sink, event(2))
    assert time.monotonic() - started < 0.05
    assert sink.errors == 1
    assert states == [(False, f"udp://127.0.0.1:{sink.target.port}: Connection refused")]
    sink.close()


# --- TCP ------------------------------------------------------------------------------------


def test_tcp_delivery_with_octet_counting() -> None:
    with serving() as server:
        sink, states = sink_for(f"tcp://127.0.0.1:{server.port}")
        for seq in range(3):
            send(sink, event(seq, "ü" * seq))  # octets, not characters, are counted
        wait_until(lambda: len(server.frames) == 3)
        sink.close()
    assert [sequence(frame) for frame in server.frames] == [0, 1, 2]
    assert server.accepted == 1 and states == [] and sink.errors == 0


def test_a_connection_closed_between_events_is_replaced_without_loss() -> None:
    with serving() as server:
        sink, states = sink_for(f"tcp://127.0.0.1:{server.port}")
        send(sink, event(1))
        wait_until(lambda: len(server.frames) == 1)
        server.drop_connections()  # an idle timeout, a collector reload
        time.sleep(0.05)
        send(sink, event(2))
        wait_until(lambda: len(server.frames) == 2)
        sink.close()
    assert [sequence(frame) for frame in server.frames] == [1, 2]
    assert server.accepted == 2 and sink.reconnects == 1
    assert states == [] and sink.errors == 0


def test_collector_down_holds_the_event_until_it_is_back() -> None:
    with serving() as first:
        sink, states = sink_for(f"tcp://127.0.0.1:{first.port}")
        send(sink, event(1))
        wait_until(lambda: len(first.frames) == 1)
    writing = Writing(sink, event(2))  # the collector is gone: write waits, holding event 2
    wait_until(lambda: len(states) == 1)
    time.sleep(0.3)
    assert writing.is_alive()
    restarted = FrameServer(port=first.port)
    try:
        writing.join(2)
        wait_until(lambda: len(restarted.frames) == 1)
    finally:
        restarted.close()
        sink.close()
    assert writing.error is None and sink.errors == 0
    assert [sequence(frame) for frame in restarted.frames] == [2]  # once, on the new connection
    assert states[0][0] is False and "Connection refused" in states[0][1]
    assert states[1:] == [(True, "")]


def test_interrupt_ends_a_write_waiting_for_the_collector() -> None:
    sink, states = sink_for(f"tcp://127.0.0.1:{_free_port()}")
    sink._backoff = (5.0,)  # inside a long backoff wait
    writing = Writing(sink, event(1))
    wait_until(lambda: len(states) == 1)
    time.sleep(0.1)
    interrupted = time.monotonic()
    sink.interrupt()
    writing.join(1)
    assert isinstance(writing.error, OSError)
    assert writing.ended - interrupted < 0.2
    assert sink.errors == 1
    started = time.monotonic()
    with pytest.raises(OSError):  # after interrupt() nothing waits any more
        send(sink, event(2))
    assert time.monotonic() - started < 0.05


def test_a_collector_that_closes_new_connections_is_an_outage_with_backoff() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[float] = []

    def close_at_once() -> None:
        with contextlib.suppress(OSError):
            while True:
                listener.accept()[0].close()
                accepted.append(time.monotonic())

    threading.Thread(target=close_at_once, daemon=True).start()
    sink, states = sink_for(f"tcp://127.0.0.1:{listener.getsockname()[1]}")
    sink._backoff = (0.2, 0.4, 0.8)
    writing = Writing(sink, event(1))
    time.sleep(1.2)
    sink.interrupt()
    writing.join(1)
    stop_listening(listener)
    assert isinstance(writing.error, OSError)
    assert 2 <= len(accepted) <= 4  # 0, 0.2, 0.6 (+ connect and settle time); no tight loop
    assert [up for up, _ in states] == [False]
    assert "closed the connection" in states[0][1]


def test_an_event_cut_off_mid_send_is_lost_not_sent_twice() -> None:
    with serving(stall_first=True) as server:
        sink, states = sink_for(f"tcp://127.0.0.1:{server.port}")
        writing = Writing(sink, event(1, "x" * 32_000_000))  # more than the socket buffers hold
        stalled = server.stalled_connection()
        time.sleep(0.3)
        assert writing.is_alive()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stalled.close()  # RST
        writing.join(2)
        assert isinstance(writing.error, ConnectionResetError)
        send(sink, event(2))  # goes out alone, on a new connection
        wait_until(lambda: len(server.frames) == 1)
        sink.close()
    assert [sequence(frame) for frame in server.frames] == [2]
    lost = f"{sink.target}: send failed, event lost: Connection reset by peer"
    assert states == [(False, lost), (True, "")] and sink.errors == 1


def test_interrupt_ends_a_send_blocked_by_a_collector_that_does_not_read() -> None:
    with serving(stall_first=True) as server:
        sink, _states = sink_for(f"tcp://127.0.0.1:{server.port}")
        writing = Writing(sink, event(1, "x" * 32_000_000))
        server.stalled_connection()
        time.sleep(0.3)
        assert writing.is_alive()
        interrupted = time.monotonic()
        sink.interrupt()
        writing.join(1)
    assert isinstance(writing.error, OSError)
    assert writing.ended - interrupted < 0.2


# --- TLS ------------------------------------------------------------------------------------


def test_tls_delivery_verifies_the_collector(pki: Pki) -> None:
    with serving(pki.server_context()) as server:
        for name, host in (("collector.test", "127.0.0.1"), (None, "127.0.0.1")):
            tls = TlsSettings(ca=pki.ca.cert, server_name=name)  # by DNS name, by IP address
            sink, states = sink_for(f"tls://{host}:{server.port}", tls)
            send(sink, event(1))
            send(sink, event(2))
            sink.close()
            assert states == []
        wait_until(lambda: len(server.frames) == 4)
    assert [sequence(frame) for frame in server.frames] == [1, 2, 1, 2]


def test_mutual_tls(pki: Pki) -> None:
    with serving(pki.server_context(require_client_cert=True)) as server:
        tls = TlsSettings(pki.ca.cert, pki.client.cert, pki.client.key, "collector.test")
        sink, states = sink_for(f"tls://127.0.0.1:{server.port}", tls)
        send(sink, event(1))
        wait_until(lambda: len(server.frames) == 1)
        sink.close()
        assert states == []
        refused = _outage(server, TlsSettings(pki.ca.cert, None, None, "collector.test"))
    assert "CERTIFICATE_REQUIRED" in refused
    assert [sequence(frame) for frame in server.frames] == [1]


@pytest.mark.parametrize(
    ("wrong", "reason"),
    [("ca", "unable to get local issuer certificate"), ("server_name", "Hostname mismatch")],
)
def test_a_collector_failing_verification_gets_nothing(pki: Pki, wrong: str, reason: str) -> None:
    ca = pki.other_ca.cert if wrong == "ca" else pki.ca.cert
    name = "elsewhere.test" if wrong == "server_name" else "collector.test"
    with serving(pki.server_context()) as server:
        down = _outage(server, TlsSettings(ca=ca, server_name=name))
    assert down.startswith(f"tls://127.0.0.1:{server.port}: cannot connect: ")
    assert "TLS certificate verification failed" in down and reason in down
    assert server.frames == []


def _outage(server: FrameServer, tls: TlsSettings) -> str:
    """A write that cannot get through: it waits, reports the outage once, and raises OSError
    once interrupted. The reason reported."""
    sink, states = sink_for(f"tls://127.0.0.1:{server.port}", tls)
    writing = Writing(sink, event(99))
    wait_until(lambda: server.accepted >= 3)  # retried, reported once
    sink.interrupt()
    writing.join(1)
    assert isinstance(writing.error, OSError) and sink.errors == 1
    assert len(states) == 1 and states[0][0] is False
    return states[0][1]


def test_a_stream_output_writes_a_block_s_frames_as_it_would_each_event_s() -> None:
    from tests.unit.test_writer import line_block

    block = line_block(["allow", "reject", "log", "allow"])
    whole, one_by_one = SyslogSink("tcp://127.0.0.1:514"), SyslogSink("tcp://127.0.0.1:514")
    assert whole.blocks and not SyslogSink("udp://127.0.0.1:514").blocks
    assert not SyslogSink("tcp://127.0.0.1:514", fmt="cef").blocks
    whole.write(block)
    for one in block.events():
        one_by_one.write(one)
    assert whole._frames == one_by_one._frames and len(whole._frames) == 4
    assert whole._frames[1].split(b" ", 2)[1] == b"<28>1"  # daemon.warning
