"""The status document: the gate's counters, one worker's section, the merge over workers,
the plain form, and `portguard status` against a real control socket."""

from __future__ import annotations

import grp
import os
import selectors
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from portguard.cli.main import main
from portguard.config.model import Config, parse_config
from portguard.core.detect.quarantine import entry as quarantine_entry
from portguard.core.events.record import Observer
from portguard.core.gate import Gate
from portguard.core.policy import RuleSet
from portguard.io.hooks.backend import HookSpec, HookStatus
from portguard.io.policyfiles import load_ruleset
from portguard.service import control
from portguard.service.control import ControlServer
from portguard.service.metrics import status_metrics
from portguard.service.policyload import Reply
from portguard.service.status import (
    DaemonFacts,
    build_document,
    gather,
    kernel_dropped_view,
    read_queue_rows,
    worker_section,
    worker_socket,
)
from portguard.service.statustext import format_status
from portguard.service.watchedhook import WatchedHook
from portguard.service.worker import Worker
from portguard.shipped import RULES_DIR
from tests.strategies import PacketSpec

SUBSCRIBER, MX, SMARTHOST = 0x64400A0A, 0xC6336419, 0xC633641A  # 100.64.10.10, 198.51.100.x
SHIPPED: RuleSet = load_ruleset([RULES_DIR])
OBSERVER = Observer("gw-test", "0.0.0")
SPEC = HookSpec(queue_num=0, workers=2, ports=(25,), chains=("forward",), fail_open=False)
# /proc/net/netfilter/nfnetlink_queue: queue, port id, waiting, copy mode, range, dropped x2, seq
PROC = (
    "    0  12345     3 2 512     7     2       90  1\n"
    "    1  12346     0 2 512     0     1       40  1\n"
)


def syn(src: int, dst: int, dport: int, sport: int) -> bytes:
    return PacketSpec(4, src, dst, sport, dport, 0x02, 1000, 0, 64240, 64).to_bytes()


def decided_gate(allowed: int, rejected: int, first_port: int = 40000) -> Gate:
    """A gate that decided `allowed` smarthost and `rejected` direct-to-MX connections."""
    gate = Gate(SHIPPED, OBSERVER)
    for n in range(allowed):
        gate.handle(syn(SUBSCRIBER, SMARTHOST, 25, first_port + n), False, True, 10.0)
    for n in range(rejected):
        gate.handle(syn(SUBSCRIBER, MX, 25, first_port + 1000 + n), False, True, 10.0)
    return gate


class Reader:
    packets, errors, verdict_errors = 9, 1, 1
    batched = True


class LogProcess:
    def __init__(self, stats: dict[str, Any], dropped: int = 0) -> None:
        self.stats, self.dropped = stats, dropped

    def read_stats(self) -> dict[str, Any]:
        return self.stats


def log_stats(written: int, dropped: int = 0, handoff: int = 0) -> dict[str, Any]:
    sinks = [{"name": "file", "submitted": written + dropped, "written": written,
              "dropped": dropped}]  # fmt: skip
    return {"sinks": sinks, "events_dropped": dropped + handoff, "handoff_dropped": handoff,
            "flow_end_lost": 1, "flow_ends": written}  # fmt: skip


class Backend:
    """A hook backend that reports a fixed status."""

    name = "iptables"

    def __init__(self, status: HookStatus) -> None:
        self.result = status
        self.installed: list[HookSpec] = []

    def render(self, spec: HookSpec) -> str:
        return ""

    def install(self, spec: HookSpec) -> None:
        self.installed.append(spec)

    def remove(self) -> None:
        pass

    def status(self, spec: HookSpec | None = None) -> HookStatus:
        return self.result


def facts(hook: WatchedHook | None = None, queues: tuple[int, ...] = (0, 1)) -> DaemonFacts:
    return DaemonFacts(1000.0, 42, "closed", queues, Path("/run/pg/control.sock"), hook)


def test_the_gate_counts_each_decision_once_per_rule_and_verdict() -> None:
    gate = decided_gate(allowed=3, rejected=2)
    gate.handle(syn(SUBSCRIBER, MX, 25, 41000), False, True, 11.0)  # a repeat: decided again
    gate.handle(b"\x45garbage", False, True, 11.0)  # malformed: no decision
    assert gate.hits == {("smarthost", "allow"): 3, ("block-25", "reject"): 3}
    assert gate.malformed == 1


