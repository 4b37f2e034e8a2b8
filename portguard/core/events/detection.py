"""ECS events of detection: a detector's alert, and the quarantine's changes (pure).

An alert (`event.kind` "alert", dataset ``portguard.alert``) names the source, the detector
(`rule.*`) and what it counted (`portguard.detection`). A quarantine change (added by a
detector or by hand, released, expired) is a lifecycle event with the source in `source.ip`
(an IPv6 source is quarantined by its /64: `source.ip` is the /64's first address and
`portguard.quarantine.source` the /64).
"""

from __future__ import annotations

from typing import Any

from portguard.core.detect.fanout import Alert
from portguard.core.detect.quarantine import Entry
from portguard.core.events.record import (
    ECS_VERSION,
    Event,
    Observer,
    address_text,
    lifecycle_event,
    timestamp,
)

ALERT_DATASET = "portguard.alert"
QUARANTINE_ACTIONS = ("quarantine-added", "quarantine-released", "quarantine-expired")


def alert_event(alert: Alert, observer: Observer, now: float) -> Event:
    """A detector's alert as an ECS alert event (docs/logging.md, "Alert event")."""
    detector, version = alert.detector, alert.version
    source = address_text(version, alert.src)
    samples = [address_text(version, dst) for dst in alert.samples]
    message = (
        f"{source} tried {alert.distinct} distinct destinations on port "
        f"{detector.dport.label} within {detector.window} s (detector {detector.name})"
    )
    return {
        "@timestamp": timestamp(now),
        "ecs": {"version": ECS_VERSION},
        "log": {"level": "warning"},
        "message": message,
        "event": {
            "kind": "alert",
            "category": ["intrusion_detection", "network"],
            "type": ["info"],
            "action": f"{detector.name}-detected",
            "outcome": "unknown",
            "dataset": ALERT_DATASET,
            "start": timestamp(alert.first),
            "end": timestamp(alert.last),
        },
        "rule": {
            "id": detector.name,
            "ruleset": detector.ruleset,
            "description": detector.describe(),
        },
        "source": {"ip": source},
        "related": {"ip": [source, *samples]},
        "observer": observer.fields(),
        "portguard": {
            "detection": {
                "distinct": alert.distinct,
                "attempts": alert.attempts,
                "samples": samples,
                "window": detector.window,
                "action": detector.action,
            }
        },
    }


def quarantine_event(
    action: str, found: Entry, observer: Observer, now: float, by: str, **extra: Any
) -> Event:
    """A quarantine change (`action` one of QUARANTINE_ACTIONS); `by`: "detector",
    "control" (portguard quarantine add/release) or "expiry"."""
    verbs = {"quarantine-added": "quarantined", "quarantine-released": "released from quarantine",
             "quarantine-expired": "out of quarantine (expired)"}  # fmt: skip
    message = f"{found.source} {verbs.get(action, action)}"
    if action == "quarantine-added":
        message += f" until {timestamp(found.until)} by {found.detector}"
    details = {
        "source": found.source,
        "detector": found.detector,
        "until": timestamp(found.until),
        "ports": sorted(found.ports),
        "by": by,
    }
    event = lifecycle_event(action, message, observer, now, quarantine=details, **extra)
    event["source"] = {"ip": found.source.removesuffix("/64")}
    event["rule"] = {"id": f"quarantine:{found.detector}", "ruleset": "quarantine"}
    return event
