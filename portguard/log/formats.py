"""Output formats of the decision log: ECS JSON, OCSF JSON and ArcSight CEF (chosen per sink).

Every event is built once as an ECS dict (`record`); a sink renders it in its format here, as
the bytes of one line without the newline. Pure: no clock, no I/O.

- ``ecs``: the ECS event as JSON (orjson), with ``network.community_id`` added (`ecs`).
- ``ocsf``: OCSF 1.1.0. Decisions and flow ends are Network Activity (class 4001) with the
  security_control profile; lifecycle events are Application Lifecycle (class 6002) (`ocsf`).
- ``cef``: ``CEF:0|portguard|portguard|version|signature|name|severity|extension`` (`cef`).

The mapping is chosen by ``event.dataset``: ``portguard.decision`` (decisions, flood summaries,
connections ended after a reload, malformed packets), ``portguard.flow`` (flow ends) and
``portguard.lifecycle``; an event of any other dataset is rendered like a lifecycle event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from portguard.core.events.lines import LogItem, RenderedEvent, as_event
from portguard.log.cef import cef_line
from portguard.log.ecs import ecs_line, with_community_id
from portguard.log.ocsf import ocsf_line

FORMATS: Final = ("ecs", "ocsf", "cef")


Renderer = Callable[[LogItem], bytes]


def renderer(fmt: str) -> Renderer:
    """The one function that renders format ``fmt`` ("ecs", "ocsf" or "cef") for every output
    (stdout, file, syslog): a prepared event (its Community ID added, `sinks.prepare`) in, the
    bytes of one line out. A rendered event (`core/events/lines.py`) is its own ECS line; the
    other formats build its dict first."""
    render_format = _RENDERERS.get(fmt)
    if render_format is None:
        raise ValueError(f"unknown log format {fmt!r} (known: {', '.join(FORMATS)})")
    return render_format


def render(event: LogItem, fmt: str) -> bytes:
    """One event, prepared or not, as the bytes of one line of format ``fmt``."""
    if isinstance(event, RenderedEvent):
        return renderer(fmt)(event)
    return renderer(fmt)(with_community_id(event))


def _ecs(event: LogItem) -> bytes:
    return event.line if isinstance(event, RenderedEvent) else ecs_line(event)


def _ocsf(event: LogItem) -> bytes:
    return ocsf_line(as_event(event))


def _cef(event: LogItem) -> bytes:
    return cef_line(as_event(event))


_RENDERERS: dict[str, Renderer] = {
    "ecs": _ecs,
    "ocsf": _ocsf,
    "cef": _cef,
}
