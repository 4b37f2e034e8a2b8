"""The file-system edge of the policy: find the rule files, read them, compile them (the
compile step is the core's: it gets the texts, the list-file reader and the resolver)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from portguard.core.errors import PolicyError, Problem, unexpected
from portguard.core.policy.compiler import compile_ruleset
from portguard.core.policy.hosts import Resolver
from portguard.core.policy.ruleset import RuleSet
from portguard.core.tomlsource import MIB, TextError
from portguard.io import files
from portguard.io.dns import is_transient, resolve_host


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


MAX_RULE_FILE = 16 * MIB  # a rule file's bytes (large sets belong in list files)
MAX_LIST_FILE = 256 * MIB  # a list file's bytes (MAX_LIST_ENTRIES entries of IPv6 fit)


def read_text(path: Path) -> str:
    """A list file (the compiler's ListReader): raises OSError or TextError."""
    return files.read_text(path, MAX_LIST_FILE)


def _read_rule_file(path: Path) -> str | Problem:
    try:
        return files.read_text(path, MAX_RULE_FILE)
    except OSError as error:
        reason = (error.strerror or str(error)).lower()
        return Problem(path, None, f"cannot read rule file: {reason}")
    except TextError as error:
        return error.problem(path)


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
    where = paths[0]  # what was being read when something unexpected went wrong
    try:
        files, problems = rule_files(paths)
        texts: list[tuple[Path, str]] = []
        for where in files:
            text = _read_rule_file(where)
            if isinstance(text, Problem):
                problems.append(text)
            else:
                texts.append((where, text))
        return compile_ruleset(
            texts,
            read_text,
            problems,
            resolve=resolve or resolve_host,
            transient=is_transient,
            previous=previous,
        )
    except PolicyError:
        raise
    except Exception as error:  # the last resort: a message naming the file, never a traceback
        raise PolicyError([unexpected(where, error)]) from error
