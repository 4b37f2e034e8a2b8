"""The ECS event the formats start from: its line, the Community ID, timestamps in ms and
the dataset that selects the OCSF and CEF mapping."""

from __future__ import annotations

import orjson

from portguard.core.events.record import lifecycle_event
from portguard.log.ecs import dataset, epoch_ms, with_community_id
from portguard.log.formats import render
from portguard.log.sinks import render_line
from tests.events import COMMUNITY_ID, NOW, OBSERVER, decided, flow_end

# --- ECS ------------------------------------------------------------------------------------


def test_ecs_is_the_json_line_the_sinks_always_wrote() -> None:
    event = decided()  # a decision's event carries its Community ID from the start
    assert event["network"]["community_id"] == COMMUNITY_ID
    network = {k: v for k, v in event["network"].items() if k != "community_id"}
    bare = {**event, "network": network}  # an event built without it gets it at rendering
    line = render(bare, "ecs")
    assert line == render_line(event) == render(event, "ecs")
    assert orjson.loads(line)["network"]["community_id"] == COMMUNITY_ID
    assert "community_id" not in bare["network"]  # the caller's event is not changed


def test_community_id_only_for_events_with_both_ends() -> None:
    lifecycle = lifecycle_event("start", "started", OBSERVER, NOW)
    assert with_community_id(lifecycle) is lifecycle
    assert with_community_id(decided())["network"]["community_id"] == COMMUNITY_ID


def test_epoch_ms_truncates_microseconds() -> None:
    assert epoch_ms("2026-11-27T17:00:00.123999Z") == 1795798800123
    assert epoch_ms("1970-01-01T00:00:00.000000Z") == 0


def test_dataset_of_each_event_kind() -> None:
    assert dataset(decided()) == "portguard.decision"
    assert dataset(flow_end()) == "portguard.flow"
    assert dataset(lifecycle_event("start", "started", OBSERVER, NOW)) == "portguard.lifecycle"
    assert dataset({"event": {"action": "x"}}) == dataset({}) == ""