def test_a_worker_section_reports_its_counters() -> None:
    gate = decided_gate(allowed=2, rejected=1)
    log = LogProcess(log_stats(written=5, handoff=1), dropped=4)
    section = worker_section(gate, 3, 1234.5, Reader(), log, 99)
    assert section["queue"] == 3 and section["pid"] == 99
    assert section["policy"]["version"] == SHIPPED.version
    assert section["policy"]["loaded_at"] == 1234.5
    assert section["policy"]["rules"][-1] == ["default", str(SHIPPED.default.action)]
    assert sorted(section["hits"]) == [["block-25", "reject", 1], ["smarthost", "allow", 2]]
    assert (section["recent_drops"], section["packets"], section["packet_errors"]) == (0, 9, 2)
    assert section["queue_reader"] == "batched"
    assert section["log"]["handoff_dropped"] == 4  # the worker knows of drops first
    assert section["fast_path"] is None  # off
    fast = worker_section(gate, 3, 1234.5, Reader(), log, 99, fast_path=17)
    assert fast["fast_path"] == {"answered": 17}


def test_sections_of_two_workers_add_up() -> None:
    one = worker_section(decided_gate(2, 1), 0, 100.0, Reader(), LogProcess(log_stats(3)), 1)
    two = worker_section(decided_gate(1, 4, 50000), 1, 100.0, None, LogProcess(log_stats(5, 2)), 2)
    rows = {0: {"queue_total": 3, "queue_dropped": 7, "user_dropped": 2, "id_sequence": 90}}
    extra = [{"name": "file", "submitted": 2, "written": 2, "dropped": 0}]  # the parent's
    doc = build_document(facts(), [one, two], {}, rows, 1060.0, extra)
    assert doc["decisions"] == {"allow": 3, "log": 0, "reject": 5, "drop": 0, "total": 8}
    hits = {rule["id"]: (rule["action"], rule["hits"], rule["verdicts"]) for rule in doc["rules"]}
    assert hits["smarthost"] == ("allow", 3, {"allow": 3})
    assert hits["block-25"] == ("reject", 5, {"reject": 5})
    assert hits["business-25"] == ("allow", 0, {})
    assert [rule["id"] for rule in doc["rules"]][-1] == "default"
    assert (doc["recent_drops"], doc["packets"], doc["packet_errors"]) == (0, 9, 2)
    assert doc["log"]["sinks"] == [{"name": "file", "submitted": 12, "written": 10, "dropped": 2}]
    assert doc["log"]["events_dropped"] == 2 and doc["log"]["flow_end_lost"] == 2
    assert doc["queues"][0] == {"queue": 0, "bound": True, "waiting": 3, "queue_dropped": 7,
                                "user_dropped": 2, "queued_total": 90}  # fmt: skip
    assert doc["queues"][1]["bound"] is False
    assert doc["daemon"]["uptime_seconds"] == 60.0 and doc["daemon"]["workers_answering"] == 2
    assert doc["policy"]["consistent"] is True and doc["errors"] == []


def test_rules_a_reload_removed_keep_their_hits_and_differing_policies_show() -> None:
    old = worker_section(decided_gate(1, 0), 0, 100.0, None, None, 1)
    old["hits"].append(["retired", "drop", 4])
    new = worker_section(decided_gate(0, 0), 1, 200.0, None, None, 2)
    new["policy"] = {**new["policy"], "version": "next", "rules": [["smarthost", "allow"]]}
    doc = build_document(facts(), [old, new], {}, {}, 300.0)
    assert doc["policy"]["version"] == "next" and doc["policy"]["consistent"] is False
    assert doc["policy"]["versions"] == {"0": SHIPPED.version, "1": "next"}
    assert [(r["id"], r["in_policy"], r["hits"]) for r in doc["rules"]] == [
        ("smarthost", True, 1), ("retired", False, 4)]  # fmt: skip


