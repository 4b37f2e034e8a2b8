"""The namespace lab, its SMTP peers and the demo.

The tests marked `integration` need root: they build real namespaces (unique `pg-<hex>`
prefixes, always removed) and run real aiosmtpd servers and smtplib clients across them. The
other tests check the pure parts (parsers, event matching, the table) without root.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, LabError, SendResult, topology
from lab import addresses as a
from lab.cases import CASES, Attempt, Case, match_events, plan, render_table, rows
from lab.daemon import SHIPPED_RULES, forked_children, render_config
from lab.demo import run_demo
from lab.peers import parse_send_result, python_env, server_specs
from lab.smtpc import classify, coalesce, message_chunks
from lab.smtpd import Listen, format_endpoint, parse_listen
from lab.topology import client_address, parse_queue_stats
from portguard.config.model import parse_config

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
lab_test = [pytest.mark.integration, needs_root]

VERSIONS = pytest.mark.parametrize("version", [4, 6], ids=["ipv4", "ipv6"])


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def mine(prefix: str) -> list[str]:
    return [name for name in namespaces() if name.startswith(prefix + "-")]


def peer_ip(record: dict[str, Any]) -> str:
    return str(record["peer"]).rsplit(":", 1)[0].strip("[]")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with Lab() as built:
        built.start_smtp_servers()
        yield built


# --- life cycle ------------------------------------------------------------------------------


@pytest.mark.integration
@needs_root
def test_lab_builds_four_namespaces_and_removes_them() -> None:
    with Lab() as built:
        assert sorted(mine(built.prefix)) == sorted(built.names.values())
        workdir = built.workdir
        assert workdir.is_dir()
    assert mine(built.prefix) == []
    assert not workdir.exists()


@pytest.mark.integration
@needs_root
def test_lab_is_removed_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), Lab() as built:
        built.start_smtp_servers()
        raise RuntimeError("boom")
    assert mine(built.prefix) == []
    assert subprocess.run(["pgrep", "-f", str(built.workdir)], capture_output=True).stdout == b""


HOLD_A_LAB = textwrap.dedent("""
    import signal
    from lab import Lab
    with Lab() as lab:
        lab.start_smtp_servers()
        print(lab.prefix, flush=True)
        signal.pause()
