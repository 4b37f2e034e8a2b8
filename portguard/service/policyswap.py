"""A worker's side of a reload: swap in the policy the load built, or keep the old one and
say why (worker.py's `Worker` takes these methods; they read and set only its policy state)."""

from __future__ import annotations

import time
from typing import Any

from portguard.core.gate import Gate
from portguard.core.policy import RuleSet
from portguard.io import notify
from portguard.service.denycache import NoCache, WorkerCache
from portguard.service.policyload import LoadResult, PolicyLoad, capped, same_files, same_resolution
from portguard.service.reevaluate import Reevaluator


class PolicySwap:
    """Applying finished loads: the policy in force, its load time, the deny cache's rotation
    and the re-evaluation of connections follow every swap."""

    gate: Gate
    cache: WorkerCache | NoCache
    loads: PolicyLoad
    policy_loaded: float
    reevaluator: Reevaluator | None

    def _log(self, action: str, message: str, **extra: object) -> None:
        raise NotImplementedError

    def apply_load(self, result: LoadResult) -> None:
        """Swap in a freshly built policy, or keep the old one and say why."""
        old, new = self.gate.ruleset, result.ruleset
        if new is None:
            answer = self._refuse(old, result)
        elif new is old:  # forked: an earlier load already took the newest hand-over
            answer = {"ok": True, "policy_version": old.version, "rules": len(old.rules)}
        else:
            for warning in new.warnings:  # e.g. a host name that failed keeps its addresses
                self._log("reload-warning", warning.format(), policy_version=new.version)
            if result.reason == "resolve":
                self._apply_resolved(old, new)
                answer = {"ok": True, "policy_version": self.gate.ruleset.version}
            else:
                self._swap(old, new, result.reason)
                answer = {"ok": True, "policy_version": new.version, "rules": len(new.rules)}
        for reply in result.replies:
            reply(answer)

    def _resolve_hosts(self) -> None:
        if self.gate.ruleset.has_hosts:  # re-resolve the host names of the sets
            self.loads.request(reason="resolve")

    def _refuse(self, old: RuleSet, result: LoadResult) -> dict[str, Any]:
        errors = capped(result.errors)
        self._log("reload-failed", "reload failed; the previous policy stays in force",
                  errors=errors, policy_version=old.version, trigger=result.reason)  # fmt: skip
        notify.ready(f"reload failed; policy {old.version} kept")
        return {"ok": False, "errors": errors, "policy_version": old.version}

    def _apply_resolved(self, old: RuleSet, new: RuleSet) -> None:
        """A timed re-resolution applies only new addresses, never unreviewed file edits."""
        if not same_files(old, new):
            self._log("reload-warning", "rule files changed on disk since the last reload; "
                      "host names are re-resolved once `portguard reload` takes them",
                      policy_version=old.version)  # fmt: skip
        elif same_resolution(old, new):
            self.gate.ruleset = new  # nothing changed that a rule could see
        else:
            self._swap(old, new, "resolve")

    def _swap(self, old: RuleSet, new: RuleSet, trigger: str) -> None:
        self.gate.ruleset = new
        self.cache.request()  # (the first worker) no cached deny of the old policy answers
        self.policy_loaded = time.time()
        self._log("reload", "policy reloaded", policy_version=new.version,
                  previous_version=old.version, trigger=trigger)  # fmt: skip
        notify.ready(f"policy {new.version}")
        if self.reevaluator is not None:
            self.reevaluator.request(new)