def test_a_worker_that_does_not_answer_is_named() -> None:
    answering = worker_section(decided_gate(1, 0), 0, 1.0, None, None, 1)
    asked: list[Path] = []

    def ask(path: Path) -> dict[str, Any]:
        asked.append(path)
        if path.name.endswith(".1"):
            raise TimeoutError("timed out")
        return {"ok": True, "worker": answering}

    sections, failures = gather(facts(), ask)
    assert asked == [Path("/run/pg/control.sock.0"), Path("/run/pg/control.sock.1")]
    assert sections == [answering] and failures == {1: "timed out"}
    doc = build_document(facts(), sections, failures, {}, 2000.0)
    assert doc["errors"] == ["worker on queue 1 did not answer: timed out"]
    assert doc["daemon"]["workers"] == 2 and doc["daemon"]["workers_answering"] == 1


def test_the_hook_is_what_the_last_full_check_saw() -> None:
    backend = Backend(HookStatus("iptables", True, True, "", 2))  # two copies: not intact
    hook = WatchedHook(backend, clock=lambda: 77.0)
    assert build_document(facts(hook), [], {}, {}, 0.0)["hook"]["complete"] is None
    hook.status()  # without the spec: `complete` means nothing, not recorded
    assert hook.last is None
    hook.status(SPEC)
    doc = build_document(facts(hook), [], {}, {}, 0.0)
    assert doc["hook"] == {"backend": "iptables", "installed": True, "complete": False,
                           "checked_at": 77.0}  # fmt: skip
    backend.result = HookStatus("iptables", True, True, "", 1)
    hook.install(SPEC)
    hook.status(SPEC)
    assert hook.last is not None and hook.last.complete and backend.installed == [SPEC]


def test_queue_rows_come_from_one_read_of_the_proc_file(tmp_path: Path) -> None:
    proc = tmp_path / "nfnetlink_queue"
    proc.write_text(PROC)
    rows = read_queue_rows([0, 1, 2], proc)
    assert rows[0] is not None and rows[0]["queue_dropped"] == 7 and rows[1] is not None
    assert rows[2] is None
    assert read_queue_rows([0], tmp_path / "absent") == {0: None}


def test_the_plain_form_shows_every_part() -> None:
    hook = WatchedHook(Backend(HookStatus("iptables", True, True, "", 1)), clock=lambda: 0.0)
    hook.status(SPEC)
    section = worker_section(decided_gate(2, 1), 0, 100.0, Reader(), LogProcess(log_stats(3)), 7)
    rows = {0: {"queue_total": 0, "queue_dropped": 5, "user_dropped": 1, "id_sequence": 3}}
    text = "\n".join(
        format_status(build_document(facts(hook), [section], {1: "gone"}, rows, 3725.0))
    )
    assert "up 45m 25s" in text and "fail mode: closed" in text
    assert "error: worker on queue 1 did not answer: gone" in text
    assert "hook: iptables, complete" in text
    assert f"policy: {SHIPPED.version}, {len(SHIPPED.rules)} rules" in text
    assert "decisions: 3 (allow 2, log 0, reject 1, drop 0)" in text
    assert "queue 0: 0 waiting, dropped 5 (queue full) + 1 (socket full)" in text
    assert "queue 1: NOT BOUND" in text
    assert "file: 3 written, 0 dropped of 3" in text
    table = {line.split()[0]: line.split()[1:] for line in text.splitlines()[-7:]}
    assert table["smarthost"] == ["allow", "2", "allow", "2"]
    assert table["block-25"] == ["reject", "1", "reject", "1"]


def test_limit_table_full_counts_add_up_and_show() -> None:
    one, two = decided_gate(1, 0), decided_gate(1, 0, 50000)
    one.limiter.table_full.update({"business-25": 3, "other": 1})
    two.limiter.table_full["business-25"] = 4
    sections = [worker_section(gate, q, 1.0, None, None, q) for q, gate in enumerate((one, two))]
    assert sections[0]["limit_table_full"] == {"business-25": 3, "other": 1}
    doc = build_document(facts(), sections, {}, {}, 2.0)
    assert doc["limit_table_full"] == {"business-25": 7, "other": 1}
    text = format_status(doc)
    assert "limit table full: rule business-25, 7 new sources refused" in text