""")


@pytest.mark.integration
@needs_root
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_lab_is_removed_when_its_process_is_signalled(signum: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_LAB],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=python_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        prefix = proc.stdout.readline().strip()
        assert len(mine(prefix)) == 4
        os.killpg(proc.pid, signum)  # a terminal's Ctrl-C reaches the whole process group
        proc.wait(timeout=20)
    finally:
        topology.terminate(proc)
    assert mine(prefix) == []


@pytest.mark.integration
@needs_root
def test_a_failed_build_removes_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    real = topology.build_commands

    def broken(names: dict[str, str]) -> list[tuple[str, list[str]]]:
        return [*real(names), (names["net"], ["link set no-such-link up"])]

    monkeypatch.setattr(topology, "build_commands", broken)
    built = Lab()
    with pytest.raises(LabError, match="no-such-link"):
        built.start()
    assert mine(built.prefix) == []


@pytest.mark.integration
@needs_root
def test_nothing_is_created_in_the_root_namespace(lab: Lab) -> None:
    for dev in (a.GW_WAN_IF, a.GW_SUB_IF, a.GW_BIZ_IF, a.SUB_IF, a.BIZ_IF, a.NET_IF):
        root = subprocess.run(["ip", "link", "show", dev], capture_output=True)
        assert root.returncode != 0, f"{dev} exists in the root namespace"
    gw_links = lab.run("gw", ["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert all(dev in gw_links for dev in (a.GW_WAN_IF, a.GW_SUB_IF, a.GW_BIZ_IF))


@pytest.mark.integration
@needs_root
def test_gateway_forwards_and_routes_to_the_servers(lab: Lab) -> None:
    keys = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]
    out = lab.run("gw", ["sysctl", "-n", *keys], capture_output=True, text=True).stdout
    assert out.split() == ["1", "1"]
    route = lab.run("gw", ["ip", "route", "get", a.MX.v6], capture_output=True, text=True)
    assert f"via {a.INTERNET.v6} dev {a.GW_WAN_IF}" in route.stdout
    route = lab.run("sub", ["ip", "route", "get", a.MX.v4], capture_output=True, text=True)
    assert f"via {a.GW_SUB.v4} dev {a.SUB_IF}" in route.stdout


# --- SMTP across the lab without any daemon or hook -------------------------------------------


@pytest.mark.integration
@needs_root
@VERSIONS
def test_subscriber_delivers_to_the_mx_on_25(lab: Lab, version: int) -> None:
    before = len(lab.received(a.MX.family(version)))
    result = lab.send_mail("sub", a.MX.family(version), 25)
    assert result.outcome == "delivered", result
    record = lab.received(a.MX.family(version))[before]
    assert record["local_port"] == 25
    assert peer_ip(record) == a.SUBSCRIBER.family(version)
    assert record["size"] == 1000
    assert record["tls"] is False


@pytest.mark.integration
@needs_root
@VERSIONS
@pytest.mark.parametrize(("port", "mode"), [(587, "starttls"), (465, "implicit")])
def test_submission_delivers_over_tls(lab: Lab, version: int, port: int, mode: str) -> None:
    server = a.SUBMISSION.family(version)
    result = lab.send_mail("sub", server, port, mode=mode)
    assert result.outcome == "delivered", result
    record = lab.received(server)[-1]
    assert (record["local_port"], record["tls"]) == (port, True)


@pytest.mark.integration
@needs_root
def test_plain_client_on_the_implicit_tls_port_fails(lab: Lab) -> None:
    result = lab.send_mail("sub", a.SUBMISSION.v4, 465, mode="plain", timeout=2.0)
    assert result.outcome != "delivered"


@pytest.mark.integration
@needs_root
@VERSIONS
def test_internet_delivers_inbound_to_the_subscriber(lab: Lab, version: int) -> None:
    result = lab.send_mail("net", a.SUBSCRIBER.family(version), 25)
    assert result.outcome == "delivered", result
    record = lab.received(a.SUBSCRIBER.family(version))[-1]
    assert peer_ip(record) == a.INTERNET.family(version)


@pytest.mark.integration
@needs_root
def test_ten_megabytes_deliver_whole(lab: Lab) -> None:
    result = lab.send_mail("biz", a.MX.v4, 25, size=10_000_000, timeout=20.0)
    assert result.outcome == "delivered", result
    assert lab.received(a.MX.v4)[-1]["size"] == 10_000_000


@pytest.mark.integration
@needs_root
def test_connect_only_sends_no_message(lab: Lab) -> None:
    before = len(lab.received(a.SMARTHOST.v6))
    result = lab.send_mail("sub", a.SMARTHOST.v6, 2525, connect_only=True)
    assert result.outcome == "connected", result
    assert len(lab.received(a.SMARTHOST.v6)) == before


@pytest.mark.integration
@needs_root
def test_closed_port_is_refused_fast(lab: Lab) -> None:
    result = lab.send_mail("sub", a.MX.v4, 26, timeout=3.0)
    assert result.outcome == "refused", result
    assert result.elapsed_ms < 1000


@contextlib.contextmanager
def gateway_rule(lab: Lab, tool: str, rule: list[str]) -> Iterator[None]:
    """An iptables/ip6tables rule in the lab's gateway FORWARD chain, for the block only."""
    lab.run("gw", [tool, "-I", "FORWARD", *rule], check=True)
    try:
        yield
    finally:
        lab.run("gw", [tool, "-D", "FORWARD", *rule], check=True)


@pytest.mark.integration
@needs_root
def test_dropped_syn_times_out(lab: Lab) -> None:
    rule = ["-s", a.BUSINESS.v4, "-p", "tcp", "--dport", "2525", "--syn", "-j", "DROP"]
    with gateway_rule(lab, "iptables", rule):
        result = lab.send_mail("biz", a.MX.v4, 2525, timeout=0.5)
    assert result.outcome == "timeout", result
    assert 400 < result.elapsed_ms < 3000


@pytest.mark.integration
@needs_root
def test_connection_cut_after_setup_is_a_reset(lab: Lab) -> None:
    # The SYN passes; the client's first data segment (EHLO) is answered with a TCP RST.
    rule = ["-s", a.BUSINESS.v6, "-p", "tcp", "--dport", "2525", "--tcp-flags", "PSH", "PSH"]
    rule += ["-j", "REJECT", "--reject-with", "tcp-reset"]
    with gateway_rule(lab, "ip6tables", rule):
        result = lab.send_mail("biz", a.MX.v6, 2525, timeout=2.0)
    assert result.outcome == "reset", result


# --- the kernel queue counters ---------------------------------------------------------------


@pytest.mark.integration
@needs_root
def test_queue_stats_is_none_when_nothing_is_bound(lab: Lab) -> None:
    assert lab.queue_stats(0) is None


