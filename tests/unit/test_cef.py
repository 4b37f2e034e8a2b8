"""CEF: exact lines for a decision, a lifecycle event and a flow end, bytes in and out, and
escaping that round-trips."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from portguard.core.events.flood import DenyAggregator, summary
from portguard.core.events.record import lifecycle_event
from portguard.core.policy.model import Action, Direction
from portguard.log.cef import cef_header_escape, cef_value_escape
from portguard.log.formats import render
from tests.events import NOW, OBSERVER, V6, alerted, decided, flow_end, parse_cef, quarantined

# --- CEF ------------------------------------------------------------------------------------


def test_cef_reject_decision_exactly() -> None:
    assert render(decided(), "cef") == (
        b"CEF:0|portguard|portguard|0.1.0|reject|SMTP-port connection rejected|5|"
        b"rt=1795798800123 dvchost=gw1 src=100.64.10.10 spt=40312 dst=198.51.100.25 dpt=25 "
        b"proto=TCP act=reject deviceDirection=1 cs1Label=ruleId cs1=block-25 "
        b"cs2Label=ruleset cs2=10-isp.toml cs3Label=communityId "
        b"cs3=1:OdycsWwxvNC2HezuIzlUEha8Xqw\\= cs4Label=policyVersion cs4=v1 externalId=2a "
        b"msg=matched rule"
    )


def test_cef_lifecycle_exactly() -> None:
    event = lifecycle_event("reload-failed", "rules|bad", OBSERVER, NOW, policy_version="a")
    assert render(event, "cef") == (
        b"CEF:0|portguard|portguard|0.1.0|reload-failed|rules\\|bad|7|"
        b"rt=1795798800123 dvchost=gw1 outcome=failure cs4Label=policyVersion cs4=a "
        b"msg=rules|bad"
    )


def test_cef_summary_direction_and_ipv6() -> None:
    event = summary(decided(Action.DROP, V6), "2026-11-27T16:59:00.000000Z", 12)
    event["network"]["direction"] = "inbound"
    fields = parse_cef(render(event, "cef").decode())
    assert fields["header"][4:7] == ["drop", "SMTP-port connection dropped", "5"]
    ext = fields["extension"]
    assert (ext["src"], ext["deviceDirection"]) == ("2001:db8:64:10::10", "0")
    assert (ext["cnt"], ext["start"], ext["end"]) == ("12", "1795798740000", "1795798800123")
    event["network"]["direction"] = "internal"
    assert "deviceDirection" not in parse_cef(render(event, "cef").decode())["extension"]


def test_cef_summary_counts_distinct_destinations_and_samples() -> None:
    floods = DenyAggregator(60.0)
    for n in range(3):
        event = decided()
        floods.admit({**event, "destination": {"ip": f"198.51.100.{25 + n}", "port": 25}}, NOW)
    [summary_event] = floods.flush_all()
    ext = parse_cef(render(summary_event, "cef").decode())["extension"]
    assert (ext["cnt"], ext["cn1Label"], ext["cn1"]) == ("3", "distinctDestinations", "3")
    assert (ext["cs5Label"], ext["cs5"]) == (
        "samples", "198.51.100.25:25,198.51.100.26:25,198.51.100.27:25")  # fmt: skip
    assert "cn1" not in parse_cef(render(decided(), "cef").decode())["extension"]


def test_cef_flow_end_exactly() -> None:
    assert render(flow_end(), "cef") == (
        b"CEF:0|portguard|portguard|0.1.0|flow-end|connection ended|1|"
        b"rt=1795798800123 dvchost=gw1 src=100.64.10.10 spt=40312 dst=198.51.100.25 dpt=25 "
        b"proto=TCP deviceDirection=1 in=4321 out=876 start=1795798740000 end=1795798801501 "
        b"cs1Label=ruleId cs1=smarthost cs2Label=ruleset cs2=10-isp.toml "
        b"cs3Label=communityId cs3=1:OdycsWwxvNC2HezuIzlUEha8Xqw\\= "
        b"cs4Label=policyVersion cs4=v7 externalId=2a"
    )


def test_cef_flow_end_without_rule_counters_or_times() -> None:
    event = flow_end(None, False, None, None, Direction.INBOUND)
    assert render(event, "cef") == (
        b"CEF:0|portguard|portguard|0.1.0|flow-end|connection ended|1|"
        b"rt=1795798800123 dvchost=gw1 src=100.64.10.10 spt=40312 dst=198.51.100.25 dpt=25 "
        b"proto=TCP deviceDirection=0 cs3Label=communityId cs3=1:OdycsWwxvNC2HezuIzlUEha8Xqw\\="
    )


def test_cef_flow_end_with_a_start_but_no_end_and_no_direction() -> None:
    extension = parse_cef(render(flow_end(stop_ns=None), "cef").decode())["extension"]
    assert extension["start"] == "1795798740000" and "end" not in extension
    extension = parse_cef(render(flow_end(direction=Direction.INTERNAL), "cef").decode())[
        "extension"
    ]
    assert "deviceDirection" not in extension and "cnt" not in extension


# CEF's bytesIn ("in") is data flowing from source to destination, bytesOut ("out") from
# destination to source; Elastic's decode_cef processor (x-pack/filebeat/processors/
# decode_cef/keys.ecs.go) maps them back to ECS accordingly.
CEF_TO_ECS = {"in": ("source", "bytes"), "out": ("destination", "bytes")}


def test_cef_bytes_in_and_out_map_back_to_the_ecs_counters() -> None:
    event = flow_end()
    extension = parse_cef(render(event, "cef").decode())["extension"]
    for key, (ecs_object, field) in CEF_TO_ECS.items():
        assert int(extension[key]) == event[ecs_object][field], key
    assert extension["in"] != extension["out"]


def test_cef_value_escapes() -> None:
    assert cef_value_escape("a=b\\c\nd\re|f") == "a\\=b\\\\c\\nd\\re|f"
    assert cef_header_escape("a|b\\c\nd=e") == "a\\|b\\\\c d=e"


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@given(reason=TEXT, description=TEXT.filter(lambda s: "\n" not in s and "\r" not in s))
def test_cef_escaping_round_trips(reason: str, description: str) -> None:
    event = lifecycle_event("reload", description, OBSERVER, NOW)
    event["message"] = description
    parsed = parse_cef(render(event, "cef").decode())
    assert parsed["header"][5] == description
    decision = decided()
    decision["portguard"]["reason"] = reason
    decision["rule"] = {**decision["rule"], "ruleset": description}  # parts are shared: replace
    line = render(decision, "cef").decode()
    assert "\n" not in line and "\r" not in line
    extension = parse_cef(line)["extension"]
    assert extension.get("msg", "") == reason  # empty values are left out
    assert extension.get("cs2", "") == description
    assert extension["cs1"] == "block-25"


def test_cef_alert_exactly() -> None:
    assert render(alerted(), "cef") == (
        b"CEF:0|portguard|portguard|0.1.0|fanout-detected|fan-out detected|7|"
        b"rt=1795798800123 dvchost=gw1 src=100.64.10.10 act=alert cnt=4 start=1795798740123 "
        b"end=1795798800123 cs1Label=ruleId cs1=fanout cs2Label=ruleset cs2=20-detect.toml "
        b"cs5Label=samples cs5=198.51.100.25,198.51.100.26,198.51.100.27 "
        b"msg=100.64.10.10 tried 3 distinct destinations on port 25 within 600 s "
        b"(detector fanout)"
    )


def test_cef_quarantine_change_names_the_source() -> None:
    fields = parse_cef(render(quarantined("quarantine-released"), "cef").decode())
    assert fields["extension"]["src"] == "100.64.10.10"
    assert fields["header"][4] == "quarantine-released"
