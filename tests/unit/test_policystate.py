"""What a policy leaves on disk: the last good resolution, and the hand-over to workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from portguard.core.errors import PolicyError
from portguard.io.policyfiles import load_ruleset
from portguard.service.policystate import (
    RESOLVED_FILE,
    is_handover,
    read_handover,
    remove_handovers,
    save_resolution,
    saved_resolution,
    write_handover,
)

RULES = """
[sets.relays]
hosts = ["relay.isp.test"]

[[rule]]
id = "r"
dst = "relays"
action = "allow"
"""


def resolver(answers: dict[str, list[str]], down: bool = False):  # type: ignore[no-untyped-def]
    def resolve(name: str) -> list[str]:
        if down:
            raise OSError(-3, "Temporary failure in name resolution")  # EAI_AGAIN
        return answers[name]

    return resolve


def test_a_start_during_an_outage_uses_the_saved_addresses(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    state = tmp_path / "state"
    good = load_ruleset([rules], resolve=resolver({"relay.isp.test": ["198.51.100.26"]}))
    assert save_resolution(state, good) and not save_resolution(state, good)  # once
    assert (state / RESOLVED_FILE).stat().st_mode & 0o777 == 0o600
    with pytest.raises(PolicyError):  # without the state: no policy, no hooks
        load_ruleset([rules], resolve=resolver({}, down=True))
    saved = saved_resolution(state)
    assert saved is not None and saved.resolved == {"relay.isp.test": ("198.51.100.26",)}
    started = load_ruleset([rules], resolve=resolver({}, down=True), previous=saved)
    assert started.resolved == good.resolved
    assert any("did not resolve" in w.message for w in started.warnings)


def test_a_garbled_or_missing_state_is_ignored(tmp_path: Path) -> None:
    assert saved_resolution(tmp_path) is None
    (tmp_path / RESOLVED_FILE).write_text("{not json")
    assert saved_resolution(tmp_path) is None
    (tmp_path / RESOLVED_FILE).write_text('{"hosts": {"a.test": [1, 2]}}')
    saved = saved_resolution(tmp_path)
    assert saved is not None and saved.resolved == {}


def test_the_handover_round_trips_and_refuses_files_others_wrote(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    ruleset = load_ruleset([rules], resolve=resolver({"relay.isp.test": ["198.51.100.26"]}))
    path = write_handover(tmp_path, ruleset)
    loaded = read_handover(path)
    assert loaded.version == ruleset.version and loaded.resolved == ruleset.resolved
    os.chmod(path, 0o646)
    with pytest.raises(PolicyError, match="writable by other users"):
        read_handover(path)
    path.write_bytes(b"not a pickle")
    os.chmod(path, 0o600)
    with pytest.raises(PolicyError, match="cannot load"):
        read_handover(path)
    remove_handovers(tmp_path)
    assert not path.exists()


def test_every_build_has_its_own_handover_and_only_those_are_adoptable(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    ruleset = load_ruleset([rules], resolve=resolver({"relay.isp.test": ["198.51.100.26"]}))
    first, second = write_handover(tmp_path, ruleset), write_handover(tmp_path, ruleset)
    assert first != second  # a finished hand-over never removes a newer build's file
    assert is_handover(tmp_path, first) and is_handover(tmp_path, second)
    assert not is_handover(tmp_path, rules)
    assert not is_handover(tmp_path / "sub", tmp_path / "sub" / "x.pickle")
    assert not is_handover(tmp_path, Path("/var/log/portguard") / first.name)
