"""`portguard status` without --json: the status document (service/status.py) for a terminal."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from portguard.service.status import VERDICTS


def format_status(doc: Mapping[str, Any]) -> list[str]:
    """The status document for a terminal."""
    daemon, decisions = doc["daemon"], doc["decisions"]
    lines = [
        f"portguard {daemon['version']}, pid {daemon['pid']}, up "
        f"{_duration(daemon['uptime_seconds'])} (since {_when(daemon['started_at'])})",
        f"fail mode: {daemon['fail_mode']}; workers: {daemon['workers']} "
        f"({daemon['workers_answering']} answering); control socket: {daemon['control_socket']}",
        *(f"error: {error}" for error in doc["errors"]),
        _hook_line(doc["hook"]),
        _policy_line(doc["policy"]),
        f"decisions: {decisions['total']} ("
        + ", ".join(f"{verdict} {decisions[verdict]}" for verdict in VERDICTS)
        + f"); packets: {doc['packets']}, packet errors: {doc['packet_errors']}, "
        f"malformed: {doc['malformed_packets']}",
        f"dropped SYNs remembered: {doc['recent_drops']}",
        *_detection_line(doc.get("detection") or {}),
        *_table_full_lines(doc.get("limit_table_full", {})),
        *_kernel_dropped_line(doc.get("kernel_dropped") or {}),
        *_deny_cache_line(doc.get("deny_cache"), doc.get("kernel_dropped") or {}),
        *(_queue_line(queue) for queue in doc["queues"]),
        *_log_lines(doc["log"]),
        "",
        *_rule_table(doc["rules"]),
    ]
    return lines


def _detection_line(detection: Mapping[str, int]) -> list[str]:
    """Quarantined sources and alerts (none before the first status of a detecting daemon)."""
    if not detection:
        return []
    return [f"quarantined sources: {detection.get('quarantined', 0)} (refused connections "
            f"{detection.get('quarantine_refused', 0)}); alerts: {detection.get('alerts', 0)}, "
            f"sources tracked: {detection.get('sources_tracked', 0)}, evicted "
            f"{detection.get('sources_evicted', 0)}"]  # fmt: skip


def _table_full_lines(counts: Mapping[str, int]) -> list[str]:
    """Limited rules whose bucket tables were full (new sources got the exceed action)."""
    return [f"limit table full: rule {rule}, {n} new sources refused" for rule, n in counts.items()]


def _kernel_dropped_line(dropped: Mapping[str, int | None]) -> list[str]:
    """What the hook dropped before the queue (none until the hook watch read it)."""
    if not dropped or all(count is None for count in dropped.values()):
        return []
    per_source, invalid = dropped.get("per_source") or 0, dropped.get("invalid") or 0
    return [f"dropped before the queue: {per_source} over the per-source limit, "
            f"{invalid} INVALID with SYN"]  # fmt: skip


def _deny_cache_line(
    cache: Mapping[str, int] | None, dropped: Mapping[str, int | None]
) -> list[str]:
    """The deny cache: SYNs it answered (the hook's counter), the keys it holds lately."""
    if cache is None:
        return []
    answered = dropped.get("deny_cache")
    return [f"deny cache: {'?' if answered is None else answered} SYNs answered by the "
            f"kernel, {cache['keys']} keys lately, {cache['rotations']} rotations"]  # fmt: skip


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value] or ["0s"]
    return " ".join(shown[:2])


def _hook_line(hook: Mapping[str, Any]) -> str:
    if hook["complete"] is None:
        return f"hook: {hook['backend']}, not checked yet"
    state = "complete" if hook["complete"] else "INCOMPLETE" if hook["installed"] else "MISSING"
    return f"hook: {hook['backend']}, {state} (checked {_when(hook['checked_at'])})"


def _policy_line(policy: Mapping[str, Any] | None) -> str:
    if policy is None:
        return "policy: unknown (no worker answered)"
    mixed = "" if policy["consistent"] else f"; workers differ: {policy['versions']}"
    return (
        f"policy: {policy['version']}, {policy['rules']} rules, loaded "
        f"{_when(policy['loaded_at'])}{mixed}"
    )


def _queue_line(queue: Mapping[str, Any]) -> str:
    if queue["bound"] is None:
        return f"queue {queue['queue']}: counters unavailable ({queue.get('unavailable', '')})"
    if not queue["bound"]:
        return f"queue {queue['queue']}: NOT BOUND"
    return (
        f"queue {queue['queue']}: {queue['waiting']} waiting, dropped {queue['queue_dropped']} "
        f"(queue full) + {queue['user_dropped']} (socket full), "
        f"{queue['queued_total']} queued since bound"
    )


def _log_lines(log: Mapping[str, Any]) -> list[str]:
    lines = [
        f"log: {log['events_dropped']} events dropped ({log['handoff_dropped']} at the "
        f"hand-over); flow ends {log['flow_ends']}, lost {log['flow_end_lost']}"
    ]
    for sink in log["sinks"]:
        lines.append(
            f"  {sink['name']}: {sink['written']} written, {sink['dropped']} dropped "
            f"of {sink['submitted']}"
        )
    return lines


def _rule_table(rules: Sequence[Mapping[str, Any]]) -> list[str]:
    names = [rule["id"] + ("" if rule["in_policy"] else " (removed)") for rule in rules]
    width = max([len("RULE"), *map(len, names)])
    lines = [f"{'RULE':<{width}}  {'ACTION':<7} {'HITS':>8}  VERDICTS"]
    for name, rule in zip(names, rules, strict=True):
        verdicts = ", ".join(f"{v} {n}" for v, n in rule["verdicts"].items())
        row = f"{name:<{width}}  {rule['action'] or '-':<7} {rule['hits']:>8}  {verdicts}"
        lines.append(row.rstrip())
    return lines