def test_quarantined_sources_and_alerts_show() -> None:
    """Every worker holds the whole quarantine (merged): the largest table is the count;
    alerts and refusals add up."""
    one, two = decided_gate(1, 0), decided_gate(1, 0, 50000)
    for gate, sources in ((one, 2), (two, 1)):
        for n in range(sources):
            gate.quarantine.add(quarantine_entry((4, n), "fanout", 0.0, 60.0, [25]))
    one.detection.alerts, two.detection.alerts, two.quarantine.refused = 2, 1, 5
    sections = [worker_section(gate, q, 1.0, None, None, q) for q, gate in enumerate((one, two))]
    doc = build_document(facts(), sections, {}, {}, 2.0)
    assert doc["detection"] == {
        "quarantined": 2, "quarantine_refused": 5, "quarantine_full": 0, "alerts": 3,
        "sources_tracked": 0, "sources_evicted": 0,
    }  # fmt: skip
    text = format_status(doc)
    assert (
        "quarantined sources: 2 (refused connections 5); alerts: 3, sources tracked: 0, "
        "evicted 0" in text
    )
    metrics = {m.name: m.samples[0].value for m in status_metrics(doc) if m.samples}
    assert metrics["portguard_quarantined_sources"] == 2
    assert metrics["portguard_alerts"] == 3 and metrics["portguard_quarantine_refused"] == 5


def test_worker_socket_sits_next_to_the_daemons() -> None:
    assert worker_socket(Path("/run/portguard/control.sock"), 3) == Path(
        "/run/portguard/control.sock.3"
    )


# --- the worker's control requests -----------------------------------------------------------


def config(tmp_path: Path) -> Config:
    text = f'[rules]\npaths = ["{RULES_DIR}"]\n[daemon]\ncontrol_socket = "{tmp_path}/c.sock"\n'
    return parse_config(text, tmp_path / "portguard.toml")


def asked(worker: Worker, command: str) -> dict[str, Any]:
    answers: list[dict[str, Any]] = []
    worker.on_control({"command": command}, answers.append)
    assert len(answers) == 1
    return answers[0]


def test_a_worker_answers_status_with_its_section_or_the_whole_document(tmp_path: Path) -> None:
    worker = Worker(config(tmp_path), 0, SHIPPED, OBSERVER)
    worker.writer = LogProcess(log_stats(1))  # type: ignore[assignment]
    worker.gate.handle(syn(SUBSCRIBER, MX, 25, 40000), False, True, 1.0)
    section = asked(worker, "status")["worker"]
    assert section["hits"] == [["block-25", "reject", 1]] and section["queue"] == 0
    worker.facts = DaemonFacts.of(worker.config, 0.0, os.getpid(), None)
    doc = asked(worker, "status")
    assert doc["ok"] and doc["decisions"]["reject"] == 1 and doc["daemon"]["workers"] == 1
    assert doc["daemon"]["control_socket"] == f"{tmp_path}/c.sock"


def test_a_forked_workers_socket_refuses_reloads(tmp_path: Path) -> None:
    worker = Worker(config(tmp_path), 1, SHIPPED, OBSERVER)
    worker.private_control = True
    answer = asked(worker, "reload")
    assert answer["ok"] is False and "daemon's control socket" in answer["errors"][0]


# --- `portguard status` against a socket ----------------------------------------------------


