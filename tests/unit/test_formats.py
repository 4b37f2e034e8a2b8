"""Output formats: the choice of format, of mapping by event.dataset, and each sink writing
its format (ECS, OCSF and CEF in detail: test_ecs, test_ocsf, test_cef)."""

from __future__ import annotations

import io
import socket

import orjson
import pytest

from portguard.core.events.flowend import Counters, EndedFlow
from portguard.core.events.lines import LineRenderer
from portguard.core.events.record import decision_record, lifecycle_event
from portguard.core.policy.model import Action, Decision, Direction
from portguard.log.formats import render
from portguard.log.sinks import Sink, prepare, render_line, severity
from portguard.log.syslog import SyslogSink, syslog_header
from tests.events import (
    NOW,
    OBSERVER,
    ORIGIN,
    START_NS,
    STOP_NS,
    V4,
    decided,
    flow_end,
    ocsf,
    parse_cef,
)


def test_unknown_format_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown log format 'gelf'"):
        render(decided(), "gelf")


# --- the mapping follows event.dataset -------------------------------------------------------


def test_a_rule_does_not_make_an_event_a_decision() -> None:
    lifecycle = lifecycle_event("reload", "reloaded", OBSERVER, NOW)
    lifecycle["rule"] = {"id": "block-25", "ruleset": "10-isp.toml"}
    assert ocsf(lifecycle)["class_uid"] == 6002
    assert render(lifecycle, "cef").startswith(b"CEF:0|portguard|portguard|0.1.0|reload|")
    for origin in (ORIGIN, None):  # with or without a rule, a flow end is a Close
        assert ocsf(flow_end(origin))["activity_id"] == 2
        assert parse_cef(render(flow_end(origin), "cef").decode())["header"][4] == "flow-end"


@pytest.mark.parametrize("name", ["portguard.other", None])
def test_an_unknown_dataset_is_rendered_like_a_lifecycle_event(name: str | None) -> None:
    event = lifecycle_event("sink-error", "file sink down", OBSERVER, NOW)
    if name is None:
        del event["event"]["dataset"]
    else:
        event["event"]["dataset"] = name
    event["source"] = {"ip": "100.64.10.10", "port": 40312}  # not a decision for all that
    record = ocsf(event)
    assert (record["class_uid"], record["activity_name"]) == (6002, "sink-error")
    assert record["metadata"].get("log_name") == name
    assert render(event, "cef").startswith(b"CEF:0|portguard|portguard|0.1.0|sink-error|")


# --- the sinks ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["decision", "flow-end"])
@pytest.mark.parametrize("fmt", ["ecs", "ocsf", "cef"])
def test_sink_writes_its_format(fmt: str, kind: str) -> None:
    stream = io.BytesIO()
    event = decided() if kind == "decision" else flow_end()
    Sink("memory", stream, owned=False, fmt=fmt).write(prepare(event))
    written = stream.getvalue()
    assert written.endswith(b"\n") and written.count(b"\n") == 1
    if fmt == "ecs":
        assert orjson.loads(written) == orjson.loads(render_line(event))
    else:
        assert written == render(event, fmt) + b"\n"


def test_sink_with_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown log format"):
        Sink("memory", io.BytesIO(), owned=False, fmt="xml")


@pytest.mark.parametrize("fmt", ["ecs", "ocsf", "cef"])
def test_every_output_writes_the_same_bytes_syslog_adds_its_header(fmt: str) -> None:
    """One renderer per format: stdout, a file and syslog carry the same line."""
    events = [
        prepare(decided()),
        prepare(flow_end()),
        lifecycle_event("start", "up", OBSERVER, NOW),
    ]
    stream = io.BytesIO()
    sink = Sink("file", stream, owned=False, fmt=fmt)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(2)
        syslog = SyslogSink(f"udp://127.0.0.1:{server.getsockname()[1]}", fmt)
        for event in events:
            sink.write(event)
            syslog.write(event)
            header = syslog_header(event, syslog.hostname, syslog.pid)
            assert server.recv(65535) == header + render(event, fmt)
        syslog.close()
    assert stream.getvalue() == b"".join(render(event, fmt) + b"\n" for event in events)


@pytest.mark.parametrize("fmt", ["ecs", "ocsf", "cef"])
def test_a_rendered_event_is_written_as_its_dict_in_every_format(fmt: str) -> None:
    """A decision or flow end rendered from its record (`core/events/lines.py`): its own
    line in ECS, its dict built for the other formats; levels and syslog headers alike."""
    renderer = LineRenderer(OBSERVER)
    decision = Decision(Action.ALLOW, "business-25", "10-isp.toml", "", "matched rule")
    rendered = [
        renderer.decision(decision_record(decision, V4, "2a", Direction.OUTBOUND, "v1", NOW)),
        renderer.flow_end(EndedFlow(*V4, Direction.OUTBOUND, Counters(3, 180),
                                    Counters(2, 120), START_NS, STOP_NS), NOW),
    ]  # fmt: skip
    for item in rendered:
        as_dict = prepare(item.event())
        assert prepare(item) is item
        assert render(item, fmt) == render(as_dict, fmt)
        assert severity(item) == severity(as_dict)
        assert syslog_header(item, "gw", 7) == syslog_header(as_dict, "gw", 7)
        stream = io.BytesIO()
        Sink("memory", stream, owned=False, fmt=fmt).write(item)
        assert stream.getvalue() == render(as_dict, fmt) + b"\n"
