"""The ECS event every output format starts from: its own line, and what the others read.

Every event is built once as an ECS dict (`record`). ``with_community_id`` adds
``network.community_id`` before any format renders it; ``dataset`` (``event.dataset``) picks
the OCSF and CEF mapping; ``epoch_ms`` turns its timestamps into what those formats carry.
Pure: no clock, no I/O.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

import orjson

from portguard.core.events.communityid import community_id

Event = dict[str, Any]
VENDOR: Final = "portguard"  # vendor and product in OCSF and CEF
FLOW_END_NAME: Final = "connection ended"  # a flow end's name in OCSF and CEF
NS_PER_MS: Final = 1_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ecs_line(event: Event) -> bytes:
    return orjson.dumps(event)


def with_community_id(event: Event) -> Event:
    """The event with ``network.community_id`` when it names both ends of a flow."""
    network = event.get("network")
    if network is None or "community_id" in network:  # a decision's event has it already
        return event
    src, dst = event.get("source"), event.get("destination")
    if src is None or dst is None:
        return event
    if "port" not in src or "port" not in dst:
        return event  # a malformed packet whose TCP ports could not be read
    flow_hash = community_id(src["ip"], dst["ip"], src["port"], dst["port"])
    return {**event, "network": {**network, "community_id": flow_hash}}


def epoch_ms(stamp: str) -> int:
    """An ECS @timestamp ("2026-11-27T17:00:00.123456Z") as milliseconds since the epoch."""
    moment = dt.datetime.fromisoformat(stamp)
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1)


def dataset(event: Event) -> str:
    """The event's ``event.dataset`` ("" when it has none): it selects the OCSF and CEF mapping."""
    return str((event.get("event") or {}).get("dataset", ""))


def flood_aggregate(event: Event) -> dict[str, Any] | None:
    """A flood summary's ``portguard.aggregate`` (count, first, last); None for other events."""
    aggregate = (event.get("portguard") or {}).get("aggregate")
    return aggregate if isinstance(aggregate, dict) else None
