"""A periodic job of the loop: run when due, then `interval` seconds after that run."""

from __future__ import annotations

from portguard.service.periodic import Periodic


def test_a_job_runs_when_due_and_then_an_interval_after_it_ran() -> None:
    runs: list[int] = []
    job = Periodic(30.0, lambda: runs.append(1), due=130.0)
    job.run_if_due(129.9)
    assert runs == [] and job.due == 130.0
    job.run_if_due(135.0)  # late: the next run counts from this one
    assert runs == [1] and job.due == 165.0
    job.run_if_due(140.0)
    assert runs == [1]
