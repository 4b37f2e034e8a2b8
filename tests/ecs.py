"""ECS conformance: an event's fields, types and categorization against the official ECS field
list of the declared ``ecs.version`` (``tests/data/ecs/ecs_flat_<version>.json``, see the README
beside it). Used by tests/unit/test_ecs_schema.py for every event kind and by the replay tests
for every replayed event."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from portguard.core.events.record import ECS_VERSION, Event
from portguard.log.sinks import render_line

ECS_DIR = Path(__file__).resolve().parent / "data" / "ecs"
CUSTOM = "portguard"


@cache
def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ECS_DIR / f"ecs_flat_{ECS_VERSION}.json").read_text())
    return data


def flatten(value: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted field names and their leaf values (lists are leaves: ECS arrays)."""
    for key, item in value.items():
        name = f"{prefix}{key}"
        if isinstance(item, dict) and item:
            yield from flatten(item, f"{name}.")
        else:
            yield name, item


def rendered(event: Event) -> dict[str, Any]:
    """The event as a sink writes it (with network.community_id added)."""
    data: dict[str, Any] = json.loads(render_line(event))
    return data


def fits(kind: str, value: Any) -> bool:
    if kind == "long":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "ip":
        return isinstance(value, str) and bool(ipaddress.ip_address(value))
    if kind == "date":
        return isinstance(value, str) and value.endswith("Z")
    if kind in {"keyword", "match_only_text", "text", "wildcard", "constant_keyword"}:
        return isinstance(value, str)
    return False


def unknown_fields(event: Event) -> list[str]:
    """Fields that are neither ECS fields of the version nor under ``portguard.``."""
    fields = schema()["fields"]
    return [f for f, _ in flatten(event) if f not in fields and not f.startswith(f"{CUSTOM}.")]


def mistyped_fields(event: Event) -> list[tuple[str, Any]]:
    """ECS fields whose value is not of the field's type (or not an array where ECS wants one)."""
    fields = schema()["fields"]
    wrong = []
    for field, value in flatten(event):
        if field in fields:
            spec = fields[field]
            values = value if spec.get("array") else [value]
            if not isinstance(values, list) or not all(fits(spec["type"], v) for v in values):
                wrong.append((field, value))
    return wrong


def categorization_problems(event: Event) -> list[str]:
    """event.kind/category/type/outcome values ECS does not allow, or pairs it does not expect."""
    allowed = schema()["allowed_values"]
    fields = event["event"]
    problems = [f"{name} {fields.get(name)!r}" for name in ("kind", "outcome")
                if fields.get(name) not in allowed[f"event.{name}"]]  # fmt: skip
    if not fields.get("category") or not fields.get("type"):
        problems.append("event.category and event.type must not be empty")
    for category in fields.get("category") or ():
        expected = allowed["event.category"].get(category, ())
        for kind in fields.get("type") or ():
            if kind not in allowed["event.type"] or kind not in expected:
                problems.append(f"type {kind!r} is not expected for category {category!r}")
    return problems


def nonconformities(event: Event) -> list[str]:
    """Everything that keeps an event (as a sink writes it) from conforming; [] conforms."""
    written = rendered(event)
    problems = [f"unknown field {name}" for name in unknown_fields(written)]
    problems += [
        f"{name} has the wrong type: {value!r}" for name, value in mistyped_fields(written)
    ]
    if written.get("ecs", {}).get("version") != ECS_VERSION:
        problems.append("ecs.version is not the declared version")
    return problems + categorization_problems(written)
