"""The watched hook: the last full check, and the kernel's drops added up and reported."""

from __future__ import annotations

from typing import Any

from portguard.io.hooks.backend import HookSpec, HookStatus
from portguard.service.watchedhook import DropReport, DropTotals, WatchedHook

SPEC = HookSpec(queue_num=0, workers=2, ports=(25,), chains=("forward",), fail_open=False)


class Backend:
    """A hook backend that reports a fixed status."""

    name = "iptables"

    def __init__(self, status: HookStatus) -> None:
        self.result = status

    def render(self, spec: HookSpec) -> str:
        return ""

    def install(self, spec: HookSpec) -> None:
        pass

    def remove(self) -> None:
        pass

    def status(self, spec: HookSpec | None = None) -> HookStatus:
        return self.result


def test_drop_totals_survive_a_reinstall_that_restarts_the_counters() -> None:
    totals = DropTotals()
    assert totals.update({"per_source": 100, "invalid": 1}) == {"per_source": 100, "invalid": 1}
    assert totals.update({"per_source": 150, "invalid": 1}) == {"per_source": 150, "invalid": 1}
    # a repair reinstalled the hook: the kernel counts from 0 again
    assert totals.update({"per_source": 20, "invalid": 0}) == {"per_source": 170, "invalid": 1}


def test_drop_report_at_once_then_at_most_once_a_minute_and_only_on_change() -> None:
    report = DropReport(interval=60.0)
    assert report.due({"per_source": 0, "invalid": 0}, 0.0) is None  # nothing dropped
    assert report.due({"per_source": 5, "invalid": 0}, 1.0) == {"per_source": 5, "invalid": 0}
    assert report.due({"per_source": 9, "invalid": 0}, 30.0) is None  # too soon
    assert report.due({"per_source": 9, "invalid": 2}, 61.0) == {"per_source": 4, "invalid": 2}
    assert report.due({"per_source": 9, "invalid": 2}, 200.0) is None  # unchanged


def test_watched_hook_reports_kernel_drops_as_lifecycle_events() -> None:
    counters = {"per_source": 995000, "invalid": 3}
    status = HookStatus("iptables", True, True, "ok", 1, counters)
    hook, events = WatchedHook(Backend(status), clock=lambda: 100.0), list[Any]()
    hook.report_drops_to(events.append, lambda action, message, **fields: (action, fields))
    assert hook.dropped is None  # not read yet
    hook.status()  # without the spec: not a full check, nothing read
    assert hook.dropped is None and hook.last is None
    hook.status(SPEC)
    hook.status(SPEC)
    assert events == [("prequeue-dropped", {"dropped": counters, "dropped_total": counters})]
    assert hook.dropped == counters
    assert hook.last is not None and hook.last.complete and hook.last.checked_at == 100.0
