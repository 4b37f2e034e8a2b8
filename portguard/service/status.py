"""The status document: what `portguard status` prints and the metrics endpoint exports.

Each worker reports its own counters as a *section* (`worker_section`): the policy in force,
hits per (rule, verdict), dropped SYNs remembered, packets, its log process's counters. The
process that serves the control socket (the worker itself with `workers = 1`, the parent
otherwise) adds
what only it knows — uptime, fail mode, the hook as the hook watch last saw it, the kernel's
queue counters — and merges the sections into one document (`build_document`, pure).

Everything comes from counters the packet loop keeps anyway: answering never walks a table, so
a status request or a scrape costs the packet loop microseconds (plus one read of
/proc/self/net/netfilter/nfnetlink_queue by the process that answers).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from portguard import __version__
from portguard.config.model import Config
from portguard.core.gate import Gate
from portguard.core.policy import RuleSet
from portguard.io.hooks.backend import COUNTERS
from portguard.io.queuestats import parse_queue_stats
from portguard.service.watchedhook import HookState, WatchedHook

# the process's own view of its network namespace: /proc/net is a link to it, and systemd's
# ProcSubset=pid hides /proc/net but not /proc/self
QUEUE_STATS: Final = Path("/proc/self/net/netfilter/nfnetlink_queue")
VERDICTS: Final = ("allow", "log", "reject", "drop")  # event.action of a decision
Document = dict[str, Any]


class QueueCounters(Protocol):
    """The kernel queue reader's counters (portguard.io.nfqueue.QueueReader)."""

    packets: int
    errors: int
    verdict_errors: int
    batched: bool


class LogCounters(Protocol):
    """The worker's log process (portguard.log.logprocess.LogProcess)."""

    dropped: int  # events the hand-over to the log process dropped, as the worker counts them

    def read_stats(self) -> dict[str, Any]: ...


# --- one worker's section ---------------------------------------------------------------------


def policy_rules(ruleset: RuleSet) -> list[list[str]]:
    """[rule id, action] of each enabled rule in order, then the default."""
    rows = [[rule.id, str(rule.action)] for rule in ruleset.rules]
    return [*rows, [ruleset.default.rule_id, str(ruleset.default.action)]]


def log_section(stats: Mapping[str, Any], handoff_seen: int) -> dict[str, Any]:
    """The log process's last report (`LogProcess.read_stats`), with the worker's own count of
    hand-over drops (the log process hears of those up to a second late)."""
    return {
        "sinks": [dict(sink) for sink in stats.get("sinks", ())],
        "handoff_dropped": max(int(stats.get("handoff_dropped", 0)), handoff_seen),
        "flow_end_lost": int(stats.get("flow_end_lost", 0)),
        "flow_ends": int(stats.get("flow_ends", 0)),
    }


def worker_section(
    gate: Gate,
    queue: int,
    loaded_at: float,
    reader: QueueCounters | None,
    log: LogCounters | None,
    pid: int,
    deny_cache: Mapping[str, int] | None = None,
    fast_path: int | None = None,  # the SYNs its fast path answered (None: off)
) -> dict[str, Any]:
    """One worker's counters, JSON-ready (it crosses the worker's control socket)."""
    return {
        "queue": queue,
        "pid": pid,
        "policy": {
            "version": gate.ruleset.version,
            "loaded_at": loaded_at,
            "rules": policy_rules(gate.ruleset),
        },
        "hits": [[rule, str(action), count] for (rule, action), count in gate.hits.items()],
        "recent_drops": len(gate.recent_drops),
        "malformed": gate.malformed,
        "limit_table_full": dict(gate.limiter.table_full),  # rule -> new sources refused
        "detection": detection_section(gate),
        "packets": reader.packets if reader is not None else 0,
        "queue_reader": "batched" if reader is not None and reader.batched else "per-packet",
        "packet_errors": reader.errors + reader.verdict_errors if reader is not None else 0,
        "log": log_section(log.read_stats(), log.dropped) if log else log_section({}, 0),
        "deny_cache": dict(deny_cache) if deny_cache is not None else None,
        "fast_path": {"answered": fast_path} if fast_path is not None else None,
    }


