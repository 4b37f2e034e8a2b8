"""`portguard status` and the metrics endpoint on the real daemon: their counters match the
connections a test made, with one worker (it answers itself) and with two (the parent asks
each worker over its own socket and adds up)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab import Lab
from lab import addresses as a
from lab.daemon import LabDaemon, hooks_leftover
from lab.netns import LabError
from lab.peers import python_env
from portguard.config.model import load_config

LISTEN = "127.0.0.1:9477"  # the gateway namespace's own loopback
METRICS = f'\n[metrics]\nlisten = "{LISTEN}"\n'
ALLOWED, DENIED = 3, 2
GET = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"  # noqa: E501
HOLD_PORT = (
    "import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
    "socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1', 9477)); s.listen(); "
    "print('READY', flush=True); time.sleep(60)"
)


@pytest.fixture(params=[1, 2], ids=["workers-1", "workers-2"])
def daemon(lab: Lab, request: pytest.FixtureRequest) -> Iterator[LabDaemon]:
    running = LabDaemon(lab, workers=request.param, extra_config=METRICS)
    running.start()
    try:
        yield running
    finally:
        assert running.stop() == 0
    assert not hooks_leftover(lab)


def cli(lab: Lab, daemon: LabDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    argv = lab.python("portguard", "status", "--config", str(daemon.config), *args)
    return lab.run("gw", argv, capture_output=True, text=True, timeout=30, env=python_env())


def status(lab: Lab, daemon: LabDaemon) -> dict[str, Any]:
    proc = cli(lab, daemon, "--json")
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def scrape(lab: Lab) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    argv = [sys.executable, "-c", GET, f"http://{LISTEN}/metrics"]
    proc = lab.run("gw", argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(proc.stdout)
        for s in family.samples
    }


def hook_checked(lab: Lab, daemon: LabDaemon, timeout: float = 10.0) -> dict[str, Any]:
    """The status once the hook watch has checked the hook (every 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        doc = status(lab, daemon)
        if doc["hook"]["complete"] is not None or time.monotonic() > deadline:
            return doc
        time.sleep(0.5)


def make_connections(lab: Lab) -> None:
    for _ in range(ALLOWED):
        result = lab.send_mail("sub", a.SMARTHOST.v4, 25)
        assert result.outcome == "delivered", result
    for _ in range(DENIED):
        result = lab.send_mail("sub", a.MX.v4, 25, timeout=3)
        assert result.outcome == "refused", result


def test_status_counters_match_the_decisions_made(lab: Lab, daemon: LabDaemon) -> None:
    workers = load_config(daemon.config).queue.workers
    before = status(lab, daemon)
    assert before["decisions"]["total"] == 0 and before["recent_drops"] == 0
    make_connections(lab)
    doc = hook_checked(lab, daemon)
    assert doc["errors"] == []
    assert doc["daemon"]["workers"] == doc["daemon"]["workers_answering"] == workers
    assert [w["queue_reader"] for w in doc["workers"]] == ["batched"] * workers  # the C library
    assert doc["decisions"] == {"allow": ALLOWED, "log": 0, "reject": DENIED, "drop": 0,
                                "total": ALLOWED + DENIED}  # fmt: skip
    hits = {rule["id"]: (rule["action"], rule["hits"], rule["verdicts"]) for rule in doc["rules"]}
    assert hits.pop("smarthost") == ("allow", ALLOWED, {"allow": ALLOWED})
    assert hits.pop("block-25") == ("reject", DENIED, {"reject": DENIED})
    assert all(count == 0 for _action, count, _verdicts in hits.values()), hits
    assert doc["recent_drops"] == 0  # rejected, not dropped: nothing to recognise
    queues = doc["queues"]
    assert [q["queue"] for q in queues] == list(range(workers)) and all(q["bound"] for q in queues)
    for queue in queues:
        kernel = lab.queue_stats(queue["queue"])
        assert kernel is not None and queue["queued_total"] == kernel["id_sequence"]
        assert queue["queue_dropped"] == queue["user_dropped"] == 0
    assert doc["packets"] == sum(q["queued_total"] for q in queues) >= ALLOWED + DENIED
    assert doc["hook"]["complete"] is True and doc["hook"]["installed"] is True
    assert doc["policy"]["consistent"] is True and doc["policy"]["rules"] >= 5
    assert doc["daemon"]["fail_mode"] == "closed" and doc["daemon"]["uptime_seconds"] > 0
    assert doc["log"]["events_dropped"] == 0
    assert {sink["name"] for sink in doc["log"]["sinks"]} >= {"stdout"}
    plain = cli(lab, daemon)
    assert plain.returncode == 0, plain.stderr
    assert f"decisions: {ALLOWED + DENIED} (allow {ALLOWED}, log 0, reject {DENIED}" in plain.stdout


def test_metrics_show_the_same_counts(lab: Lab, daemon: LabDaemon) -> None:
    make_connections(lab)
    doc = hook_checked(lab, daemon)
    samples = scrape(lab)
    assert samples[("portguard_status_ok", ())] == 1
    assert samples[("portguard_decisions_total", (("verdict", "allow"),))] == ALLOWED
    assert samples[("portguard_decisions_total", (("verdict", "reject"),))] == DENIED
    assert samples[("portguard_decisions_total", (("verdict", "drop"),))] == 0
    assert samples[("portguard_rule_hits_total", (("rule", "smarthost"),))] == ALLOWED
    assert samples[("portguard_rule_hits_total", (("rule", "block-25"),))] == DENIED
    assert samples[("portguard_recent_drops", ())] == 0
    assert samples[("portguard_hook_complete", ())] == 1
    assert samples[("portguard_policy_info", (("version", doc["policy"]["version"]),))] == 1
    for queue in doc["queues"]:
        labels = (("kind", "queue"), ("queue", str(queue["queue"])))
        assert samples[("portguard_queue_dropped_total", labels)] == 0
        assert ("portguard_queue_length", (("queue", str(queue["queue"])),)) in samples


def test_a_reload_shows_in_the_policy_load_time(lab: Lab, daemon: LabDaemon) -> None:
    loaded = status(lab, daemon)["policy"]["loaded_at"]
    argv = lab.python("portguard", "reload", "--config", str(daemon.config))
    proc = lab.run("gw", argv, capture_output=True, text=True, timeout=60, env=python_env())
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 10  # forked workers load the rules after the parent's check
    while (doc := status(lab, daemon))["policy"]["loaded_at"] == loaded:
        assert time.monotonic() < deadline, doc["policy"]
        time.sleep(0.2)
    assert doc["policy"]["loaded_at"] > loaded


def test_a_metrics_port_in_use_fails_the_start_cleanly(lab: Lab) -> None:
    holder = lab.popen("gw", [sys.executable, "-c", HOLD_PORT], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "READY"
        running = LabDaemon(lab, extra_config=METRICS)
        with pytest.raises(LabError, match=f"cannot listen for metrics on {LISTEN}"):
            running.start(timeout=20)
        assert running.stop() == 1
        assert not hooks_leftover(lab)
        assert lab.queue_stats(0) is None
    finally:
        holder.kill()
        holder.wait()


def test_status_of_a_stopped_daemon_names_the_socket(lab: Lab) -> None:
    running = LabDaemon(lab)
    control = running.dir / "control.sock"
    try:
        with socket.socket(socket.AF_UNIX) as stale:  # a socket file nobody listens on
            stale.bind(str(control))
        proc = cli(lab, running)
    finally:
        running.stop()
    assert proc.returncode == 1
    assert f"no daemon listens on {control}" in proc.stderr
