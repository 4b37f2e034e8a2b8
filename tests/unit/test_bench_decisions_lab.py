"""The decision benchmark's pure parts: its policy files and ipsets, the kernel-only rules, the
daemon config (and the hook the floor gets from it), the stop events it reads back, the rounds'
majority rule and the clients' start argument."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from bench import synclient
from bench.decisions_lab import (
    Events,
    Flood,
    Round,
    ipset_script,
    read_events,
    together,
    write_policy,
)
from bench.decisions_phases import Point, decided_early, with_retries
from bench.decisions_setups import bench_config, kernel_rules
from portguard.config.model import parse_config
from portguard.core.policy.model import Action
from portguard.io.policyfiles import load_ruleset
from portguard.service.hookspec import hook_spec


def test_the_policy_has_three_rules_and_a_100k_business_list(tmp_path: Path) -> None:
    rules = write_policy(tmp_path / "rules", prefixes=1000)
    ruleset = load_ruleset([rules])
    assert [(r.id, r.action) for r in ruleset.rules] == [
        ("smarthost", Action.ALLOW),
        ("business-25", Action.ALLOW),
        ("block-25", Action.REJECT),
    ]
    listed = (rules / "business.txt").read_text().split()
    assert len(listed) == 1000 and "203.0.113.0/24" in listed


def test_the_ipsets_hold_every_prefix_of_the_list_in_its_family() -> None:
    prefixes = ["203.0.113.0/24", "2001:db8:b12::/48", "10.0.0.4/30"]
    lines = ipset_script(prefixes).splitlines()
    assert lines[0].startswith("create pg-bench-business4 hash:net family inet ")
    assert lines[1].startswith("create pg-bench-business6 hash:net family inet6 ")
    assert lines[2:] == [
        "add pg-bench-business4 203.0.113.0/24",
        "add pg-bench-business6 2001:db8:b12::/48",
        "add pg-bench-business4 10.0.0.4/30",
    ]


@pytest.mark.parametrize("family", ["iptables", "ip6tables"])
def test_kernel_rules_decide_new_syns_to_25_as_the_policy_does(family: str) -> None:
    smarthost, business, block = kernel_rules(family)
    for rule in (smarthost, business, block):
        assert rule.startswith("FORWARD -p tcp -m tcp --dport 25 --tcp-flags FIN,SYN,RST,ACK SYN")
        assert "--ctstate NEW" in rule
    assert smarthost.endswith("-j ACCEPT") and " -s " in smarthost and " -d " in smarthost
    suffix = "6" if family == "ip6tables" else "4"
    assert f"--match-set pg-bench-business{suffix} src -j ACCEPT" in business
    assert block.endswith("-j REJECT --reject-with tcp-reset")
    source = smarthost.split(" -s ")[1].split()[0]
    assert ipaddress.ip_network(source).version == (6 if family == "ip6tables" else 4)


@pytest.mark.parametrize(("workers", "syslog"), [(1, False), (2, True)])
def test_the_daemon_config_is_valid_without_stdout_or_per_source_limit(
    tmp_path: Path, workers: int, syslog: bool
) -> None:
    rules = write_policy(tmp_path / "rules", prefixes=10)
    config = parse_config(bench_config(rules, workers, syslog, tmp_path), tmp_path / "pg.toml")
    assert [o.type for o in config.log.outputs] == ["file"] + (["syslog"] if syslog else [])
    assert config.queue.workers == workers and config.hook.backend == "iptables"
    assert not config.queue.per_source.enabled
    spec = hook_spec(config)  # what the floor's hook is installed from
    assert spec.per_source is None and spec.workers == workers and 25 in spec.ports


def stop_event(packets: int, sinks: list[tuple[str, int, int, int]], handoff: int = 0) -> bytes:
    event = {
        "event": {"action": "stop", "dataset": "portguard.lifecycle"},
        "portguard": {
            "packets": packets,
            "handoff_dropped": handoff,
            "sinks": [
                {"name": n, "submitted": s, "written": w, "dropped": d} for n, s, w, d in sinks
            ],
        },
    }
    return json.dumps(event).encode()


def test_read_events_sums_the_workers_stop_events(tmp_path: Path) -> None:
    decision = b'{"event": {"action": "allow", "dataset": "portguard.decision"}}'
    start = b'{"event": {"action": "start", "dataset": "portguard.lifecycle"}}'
    lines = [
        start,
        decision,
        decision,
        decision,
        stop_event(2, [("file:/x", 4, 4, 0), ("syslog:tcp://127.0.0.1:5514", 4, 3, 1)], 1),
        stop_event(1, [("file:/x", 2, 2, 0), ("syslog:tcp://127.0.0.1:5514", 2, 2, 0)]),
    ]
    path = tmp_path / "decisions.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    events = read_events(path)
    assert (events.decided, events.in_file, events.handoff_dropped) == (3, 3, 1)
    file, syslog = events.output("file"), events.output("syslog")
    assert file is not None and (file.submitted, file.written, file.dropped) == (6, 6, 0)
    assert syslog is not None and (syslog.submitted, syslog.written, syslog.dropped) == (6, 5, 1)


def a_round(sent: int, arrived: int, seconds: float = 2.0) -> Round:
    return Round(Flood(1000, sent, 0, seconds), arrived, arrived, sent - arrived, None)


def test_a_round_counts_what_was_lost_and_the_rate_that_arrived() -> None:
    measured = a_round(2000, 1500)
    assert measured.lost == 500 and measured.decisions_per_s == 750
    assert Round(Flood(1000, 2000, 0, 2.0), 2100, 2100, 0, None).decisions_per_s == 1000


def test_a_point_keeps_up_when_most_of_its_rounds_lost_nothing() -> None:
    good, bad = a_round(2000, 2000), a_round(2000, 1990)
    assert Point("x", 1000, (good, good, bad)).keeps_up
    assert not Point("x", 1000, (good, bad, bad)).keeps_up
    assert not Point("x", 1000, (good, bad)).keeps_up  # a tie is not most
    assert Point("x", 1000, (good,)).keeps_up
    assert Point("x", 1000, (bad, good, bad)).lost == 10


def test_a_point_says_when_the_clients_could_not_offer_the_rate() -> None:
    assert Point("x", 1000, (a_round(1900, 1900),)).generator_bound is False  # 950/s of 1000
    assert Point("x", 1000, (a_round(1800, 1800),)).generator_bound is True


def test_rounds_stop_once_most_of_them_agree() -> None:
    good, bad = a_round(10, 10), a_round(10, 9)
    assert not decided_early([], 3)
    assert not decided_early([good], 3)
    assert not decided_early([good, bad], 3)
    assert decided_early([good, good], 3) and decided_early([bad, bad], 3)
    assert decided_early([good], 1) and decided_early([bad], 1)


def test_events_name_their_outputs_by_kind() -> None:
    events = Events(1, 1, 0)
    assert events.output("file") is None


def test_a_client_waits_for_its_start_then_passes_the_rest_on() -> None:
    assert synclient.split_at(["--at", "12.5", "--rate", "10"]) == (12.5, ["--rate", "10"])
    with pytest.raises(SystemExit):
        synclient.split_at(["--rate", "10"])


def test_the_clients_flood_spans_the_first_start_to_the_last_end() -> None:
    results = [
        {"late": 0.0, "sent": 1000, "errors": 0, "seconds": 2.0},
        {"late": 0.5, "sent": 1000, "errors": 2, "seconds": 2.0},  # started half a second late
        {"sent": 998, "errors": 0, "seconds": 2.1},  # synflood alone: no "late" line
    ]
    flood = together(1500, results)
    assert (flood.asked, flood.sent, flood.errors) == (1500, 2998, 2)
    assert flood.seconds == 2.5 and flood.late == 0.5
    assert flood.offered == pytest.approx(2998 / 2.5)


def test_a_failed_measurement_is_tried_again_then_given_up() -> None:
    calls: list[int] = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("daemon not ready")
        return 42

    assert with_retries(flaky, 3, "flaky", pause=0) == 42 and len(calls) == 3
    calls.clear()
    with pytest.raises(RuntimeError):
        with_retries(flaky, 2, "flaky", pause=0)
    assert len(calls) == 2


def test_ctrl_c_is_never_retried() -> None:
    calls: list[int] = []

    def interrupted() -> int:
        calls.append(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with_retries(interrupted, 3, "interrupted", pause=0)
    assert len(calls) == 1
