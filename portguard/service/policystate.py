"""What a policy leaves on disk: the last good host resolution, and the hand-over to workers.

* ``state_dir/resolved.json``: every host name of the last successfully compiled policy with
  its addresses. A start during a DNS outage compiles the rule files with these addresses
  for the names that do not resolve (a transient failure only, as a reload does), so the
  gateway gets its hooks and the last known mail servers stay reachable. Plain JSON: reading
  it runs no code.
* ``policy-<version>-<pid>-<n>.pickle`` in the run-time directory (next to the control
  socket), one file per build: the compiled policy the supervisor built once, for its forked
  workers to load in their own load thread. Written 0600 by the daemon's user into its own
  0750 directory and read back only when that user owns it and nobody else can write it, and
  only from that directory (pickle runs code on load: it never reads a file someone else
  could have written).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
from pathlib import Path
from typing import Any

import orjson

from portguard.core.errors import PolicyError, Problem
from portguard.core.policy import RuleSet
from portguard.core.policy.model import Action, Decision
from portguard.service.statefile import StateError, read_trusted, write_atomic

RESOLVED_FILE = "resolved.json"
HANDOVER_PREFIX = "policy-"
HANDOVER_SUFFIX = ".pickle"
MAX_HANDOVER = 1024 * 1024 * 1024  # bytes: a compiled policy of 1M CIDRs pickles to ~8 MB
_builds = itertools.count(1)  # every build its own file: one finished hand-over never
# removes the file a later build of the same version has just written


def save_resolution(state_dir: Path, ruleset: RuleSet) -> bool:
    """Keep the host addresses of ``ruleset`` (when it has any); False when nothing changed."""
    if not ruleset.resolved:
        return False
    data = orjson.dumps({"policy_version": ruleset.version, "hosts": ruleset.resolved},
                        option=orjson.OPT_SORT_KEYS)  # fmt: skip
    path = state_dir / RESOLVED_FILE
    with contextlib.suppress(OSError):
        if read_trusted(path) == data:
            return False
    write_atomic(path, data)
    return True


def saved_resolution(state_dir: Path) -> RuleSet | None:
    """A stand-in for the policy in force at start: the saved host addresses only (None when
    nothing was saved or the file cannot be trusted; the start then resolves as usual)."""
    try:
        document = orjson.loads(read_trusted(state_dir / RESOLVED_FILE, own=False))
    except (OSError, orjson.JSONDecodeError):
        return None
    hosts = _hosts(document)
    if hosts is None:
        return None
    default = Decision(Action.ALLOW, "default", "default", "", "")
    version = str(document.get("policy_version", "saved"))
    return RuleSet((), default, version, (), resolved=hosts)


def _hosts(document: Any) -> dict[str, tuple[str, ...]] | None:
    if not isinstance(document, dict) or not isinstance(document.get("hosts"), dict):
        return None
    hosts: dict[str, tuple[str, ...]] = {}
    for name, addresses in document["hosts"].items():
        if isinstance(addresses, list) and all(isinstance(a, str) for a in addresses):
            hosts[str(name)] = tuple(addresses)
    return hosts


def handover_path(directory: Path, version: str) -> Path:
    """A new hand-over file for a build of ``version`` (unique in this process)."""
    safe = "".join(c for c in version if c.isalnum() or c in "-_")
    return directory / f"{HANDOVER_PREFIX}{safe}-{os.getpid()}-{next(_builds)}{HANDOVER_SUFFIX}"


def is_handover(directory: Path, path: Path) -> bool:
    """Whether ``path`` names a hand-over file of ``directory`` (the only files unpickled)."""
    name = path.name
    return (path.parent == directory and name.startswith(HANDOVER_PREFIX)
            and name.endswith(HANDOVER_SUFFIX) and "/" not in name)  # fmt: skip


def write_handover(directory: Path, ruleset: RuleSet) -> Path:
    """The compiled policy, for the workers (in the load thread: ~0.1 s for 1M CIDRs)."""
    path = handover_path(directory, ruleset.version)
    write_atomic(path, pickle.dumps(ruleset, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def read_handover(path: Path) -> RuleSet:
    """The policy the supervisor handed over; a PolicyError saying why it cannot be used."""
    try:
        ruleset = pickle.loads(read_trusted(path, MAX_HANDOVER))
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
        problem = Problem(path, None, f"cannot load the handed-over policy: {error}")
        raise PolicyError([problem]) from None
    if not isinstance(ruleset, RuleSet):
        raise PolicyError([Problem(path, None, "the handed-over file holds no policy")])
    return ruleset


def remove_handovers(directory: Path) -> None:
    """Hand-over files left behind (a crashed run's, at start; at the end of a run)."""
    for path in directory.glob(f"{HANDOVER_PREFIX}*{HANDOVER_SUFFIX}"):
        with contextlib.suppress(OSError):
            path.unlink()


__all__ = ["StateError", "is_handover", "read_handover", "remove_handovers", "save_resolution",
           "saved_resolution", "write_handover"]  # fmt: skip