def worker_row(section: Mapping[str, Any]) -> dict[str, Any]:
    """A worker in the daemon's document: its queue, process, reader and fast path."""
    return {key: section.get(key) for key in ("queue", "pid", "queue_reader", "fast_path")}


def detection_section(gate: Gate) -> dict[str, int]:
    """A worker's detectors and quarantine (docs/status.md)."""
    detection, quarantine = gate.detection, gate.quarantine
    return {"quarantined": len(quarantine), "quarantine_refused": quarantine.refused,
            "quarantine_full": quarantine.full, "alerts": detection.alerts,
            "sources_tracked": detection.tracked, "sources_evicted": detection.evicted}  # fmt: skip


def detection_view(sections: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Summed over the workers, but `quarantined`: every worker holds the whole quarantine
    (merged from the others' files), so the largest table is the count."""
    parts = [s.get("detection") or {} for s in sections]
    view = merged_counts({k: v for k, v in part.items() if k != "quarantined"} for part in parts)
    return {"quarantined": max((int(p.get("quarantined", 0)) for p in parts), default=0), **view}


# --- the whole daemon -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DaemonFacts:
    """What the process serving the control socket knows about the whole daemon."""

    started: float  # time.time() at start
    pid: int
    fail_mode: str
    queues: tuple[int, ...]
    control_socket: Path
    hook: WatchedHook | None = None

    @classmethod
    def of(cls, config: Config, started: float, pid: int, hook: WatchedHook | None) -> DaemonFacts:
        return cls(
            started,
            pid,
            config.queue.fail_mode,
            tuple(config.queue.numbers),
            config.daemon.control_socket,
            hook,
        )


def worker_socket(control: Path, queue: int) -> Path:
    """A forked worker's own control socket, next to the daemon's: `<control>.<queue>`."""
    return control.with_name(f"{control.name}.{queue}")


UNREADABLE: Final[Mapping[str, int]] = {}  # the /proc file is readable by root only


def queue_row(queue: int, row: Mapping[str, int] | None) -> dict[str, Any]:
    """One kernel queue's counters; `row` from parse_queue_stats (None: nothing bound;
    UNREADABLE: the daemon runs unprivileged and cannot read them)."""
    if row is UNREADABLE:
        return {"queue": queue, "bound": None, "unavailable": f"{QUEUE_STATS} is readable by "
                "root only: run `portguard status` as root"}  # fmt: skip
    row = row or {}
    return {
        "queue": queue,
        "bound": bool(row),
        "waiting": row.get("queue_total", 0),  # packets waiting for a verdict now
        "queue_dropped": row.get("queue_dropped", 0),  # the queue was full
        "user_dropped": row.get("user_dropped", 0),  # the socket buffer was full
        "queued_total": row.get("id_sequence", 0),  # packets queued since it was bound
    }


def sum_sinks(groups: Iterable[Iterable[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Sinks of the same name (one per worker) added up, in order of first appearance."""
    merged: dict[str, dict[str, Any]] = {}
    for sinks in groups:
        for sink in sinks:
            total = merged.setdefault(
                str(sink["name"]),
                {"name": sink["name"], "submitted": 0, "written": 0, "dropped": 0},
            )
            for key in ("submitted", "written", "dropped"):
                total[key] += int(sink.get(key, 0))
    return list(merged.values())


def rules_view(rules: Sequence[Sequence[str]], hits: Mapping[tuple[str, str], int]) -> list[Any]:
    """Each rule of the policy with its hits (all verdicts, and per verdict: a limit can turn
    an allow into a reject), then rules a reload removed that still have hits."""
    per_rule: dict[str, dict[str, int]] = {}
    for (rule, verdict), count in sorted(hits.items()):
        per_rule.setdefault(rule, {})[verdict] = count
    known = [rule for rule, _action in rules]
    gone = [(rule, None) for rule in per_rule if rule not in known]
    return [
        {
            "id": rule,
            "action": action,
            "in_policy": action is not None,
            "hits": sum(per_rule.get(rule, {}).values()),
            "verdicts": per_rule.get(rule, {}),
        }
        for rule, action in [*((r, a) for r, a in rules), *gone]
    ]


def policy_view(sections: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The newest policy among the workers; `consistent` is false while they differ."""
    policies = [section["policy"] for section in sections]
    newest = max(policies, key=lambda policy: float(policy["loaded_at"]))
    versions = {str(s["queue"]): str(s["policy"]["version"]) for s in sections}
    return {
        "version": newest["version"],
        "loaded_at": newest["loaded_at"],
        "rules": len(newest["rules"]) - 1,
        "consistent": len(set(versions.values())) == 1,
        "versions": versions,
    }


def hook_view(state: HookState | None, backend: str | None) -> dict[str, Any]:
    if state is None:  # not checked yet (the first check is due a few seconds after start)
        return {"backend": backend, "installed": None, "complete": None, "checked_at": None}
    return {
        "backend": state.backend,
        "installed": state.installed,
        "complete": state.complete,
        "checked_at": state.checked_at,
    }


def kernel_dropped_view(hook: WatchedHook | None) -> dict[str, int | None]:
    """Packets the hook dropped before the queue since start, by reason (COUNTERS); None
    until the hook watch has read them (a few seconds after start)."""
    dropped = hook.dropped if hook is not None else None
    return {name: (dropped or {}).get(name) if dropped is not None else None for name in COUNTERS}


def deny_cache_view(sections: Iterable[Mapping[str, Any]]) -> dict[str, int] | None:
    """The workers' deny-cache counters summed (None: the cache is off): `keys` they remember
    (marked in the generation in force and the one before), `hits` of their logged keys the
    kernel answered, `rotations` (the first worker's)."""
    found = [s["deny_cache"] for s in sections if s.get("deny_cache") is not None]
    if not found:
        return None
    return {"keys": sum(f["keys"] for f in found), "hits": sum(f["hits"] for f in found),
            "rotations": max(f["rotations"] for f in found)}  # fmt: skip


def merged_hits(sections: Iterable[Mapping[str, Any]]) -> Counter[tuple[str, str]]:
    """(rule, verdict) -> decisions, summed over the workers."""
    hits: Counter[tuple[str, str]] = Counter()
    for section in sections:
        for rule, verdict, count in section["hits"]:
            hits[(rule, verdict)] += count
    return hits


def merged_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """name -> count, summed over the workers."""
    total: Counter[str] = Counter()
    for section in counts:
        total.update(section)
    return dict(total)


def daemon_view(facts: DaemonFacts, answering: int, now: float) -> dict[str, Any]:
    return {
        "version": __version__,
        "pid": facts.pid,
        "started_at": facts.started,
        "uptime_seconds": round(max(0.0, now - facts.started), 3),
        "fail_mode": facts.fail_mode,
        "workers": len(facts.queues),
        "workers_answering": answering,
        "control_socket": str(facts.control_socket),
    }


def log_view(
    logs: Sequence[Mapping[str, Any]], extra_sinks: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    sinks = sum_sinks([*(log["sinks"] for log in logs), extra_sinks])
    handoff = sum(log["handoff_dropped"] for log in logs)
    return {
        "sinks": sinks,
        "handoff_dropped": handoff,
        "events_dropped": handoff + sum(int(sink["dropped"]) for sink in sinks),
        "flow_ends": sum(log["flow_ends"] for log in logs),
        "flow_end_lost": sum(log["flow_end_lost"] for log in logs),
    }


def build_document(
    facts: DaemonFacts,
    sections: Sequence[Mapping[str, Any]],
    failures: Mapping[int, str],
    queues: Mapping[int, Mapping[str, int] | None],
    now: float,
    extra_sinks: Sequence[Mapping[str, Any]] = (),
) -> Document:
    """The status document (pure): the workers' sections merged with the daemon's facts.
    `failures` are the workers that did not answer (queue -> why)."""
    hits = merged_hits(sections)
    verdicts = Counter[str]()
    for (_rule, verdict), count in hits.items():
        verdicts[verdict] += count
    newest = max(sections, key=lambda s: float(s["policy"]["loaded_at"]), default=None)
    hook = facts.hook
    return {
        "ok": True,
        "daemon": daemon_view(facts, len(sections), now),
        "errors": [f"worker on queue {q} did not answer: {why}" for q, why in failures.items()],
        "policy": policy_view(sections) if sections else None,
        "hook": hook_view(hook.last, hook.name) if hook else hook_view(None, None),
        "decisions": {**{v: verdicts[v] for v in VERDICTS}, "total": sum(verdicts.values())},
        "rules": rules_view(newest["policy"]["rules"] if newest else [], hits),
        **{key: sum(int(s[field]) for s in sections) for key, field in _SUMMED},
        "queues": [queue_row(queue, queues.get(queue)) for queue in facts.queues],
        "log": log_view([section["log"] for section in sections], extra_sinks),
        "kernel_dropped": kernel_dropped_view(hook),
        "deny_cache": deny_cache_view(sections),
        "limit_table_full": merged_counts(s.get("limit_table_full", {}) for s in sections),
        "detection": detection_view(sections),
        "workers": [worker_row(s) for s in sections],
    }


_SUMMED = (
    ("recent_drops", "recent_drops"),
    ("packets", "packets"),
    ("packet_errors", "packet_errors"),
    ("malformed_packets", "malformed"),
)


def read_queue_rows(
    queues: Iterable[int], path: Path = QUEUE_STATS
) -> dict[int, Mapping[str, int] | None]:
    """The kernel's counters for each queue (one read of the /proc file)."""
    try:
        text = path.read_text()
    except PermissionError:  # 0440 root: an unprivileged daemon cannot read it
        return {queue: UNREADABLE for queue in queues}
    except OSError:  # nfnetlink_queue not loaded: nothing is bound
        text = ""
    return {queue: parse_queue_stats(text, queue) for queue in queues}


def collect(
    facts: DaemonFacts,
    sections: Sequence[Mapping[str, Any]],
    failures: Mapping[int, str] | None = None,
    extra_sinks: Sequence[Mapping[str, Any]] = (),
) -> Document:
    """The status document now: the sections plus the kernel's queue counters."""
    rows = read_queue_rows(facts.queues)
    return build_document(facts, sections, failures or {}, rows, time.time(), extra_sinks)


def fill_queue_counters(document: Document, path: Path = QUEUE_STATS) -> Document:
    """In `portguard status` (run as root, in the daemon's namespace): the queue counters an
    unprivileged daemon could not read itself."""
    queues = document.get("queues") or []
    missing = [row["queue"] for row in queues if row.get("bound") is None]
    if missing:
        rows = read_queue_rows(missing, path)
        document["queues"] = [
            queue_row(row["queue"], rows[row["queue"]]) if row["queue"] in rows else row
            for row in queues
        ]
    return document


Ask = Callable[[Path], dict[str, Any]]  # one status request to a worker's socket


def gather(facts: DaemonFacts, ask: Ask) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Each forked worker's section through its own socket; (sections, failures)."""
    sections: list[dict[str, Any]] = []
    failures: dict[int, str] = {}
    for queue in facts.queues:
        try:
            answer = ask(worker_socket(facts.control_socket, queue))
        except (OSError, ValueError) as error:
            failures[queue] = str(error) or type(error).__name__
            continue
        if isinstance(answer.get("worker"), dict):
            sections.append(answer["worker"])
        else:
            failures[queue] = f"unexpected answer {answer!r:.200}"
    return sections, failures
