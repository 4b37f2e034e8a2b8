"""The Prometheus collector (through prometheus_client's own exposition), the [metrics] config
table, and the Grafana dashboard's queries against the metric names really exported."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from portguard.config.model import ConfigError, parse_config
from portguard.service.metrics import METRIC_NAMES, registry_for
from portguard.service.status import DaemonFacts, build_document

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana" / "portguard-dashboard.json"
CONFIG = Path("/etc/portguard/portguard.toml")
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def section(queue: int, hits: list[list[Any]], flows: int, sinks: list[dict[str, Any]]) -> Any:
    return {
        "queue": queue,
        "pid": 100 + queue,
        "policy": {"version": "v1", "loaded_at": 1700000000.5,
                   "rules": [["smarthost", "allow"], ["block-25", "reject"],
                             ["default", "allow"]]},
        "hits": hits,
        "recent_drops": flows,
        "malformed": 1,
        "packets": 20,
        "packet_errors": 0,
        "log": {"sinks": sinks, "handoff_dropped": 2, "flow_end_lost": 3, "flow_ends": 4},
        "deny_cache": {"keys": 10 + queue, "hits": 500, "rotations": 3},
    }  # fmt: skip


def sink(name: str, written: int, dropped: int) -> dict[str, Any]:
    return {"name": name, "submitted": written + dropped, "written": written, "dropped": dropped}


def document(hook_complete: bool | None = True) -> dict[str, Any]:
    one = section(0, [["smarthost", "allow", 3], ["block-25", "reject", 1]], 5,
                  [sink("file", 10, 1), sink("syslog", 9, 2)])  # fmt: skip
    two = section(1, [["block-25", "reject", 4], ["smarthost", "reject", 2]], 6,
                  [sink("file", 7, 0), sink("syslog", 7, 0)])  # fmt: skip
    rows = {
        0: {"queue_total": 2, "queue_dropped": 5, "user_dropped": 6, "id_sequence": 40},
        1: {"queue_total": 0, "queue_dropped": 0, "user_dropped": 1, "id_sequence": 30},
    }
    facts = DaemonFacts(1700000000.0, 1, "closed", (0, 1), Path("/run/c.sock"))
    doc = build_document(facts, [one, two], {}, rows, 1700000100.0)
    doc["kernel_dropped"] = {"per_source": 995000, "invalid": 3, "deny_cache": 1000}
    if hook_complete is not None:
        doc["hook"] = {"backend": "iptables", "installed": True, "complete": hook_complete,
                       "checked_at": 1700000099.0}  # fmt: skip
    return doc


def scrape(fetch: Any) -> tuple[str, Samples]:
    text = generate_latest(registry_for(fetch)).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def test_the_counters_of_the_status_document_are_exported() -> None:
    _text, samples = scrape(document)
    assert samples[("portguard_status_ok", ())] == 1
    for verdict, value in (("allow", 3), ("reject", 7), ("log", 0), ("drop", 0)):
        assert samples[("portguard_decisions_total", (("verdict", verdict),))] == value
    assert samples[("portguard_rule_hits_total", (("rule", "smarthost"),))] == 5
    assert samples[("portguard_rule_hits_total", (("rule", "block-25"),))] == 5
    assert samples[("portguard_rule_hits_total", (("rule", "default"),))] == 0
    assert samples[("portguard_recent_drops", ())] == 11
    assert samples[("portguard_queue_length", (("queue", "0"),))] == 2
    assert samples[("portguard_queue_dropped_total", (("kind", "queue"), ("queue", "0")))] == 5
    assert samples[("portguard_queue_dropped_total", (("kind", "user"), ("queue", "0")))] == 6
    assert samples[("portguard_queue_dropped_total", (("kind", "user"), ("queue", "1")))] == 1
    assert samples[("portguard_log_events_written_total", (("sink", "file"),))] == 17
    assert samples[("portguard_log_events_dropped_total", (("sink", "syslog"),))] == 2
    assert samples[("portguard_log_handoff_dropped_total", ())] == 4
    assert samples[("portguard_flow_end_lost_total", ())] == 6
    assert samples[("portguard_policy_info", (("version", "v1"),))] == 1
    assert samples[("portguard_policy_loaded_timestamp_seconds", ())] == 1700000000.5
    assert samples[("portguard_uptime_seconds", ())] == 100
    assert samples[("portguard_hook_complete", ())] == 1
    assert samples[("portguard_malformed_packets_total", ())] == 2
    assert samples[("portguard_kernel_dropped_total", (("reason", "deny_cache"),))] == 1000
    assert samples[("portguard_deny_cache_keys", ())] == 21


def test_every_listed_metric_is_exported_and_nothing_else() -> None:
    _text, samples = scrape(document)
    exported = {name for name, _labels in samples}
    assert exported == set(METRIC_NAMES)


def test_a_hook_not_checked_yet_has_no_sample_and_a_broken_one_is_zero() -> None:
    _text, samples = scrape(lambda: document(hook_complete=None))
    assert ("portguard_hook_complete", ()) not in samples
    _text, samples = scrape(lambda: document(hook_complete=False))
    assert samples[("portguard_hook_complete", ())] == 0


@pytest.mark.parametrize("failure", [TimeoutError("timed out"), ValueError("garbled")])
def test_a_daemon_that_does_not_answer_scrapes_as_not_ok(failure: Exception) -> None:
    def fetch() -> dict[str, Any]:
        raise failure

    _text, samples = scrape(fetch)
    assert samples == {("portguard_status_ok", ()): 0}
    _text, samples = scrape(lambda: {"ok": False, "errors": ["status failed"]})
    assert samples == {("portguard_status_ok", ()): 0}


# --- [metrics] in the config -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("", None),
        ('[metrics]\nlisten = "127.0.0.1:9477"\n', ("127.0.0.1", 9477)),
        ('[metrics]\nlisten = "[::1]:9477"\n', ("::1", 9477)),
        ('[metrics]\nlisten = "0.0.0.0:80"\n', ("0.0.0.0", 80)),
        ("[metrics]\n", None),
    ],
)
def test_metrics_listen_address(text: str, address: tuple[str, int] | None) -> None:
    assert parse_config(text, CONFIG).metrics.address == address


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"localhost:9477"', '2:1: listen: "localhost" is not an IP address'),
        ('"127.0.0.1"', '2:1: listen: "127.0.0.1" is not of the form address:port'),
        ('"::1:9477"', '2:1: listen: "::1:9477" is not of the form address:port'),
        ('"[127.0.0.1]:9477"', '2:1: listen: "[127.0.0.1]": brackets are for IPv6'),
        ('"127.0.0.1:0"', "2:1: listen: port 0 is out of range 1-65535"),
        ('"127.0.0.1:65536"', "2:1: listen: port 65536 is out of range 1-65535"),
        ("9477", "2:1: listen: must be a string, not an integer"),
    ],
)
def test_a_bad_listen_address_is_reported_at_its_line(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f"[metrics]\nlisten = {value}\n", CONFIG)
    assert len(raised.value.messages) == 1
    assert raised.value.messages[0].startswith(f"{CONFIG}:{message}")


def test_an_unknown_metrics_key_is_an_error() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config("[metrics]\nport = 9477\n", CONFIG)
    assert "unknown key 'port'" in raised.value.messages[0]


# --- the Grafana dashboard -------------------------------------------------------------------


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # inside collapsed rows
    return found


def test_the_dashboard_queries_only_metrics_the_collector_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    _text, samples = scrape(document)
    exported = {name for name, _labels in samples}
    queries = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    assert len(queries) > 10
    used = {name for query in queries for name in re.findall(r"portguard_[a-z_]+", query)}
    assert used and used <= exported, used - exported
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel.get("targets"), panel["title"]


def test_the_dashboard_is_a_grafana_dashboard_with_the_promised_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    exprs = " ".join(t["expr"] for p in panels(dashboard) for t in p.get("targets", []))
    for wanted in (
        "sum by (verdict) (rate(portguard_decisions_total",
        "sum by (rule) (increase(portguard_rule_hits_total",
        "rate(portguard_queue_dropped_total",
        "rate(portguard_log_events_dropped_total",
        "portguard_recent_drops",
    ):
        assert wanted in exprs, wanted