BINDER = textwrap.dedent("""
    from netfilterqueue import NetfilterQueue
    queue = NetfilterQueue()
    queue.bind(7, lambda packet: packet.accept())
    print("READY", flush=True)
    queue.run()
""")


@pytest.mark.integration
@needs_root
def test_queue_stats_counts_packets_that_reached_the_queue(lab: Lab) -> None:
    binder = lab.popen("gw", [sys.executable, "-c", BINDER], stdout=subprocess.PIPE, text=True)
    try:
        assert binder.stdout is not None and binder.stdout.readline().strip() == "READY"
        stats = lab.queue_stats(7)
        assert stats is not None and stats["id_sequence"] == 0 and stats["port_id"] > 0
        rule = ["-s", a.BUSINESS.v4, "-p", "tcp", "--dport", "2525", "--syn"]
        with gateway_rule(lab, "iptables", [*rule, "-j", "NFQUEUE", "--queue-num", "7"]):
            result = lab.send_mail("biz", a.MX.v4, 2525)
        assert result.outcome == "delivered", result
        stats = lab.queue_stats(7)
        assert stats is not None and stats["id_sequence"] == 1  # only the SYN was queued
    finally:
        topology.terminate(binder)
    assert lab.queue_stats(7) is None


# --- the demo --------------------------------------------------------------------------------


@pytest.mark.integration
@needs_root
def test_demo_without_a_daemon_delivers_everything() -> None:
    out = io.StringIO()
    assert run_demo(out, with_daemon=False) == 0, out.getvalue()
    text = out.getvalue()
    assert text.count("| delivered |") == 2 * len(CASES)
    assert "all cases as expected" in text


STAND_IN_DAEMON = textwrap.dedent("""
    # Stands in for `portguard run`: iptables hooks, NFQUEUE, a fixed policy, one event a line.
    import datetime, ipaddress, json, os, signal, socket, subprocess, sys, tomllib
    from netfilterqueue import NetfilterQueue

    config = tomllib.load(open(sys.argv[sys.argv.index("--config") + 1], "rb"))
    events = open(next(o["path"] for o in config["log"]["outputs"] if o["type"] == "file"), "a")
    ports = ",".join(str(port) for port in config["hook"]["ports"])
    HOOKS = [
        ["FORWARD", "-p", "tcp", "-m", "mark", "--mark", "1", "-j", "REJECT",
         "--reject-with", "tcp-reset"],
        ["FORWARD", "-p", "tcp", "-m", "multiport", "--dports", ports, "--syn", "-j", "NFQUEUE",
         "--queue-num", str(config["queue"]["num"])],
    ]
    SUBSCRIBERS = [ipaddress.ip_network(n) for n in ("100.64.0.0/10", "2001:db8:64::/48")]
    SMARTHOSTS = {ipaddress.ip_address(x) for x in ("198.51.100.26", "2001:db8:25::26")}

    def decide(src, dst, port):
        if port == 25 and any(dst in n for n in SUBSCRIBERS):
            return "reject", "inbound-25-subscribers"
        if port == 25 and any(src in n for n in SUBSCRIBERS) and dst not in SMARTHOSTS:
            return "reject", "block-25"
        return "allow", "stand-in-allow"

    def addresses(data):
        if data[0] >> 4 == 4:
            return data[12:16], data[16:20], data[(data[0] & 15) * 4 + 2:]
        return data[8:24], data[24:40], data[42:]  # no extension headers in the lab

    def verdict(packet):
        action = "allow"
        try:
            src, dst, rest = addresses(packet.get_payload())
            src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
            port = int.from_bytes(rest[:2], "big")
            action, rule = decide(src, dst, port)
            event = {"@timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
                     "event": {"action": action}, "rule": {"id": rule},
                     "source": {"ip": str(src)}, "destination": {"ip": str(dst), "port": port}}
            events.write(json.dumps(event) + "\\n")
            events.flush()
        finally:
            if action == "reject":
                packet.set_mark(1)
                packet.repeat()
            else:
                packet.accept()

    def stop(signum, frame):
        raise KeyboardInterrupt

    queue = NetfilterQueue()
    queue.bind(config["queue"]["num"], verdict)
    for tool in ("iptables", "ip6tables"):
        for hook in HOOKS:
            subprocess.run([tool, "-A", *hook], check=True)
    signal.signal(signal.SIGTERM, stop)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
    try:
        queue.run()
    except KeyboardInterrupt:
        pass
    for tool in ("iptables", "ip6tables"):
        for hook in HOOKS:
            subprocess.run([tool, "-D", *hook], check=True)
""")