class Daemon:
    """A select loop in a thread answering status requests on a real control socket."""

    def __init__(self, path: Path, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.server = ControlServer(path, self.handle)
        self.selector = selectors.DefaultSelector()
        self.server.register(self.selector)
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def handle(self, request: dict[str, Any], reply: Reply) -> None:
        reply(self.answer if request["command"] == "status" else {"ok": False})

    def run(self) -> None:
        while self.running:
            for key, _ in self.selector.select(timeout=0.05):
                key.data()

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.server.close()


@pytest.fixture
def document() -> dict[str, Any]:
    section = worker_section(decided_gate(2, 1), 0, 100.0, Reader(), LogProcess(log_stats(3)), 7)
    return build_document(facts(queues=(0,)), [section], {}, {}, 200.0)


@pytest.fixture
def daemon(tmp_path: Path, document: dict[str, Any]) -> Iterator[Daemon]:
    running = Daemon(tmp_path / "c.sock", document)
    yield running
    running.close()


def run_cli(tmp_path: Path, *args: str) -> int:
    cfg = tmp_path / "portguard.toml"
    cfg.write_text(f'[daemon]\ncontrol_socket = "{tmp_path}/c.sock"\n')
    return main(["status", "--config", str(cfg), *args])


def test_status_prints_the_document(
    tmp_path: Path, daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    assert run_cli(tmp_path, "--json") == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(daemon.answer))
    assert run_cli(tmp_path) == 0
    assert "decisions: 3 (allow 2, log 0, reject 1, drop 0)" in capsys.readouterr().out


def test_status_without_a_daemon_names_the_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(tmp_path, "--json") == 1
    err = capsys.readouterr().err
    assert f"no daemon listens on {tmp_path}/c.sock" in err


def test_status_reports_a_refusal(
    tmp_path: Path, daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon.answer = {"ok": False, "errors": ["status failed: boom"]}
    assert run_cli(tmp_path) == 1
    assert "status failed: boom" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's group to another needs root")
def test_the_control_socket_goes_to_the_portguard_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = grp.getgrnam("nogroup")  # stands in for "portguard" (absent here)
    monkeypatch.setattr(control, "SOCKET_GROUP", group.gr_name)
    server = ControlServer(tmp_path / "c.sock", lambda request, reply: None)
    try:
        info = (tmp_path / "c.sock").stat()
        assert info.st_gid == group.gr_gid and info.st_mode & 0o777 == 0o660
    finally:
        server.close()
    monkeypatch.setattr(control, "SOCKET_GROUP", "no-such-group-pgt")
    server = ControlServer(tmp_path / "d.sock", lambda request, reply: None)
    try:
        assert (tmp_path / "d.sock").stat().st_gid == os.getgid()
    finally:
        server.close()


def test_a_failing_request_gets_an_answer_and_the_loop_lives_on(tmp_path: Path) -> None:
    def handle(request: dict[str, Any], reply: Reply) -> None:
        if request["command"] == "boom":
            raise RuntimeError("broken counter")
        reply({"ok": True})

    running = Daemon(tmp_path / "c.sock", {})
    running.server.handler = handle
    try:
        answer = control.request(tmp_path / "c.sock", "boom", timeout=5)
        assert answer == {"ok": False, "errors": ["boom failed: RuntimeError('broken counter')"]}
        assert control.request(tmp_path / "c.sock", "status", timeout=5) == {"ok": True}
    finally:
        running.close()


def test_an_unprivileged_daemon_reports_queue_counters_unavailable(tmp_path: Path) -> None:
    from portguard.service.status import queue_row, read_queue_rows

    unreadable = tmp_path / "nfnetlink_queue"
    unreadable.write_text("    0  12345     3 2 65531     7     9     1000  1\n")
    unreadable.chmod(0)
    rows = read_queue_rows([0], unreadable)
    if os.geteuid() == 0:  # root reads it anyway: what `portguard status` as root does
        assert rows[0] is not None and rows[0]["queue_dropped"] == 7
        return
    row = queue_row(0, rows[0])
    assert row["bound"] is None and "root" in row["unavailable"]


def test_the_cli_fills_in_what_the_daemon_could_not_read(tmp_path: Path) -> None:
    from portguard.service.status import fill_queue_counters

    stats = tmp_path / "nfnetlink_queue"
    stats.write_text("    0  12345     3 2 65531     7     9     1000  1\n")
    document = {"queues": [{"queue": 0, "bound": None, "unavailable": "root only"},
                           {"queue": 1, "bound": False}]}  # fmt: skip
    filled = fill_queue_counters(document, stats)
    assert filled["queues"][0]["bound"] is True and filled["queues"][0]["queue_dropped"] == 7
    assert filled["queues"][1] == {"queue": 1, "bound": False}


# --- drops before the queue ------------------------------------------------------------------


def test_kernel_drops_show_in_the_document_once_read() -> None:
    counters = {"per_source": 995000, "invalid": 3, "deny_cache": 12}
    status = HookStatus("iptables", True, True, "ok", 1, counters)
    hook = WatchedHook(Backend(status), clock=lambda: 100.0)
    assert kernel_dropped_view(hook) == dict.fromkeys(counters)  # not read yet
    hook.status(SPEC)
    assert kernel_dropped_view(hook) == counters
    facts = DaemonFacts(0.0, 1, "closed", (0,), Path("/run/c.sock"), hook)
    doc = build_document(facts, [], {}, {}, 1.0)
    assert doc["kernel_dropped"] == counters
    assert "dropped before the queue: 995000 over the per-source limit, 3 INVALID with SYN" in (
        format_status({**doc, "policy": None, "rules": []})
    )
