"""The daemon's start without a kernel: the first policy and its `resolve-fallback` event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from portguard.config.model import Config, parse_config
from portguard.core.errors import HOST_KEPT, Problem
from portguard.core.policy import RuleSet
from portguard.core.policy.model import Action, Decision
from portguard.service.daemon import first_policy
from portguard.service.policystate import RESOLVED_FILE

RULES = (
    '[sets.relays]\nhosts = ["relay.example"]\n'
    '[[rule]]\nid = "relay"\ndst = "relays"\naction = "allow"\n'
)


def configured(tmp_path: Path) -> Config:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    text = f'[rules]\npaths = ["{rules}"]\n[daemon]\nstate_dir = "{tmp_path}/state"\n'
    return parse_config(text, tmp_path / "portguard.toml")


def down(name: str) -> list[str]:
    raise OSError(-3, "Temporary failure in name resolution")  # EAI_AGAIN: transient


def test_a_start_during_an_outage_logs_the_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = configured(tmp_path)
    monkeypatch.setattr("portguard.io.policyfiles.resolve_host", lambda name: ["198.51.100.26"])
    good, events = first_policy(config)
    assert events == [] and (tmp_path / "state" / RESOLVED_FILE).exists()
    monkeypatch.setattr("portguard.io.policyfiles.resolve_host", down)
    started, events = first_policy(config)
    assert started.resolved == good.resolved
    [(action, message, extra)] = events
    assert action == "resolve-fallback" and message.startswith("1 host names did not resolve")
    assert extra == {"warnings": [w.format() for w in started.warnings],
                     "policy_version": started.version}  # fmt: skip


def test_the_fallback_event_follows_the_warning_kind_not_its_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = configured(tmp_path)
    where = tmp_path / "rules.toml"
    reworded = Problem(where, 2, 'hosts: "relay.example" keeps 198.51.100.26', 10, HOST_KEPT)
    lookalike = Problem(where, 5, "a comment that did not resolve anything", 1)
    default = Decision(Action.ALLOW, "default", "default", "", "")

    def loaded(paths: Any, previous: RuleSet | None = None) -> RuleSet:
        return RuleSet((), default, "v1", (), warnings=[reworded, lookalike])

    monkeypatch.setattr("portguard.io.policyfiles.load_ruleset", loaded)
    _, events = first_policy(config)
    assert [(action, extra["warnings"]) for action, _, extra in events] == [
        ("resolve-fallback", [reworded.format()])
    ]