@pytest.mark.integration
@needs_root
def test_demo_matches_daemon_events_to_attempts(tmp_path: Path) -> None:
    script = tmp_path / "stand_in_daemon.py"
    script.write_text(STAND_IN_DAEMON)
    out = io.StringIO()
    code = run_demo(out, daemon_command=[sys.executable, str(script)])
    text = out.getvalue()
    assert code == 0, text
    table = text.split("attempt ", 1)[1]
    assert table.count("| refused   |") == 4
    assert table.count("| reject  | block-25 ") == 2
    assert table.count("| reject  | inbound-25-subscribers ") == 2
    assert table.count("| -       | -") == 2  # the unhooked port: no event
    assert "hooks removed" in text


@pytest.mark.integration
@needs_root
def test_demo_reports_a_daemon_that_fails_to_start() -> None:
    out = io.StringIO()
    failing = [sys.executable, "-c", "import sys; sys.exit('cannot read config: boom')"]
    assert run_demo(out, daemon_command=failing) == 2
    assert "cannot read config: boom" in out.getvalue()


@pytest.mark.integration
@needs_root
@pytest.mark.skipif(not any(SHIPPED_RULES.glob("*.toml")), reason="no shipped rules yet")
def test_demo_with_the_real_daemon_and_shipped_rules() -> None:
    out = io.StringIO()
    assert run_demo(out) == 0, out.getvalue()


# --- pure parts (no root) --------------------------------------------------------------------


FORKS_AND_RUNS = """
import os, subprocess, sys, time
if os.fork() == 0:  # a forked child stays, like a worker
    time.sleep(30)
    os._exit(0)
subprocess.Popen(["sleep", "30"])  # a command it runs, like the hook watch's checks
sys.stdout.write("up\\n"); sys.stdout.flush()
time.sleep(30)
"""


def test_forked_children_are_the_forks_not_the_commands_run() -> None:
    proc = subprocess.Popen([sys.executable, "-c", FORKS_AND_RUNS], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2  # the fork and the `sleep`
        forks = forked_children(proc.pid)
        assert len(forks) == 1 and Path(f"/proc/{forks[0]}/cmdline").exists()
    finally:
        for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        proc.kill()
        proc.wait()


def test_parse_queue_stats_reads_the_kernel_format() -> None:
    text = (
        "    0  31245     0 2  4016     0     0       12  1\n"
        "    3 4117     5 2  4016     1     2        9  1\n"
    )
    assert parse_queue_stats(text, 0) == {
        "queue_num": 0, "port_id": 31245, "queue_total": 0, "copy_mode": 2,
        "copy_range": 4016, "queue_dropped": 0, "user_dropped": 0, "id_sequence": 12,
    }  # fmt: skip
    assert parse_queue_stats(text, 3) == {
        "queue_num": 3, "port_id": 4117, "queue_total": 5, "copy_mode": 2,
        "copy_range": 4016, "queue_dropped": 1, "user_dropped": 2, "id_sequence": 9,
    }  # fmt: skip
    assert parse_queue_stats(text, 1) is None
    assert parse_queue_stats("", 0) is None


@pytest.mark.parametrize("size", [0, 10, 200, 991, 992, 993, 994, 1_000_000, 3 * 992 * 1024 + 1])
def test_message_chunks_add_up_to_the_size_with_legal_lines(size: int) -> None:
    data = b"".join(message_chunks(size))
    header = next(message_chunks(size))
    assert len(data) == max(size, len(header)) + (1 if size - len(header) == 1 else 0)
    lines = data.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) + 2 <= 1000 and not line.startswith(b".") for line in lines)


def test_coalesce_keeps_bytes_and_order() -> None:
    chunks = [bytes([i]) * 700 for i in range(10)]
    blocks = list(coalesce(chunks, block=2000))
    assert b"".join(blocks) == b"".join(chunks)
    assert [len(b) for b in blocks] == [2100, 2100, 2100, 700]


