"""The opt-in Prometheus endpoint (`[metrics] listen = "127.0.0.1:9477"`).

prometheus-client's HTTP server runs in a thread of the process that serves the control socket.
A scrape asks that socket for the status document (`portguard status --json` gets the very
same), so every counter is read by the thread that owns it — the packet loop or the parent —
and never behind its back; `StatusCollector` turns the document into metric families.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from portguard.service.status import VERDICTS

FETCH_TIMEOUT: Final = 5.0  # seconds a scrape waits for the status (Prometheus waits 10 s)
Fetch = Callable[[], Mapping[str, Any]]

# every metric the collector exports (the Grafana dashboard's test checks its queries use these)
METRIC_NAMES: Final = (
    "portguard_status_ok",
    "portguard_decisions_total",
    "portguard_rule_hits_total",
    "portguard_recent_drops",
    "portguard_packets_total",
    "portguard_packet_errors_total",
    "portguard_malformed_packets_total",
    "portguard_quarantined_sources",
    "portguard_quarantine_refused_total",
    "portguard_alerts_total",
    "portguard_queue_length",
    "portguard_queue_dropped_total",
    "portguard_queue_packets_total",
    "portguard_kernel_dropped_total",
    "portguard_deny_cache_keys",
    "portguard_log_events_written_total",
    "portguard_log_events_dropped_total",
    "portguard_log_handoff_dropped_total",
    "portguard_flow_ends_total",
    "portguard_flow_end_lost_total",
    "portguard_policy_info",
    "portguard_policy_loaded_timestamp_seconds",
    "portguard_uptime_seconds",
    "portguard_workers",
    "portguard_workers_answering",
    "portguard_hook_complete",
)


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, text, value=value)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, text, value=value)


def _detection_metrics(detection: Mapping[str, int]) -> list[Metric]:
    return [
        _gauge("portguard_quarantined_sources", "Sources in quarantine now",
               detection.get("quarantined", 0)),
        _counter("portguard_quarantine_refused", "Connections refused by the quarantine",
                 detection.get("quarantine_refused", 0)),
        _counter("portguard_alerts", "Alerts raised by the detectors",
                 detection.get("alerts", 0)),
    ]  # fmt: skip


def status_metrics(doc: Mapping[str, Any]) -> list[Metric]:
    """The metric families of one status document (pure)."""
    daemon = doc["daemon"]
    metrics: list[Metric] = [
        _gauge("portguard_status_ok", "1: the daemon answered the status request", 1),
        *_decision_metrics(doc),
        _gauge(
            "portguard_recent_drops",
            "Dropped SYNs remembered to recognise their resends",
            doc["recent_drops"],
        ),
        _counter("portguard_packets", "Packets the kernel queued to portguard", doc["packets"]),
        _counter(
            "portguard_packet_errors",
            "Packets whose decision or verdict failed",
            doc["packet_errors"],
        ),
        _counter(
            "portguard_malformed_packets",
            "Queued packets that did not decode",
            doc["malformed_packets"],
        ),
        *_detection_metrics(doc.get("detection") or {}),
        *_queue_metrics(doc["queues"]),
        *_kernel_dropped_metrics(doc.get("kernel_dropped") or {}),
        *_deny_cache_metrics(doc.get("deny_cache")),
        *_log_metrics(doc["log"]),
        *_policy_metrics(doc["policy"]),
        _gauge(
            "portguard_uptime_seconds", "Seconds since the daemon started", daemon["uptime_seconds"]
        ),
        _gauge("portguard_workers", "Worker processes configured", daemon["workers"]),
        _gauge(
            "portguard_workers_answering",
            "Workers that answered this scrape",
            daemon["workers_answering"],
        ),
    ]
    if doc["hook"]["complete"] is not None:  # not checked yet: no sample rather than a guess
        metrics.append(
            _gauge(
                "portguard_hook_complete",
                "1: the hook is installed exactly as portguard installs it",
                int(doc["hook"]["complete"]),
            )
        )
    return metrics


def _decision_metrics(doc: Mapping[str, Any]) -> list[Metric]:
    decisions = CounterMetricFamily(
        "portguard_decisions", "New connections decided, by verdict", labels=["verdict"]
    )
    for verdict in VERDICTS:
        decisions.add_metric([verdict], doc["decisions"][verdict])
    hits = CounterMetricFamily(
        "portguard_rule_hits", "New connections decided by each rule", labels=["rule"]
    )
    for rule in doc["rules"]:
        hits.add_metric([rule["id"]], rule["hits"])
    return [decisions, hits]


def _queue_metrics(queues: list[Mapping[str, Any]]) -> list[Metric]:
    length = GaugeMetricFamily(
        "portguard_queue_length", "Packets waiting in the kernel queue", labels=["queue"]
    )
    dropped = CounterMetricFamily(
        "portguard_queue_dropped",
        "Packets the kernel dropped (or let pass, fail open): queue full or socket buffer full",
        labels=["queue", "kind"],
    )
    queued = CounterMetricFamily(
        "portguard_queue_packets", "Packets queued since the queue was bound", labels=["queue"]
    )
    for queue in queues:
        number = str(queue["queue"])
        length.add_metric([number], queue["waiting"])
        dropped.add_metric([number, "queue"], queue["queue_dropped"])
        dropped.add_metric([number, "user"], queue["user_dropped"])
        queued.add_metric([number], queue["queued_total"])
    return [length, dropped, queued]


def _kernel_dropped_metrics(dropped: Mapping[str, int | None]) -> list[Metric]:
    """What the hook dropped before the queue, by reason; no sample before the first read."""
    family = CounterMetricFamily(
        "portguard_kernel_dropped",
        "Packets the hook dropped in the kernel before the queue: per_source (one source over "
        "its rate), invalid (conntrack INVALID with SYN), deny_cache (SYNs the deny cache "
        "answered with a cached reject or drop)",
        labels=["reason"],
    )
    for reason, count in dropped.items():
        if count is not None:
            family.add_metric([reason], count)
    return [family]


def _deny_cache_metrics(cache: Mapping[str, int] | None) -> list[Metric]:
    """The keys the workers remember in the deny cache; no sample when it is off."""
    if cache is None:
        return []
    text = "Denied (source, destination, port) keys the workers put into the deny cache lately"
    return [_gauge("portguard_deny_cache_keys", text, cache["keys"])]


def _log_metrics(log: Mapping[str, Any]) -> list[Metric]:
    written = CounterMetricFamily(
        "portguard_log_events_written", "Events a log output wrote", labels=["sink"]
    )
    dropped = CounterMetricFamily(
        "portguard_log_events_dropped",
        "Events a log output dropped (slow or down)",
        labels=["sink"],
    )
    for sink in log["sinks"]:
        written.add_metric([str(sink["name"])], sink["written"])
        dropped.add_metric([str(sink["name"])], sink["dropped"])
    return [
        written,
        dropped,
        _counter(
            "portguard_log_handoff_dropped",
            "Events dropped on their way to the log process (its socket was full)",
            log["handoff_dropped"],
        ),
        _counter("portguard_flow_ends", "Flow-end events reported", log["flow_ends"]),
        _counter(
            "portguard_flow_end_lost",
            "Conntrack events the kernel dropped (flows without a flow-end event)",
            log["flow_end_lost"],
        ),
    ]


def _policy_metrics(policy: Mapping[str, Any] | None) -> list[Metric]:
    if policy is None:
        return []
    info = GaugeMetricFamily(
        "portguard_policy_info", "The policy in force (always 1)", labels=["version"]
    )
    info.add_metric([str(policy["version"])], 1)
    loaded = _gauge(
        "portguard_policy_loaded_timestamp_seconds",
        "When the policy in force was loaded (Unix time)",
        policy["loaded_at"],
    )
    return [info, loaded]


class StatusCollector(Collector):
    """Builds the metrics from a fresh status document at each scrape."""

    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch

    def describe(self) -> list[Metric]:
        return []  # nothing to fetch at registration

    def collect(self) -> Iterator[Metric]:
        try:
            doc = self.fetch()
        except (OSError, ValueError):  # the daemon's loop did not answer in time
            yield _gauge("portguard_status_ok", "1: the daemon answered the status request", 0)
            return
        if not doc.get("ok"):
            yield _gauge("portguard_status_ok", "1: the daemon answered the status request", 0)
            return
        yield from status_metrics(doc)


def registry_for(fetch: Fetch) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(fetch))
    return registry


def control_fetch(control_socket: Path, timeout: float = FETCH_TIMEOUT) -> Fetch:
    """A status request on the daemon's control socket."""
    from portguard.service.control import request

    def fetch() -> Mapping[str, Any]:
        return request(control_socket, "status", timeout=timeout)

    return fetch


class MetricsServer:
    """prometheus-client's HTTP server (GET /metrics) in a daemon thread."""

    def __init__(self, host: str, port: int, fetch: Fetch) -> None:
        self.host = host
        self.port = port
        self.registry = registry_for(fetch)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen now (OSError when the address is taken or not on this host)."""
        self._server, self._thread = start_http_server(self.port, self.host, self.registry)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._server = self._thread = None
