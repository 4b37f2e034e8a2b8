"""The file-system edge of the policy: find the rule files, read them, compile them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from portguard.errors import PolicyError, Problem
from portguard.policy.compiler import compile_ruleset
from portguard.policy.hosts import Resolver, resolve_host
from portguard.policy.ruleset import RuleSet


def rule_files(paths: Sequence[Path]) -> tuple[list[Path], list[Problem]]:
    """Expand ``[rules] paths``: a directory gives its ``*.toml`` files in name order (not
    recursive, dot files skipped), a file gives itself. A file reached twice is read once."""
    found: list[Path] = []
    problems: list[Problem] = []
    for path in paths:
        if path.is_dir():
            members = sorted(
                (p for p in path.glob("*.toml") if p.is_file() and not p.name.startswith(".")),
                key=lambda p: p.name,
            )
            if not members:
                problems.append(Problem(path, None, "no rule files (*.toml) in this directory"))
            found += members
        elif path.is_file():
            found.append(path)
        elif path.exists():
            problems.append(Problem(path, None, "not a rule file or a directory"))
        else:
            problems.append(Problem(path, None, "no such file or directory"))
    return _first_of_each(found), problems


def _first_of_each(paths: Sequence[Path]) -> list[Path]:
    seen: set[Path] = set()
    unique = []
    for path in paths:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def load_ruleset(
    paths: Sequence[Path], *, resolve: Resolver | None = None, previous: RuleSet | None = None
) -> RuleSet:
    """Load and compile the rule files under ``paths``. Raises PolicyError with every problem.

    Host names resolve through ``resolve`` (default: the system resolver). ``previous``, the
    policy in force, lets a reload skip unchanged list files and keep the addresses of a host
    name that does not resolve this time (see compile_ruleset).
    """
    if not paths:
        raise PolicyError(["no rule paths given"])
    files, problems = rule_files(paths)
    texts: list[tuple[Path, str]] = []
    for path in files:
        try:
            texts.append((path, read_text(path)))
        except OSError as error:
            reason = (error.strerror or str(error)).lower()
            problems.append(Problem(path, None, f"cannot read rule file: {reason}"))
        except UnicodeDecodeError:
            problems.append(Problem(path, None, "cannot read rule file: not UTF-8 text"))
    return compile_ruleset(
        texts, read_text, problems, resolve=resolve or resolve_host, previous=previous
    )