def _raised(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException:
            raise outer from inner
    except BaseException as caught:
        return caught


def test_classify_names_what_the_client_saw() -> None:
    import smtplib

    assert classify(ConnectionRefusedError(111, "refused")) == "refused"
    assert classify(TimeoutError("timed out")) == "timeout"
    assert classify(ConnectionResetError(104, "reset")) == "reset"
    disconnected = _raised(smtplib.SMTPServerDisconnected("closed"), ConnectionResetError())
    assert classify(disconnected) == "reset"
    assert classify(_raised(smtplib.SMTPServerDisconnected("x"), TimeoutError())) == "timeout"
    assert classify(smtplib.SMTPDataError(554, b"no")) == "error"
    assert classify(OSError(113, "No route to host")) == "error"


def test_listen_addresses_parse_and_format() -> None:
    assert parse_listen("198.51.100.25:25") == Listen("198.51.100.25", 25)
    assert parse_listen("[2001:db8:25::25]:465") == Listen("2001:db8:25::25", 465)
    for bad in ("198.51.100.25", "mail:25", "[2001:db8::1]:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert format_endpoint(("2001:db8:25::25", 25, 0, 0)) == "[2001:db8:25::25]:25"
    assert format_endpoint(("198.51.100.25", 25)) == "198.51.100.25:25"


def test_servers_listen_on_every_server_address_and_port() -> None:
    net, sub = server_specs()
    assert (net.role, sub.role) == ("net", "sub")
    assert len(net.listens) == len(a.SERVERS) * 2 * len(a.SERVER_PORTS)
    assert "[2001:db8:25::27]:465" in net.listens
    assert sub.listens == ("100.64.10.10:25", "[2001:db8:64:10::10]:25")


def test_parse_send_result_takes_the_json_line_or_reports_an_error() -> None:
    line = json.dumps({"outcome": "refused", "elapsed_ms": 1.5, "detail": "ECONNREFUSED"})
    assert parse_send_result(f"noise\n{line}\n") == SendResult("refused", 1.5, "ECONNREFUSED")
    broken = parse_send_result("", "Traceback...\nImportError: x")
    assert broken.outcome == "error" and "ImportError: x" in broken.detail


def test_client_address_follows_the_destination_family() -> None:
    assert client_address("sub", a.MX.v4) == a.SUBSCRIBER.v4
    assert client_address("pg-abc123-net", a.SUBSCRIBER.v6) == a.INTERNET.v6


def test_demo_config_is_valid_for_the_daemon(tmp_path: Path) -> None:
    text = render_config([SHIPPED_RULES], tmp_path / "decisions.jsonl")
    config = parse_config(text, tmp_path / "portguard.toml")
    assert config.network.wan == (a.GW_WAN_IF,)
    assert config.hook.ports == (25, 465, 587) and config.hook.chains == ("forward",)
    assert config.rules.paths == (SHIPPED_RULES,)
    assert [o.type for o in config.log.outputs] == ["stdout", "file"]
    assert tomllib.loads(text)["queue"]["num"] == 0


def _attempt(case: Case, version: int, outcome: str, started: float) -> Attempt:
    dst = case.to.family(version)
    src = client_address(case.from_ns, dst)
    return Attempt(case, version, src, dst, SendResult(outcome, 3.0, ""), started, started + 0.2)


def _event(attempt: Attempt, action: str, rule: str, at: float) -> dict[str, Any]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}Z"
    return {
        "@timestamp": stamp, "event": {"action": action}, "rule": {"id": rule},
        "source": {"ip": attempt.src},
        "destination": {"ip": attempt.dst, "port": attempt.case.port},
    }  # fmt: skip


def test_events_match_attempts_by_tuple_and_time() -> None:
    block, smarthost = CASES[0], CASES[1]
    first = _attempt(block, 4, "refused", 1000.0)
    second = _attempt(block, 4, "refused", 1010.0)  # same tuple, later
    third = _attempt(smarthost, 6, "delivered", 1020.0)
    lifecycle = _event(first, "start", "-", 1000.05) | {
        "event": {"action": "start", "dataset": "portguard.lifecycle"}
    }
    events = [
        lifecycle,
        _event(third, "allow", "smarthost", 1020.1),
        _event(first, "reject", "block-25", 1000.1),
        _event(first, "reject", "block-25", 1010.1),
    ]
    matched = match_events([first, second, third], events)
    assert matched == [events[2], events[3], events[1]]
    assert match_events([first], [_event(first, "reject", "x", 1005.0)]) == [None]


def test_table_flags_attempts_that_did_not_go_as_expected() -> None:
    attempts = [_attempt(case, version, "delivered", 1000.0) for case, version in plan(CASES)]
    table = rows(attempts, [], with_daemon=True)
    failed = {row.attempt.case.number for row in table if not row.ok}
    assert failed == {1, 2, 3, 4, 5}  # only the unhooked port (6) expects no event
    rendered = render_table(table, with_daemon=True)
    assert "FAIL (want refused)" in rendered and rendered.count("\n") == len(attempts) + 1
    assert all(row.ok for row in rows(attempts, [], with_daemon=False))
