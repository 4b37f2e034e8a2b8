"""The result of ``portguard check``: errors or a policy with its warnings, as text or JSON.

Exit codes: 0 valid (warnings alone do not fail), 1 errors, 2 warnings under ``--strict``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portguard.core.errors import Problem, SourceError
from portguard.core.policy.explain import format_resolved
from portguard.core.policy.ruleset import RuleSet

EXIT_OK = 0
EXIT_ERRORS = 1
EXIT_WARNINGS = 2


@dataclass(frozen=True, slots=True)
class CheckReport:
    config: Path
    errors: tuple[Problem, ...] = ()
    plain_errors: tuple[str, ...] = ()  # errors about no file in particular
    warnings: tuple[Problem, ...] = ()
    ruleset: RuleSet | None = None

    @classmethod
    def failed(cls, config: Path, error: SourceError) -> CheckReport:
        return cls(config, error.problems, error.plain)

    @classmethod
    def loaded(cls, config: Path, ruleset: RuleSet, warnings: Sequence[Problem]) -> CheckReport:
        return cls(config, warnings=tuple(sorted(warnings, key=Problem.sort_key)), ruleset=ruleset)

    def exit_code(self, strict: bool) -> int:
        if self.errors or self.plain_errors or self.ruleset is None:
            return EXIT_ERRORS
        return EXIT_WARNINGS if strict and self.warnings else EXIT_OK

    def as_json(self, strict: bool) -> dict[str, Any]:
        ruleset = self.ruleset
        errors = [p.as_dict() for p in self.errors]
        errors += [_plain(message) for message in self.plain_errors]
        return {
            "ok": self.exit_code(strict) == EXIT_OK,
            "config": str(self.config),
            "errors": errors,
            "warnings": [p.as_dict() for p in self.warnings],
            "rules": len(ruleset.rules) if ruleset else 0,
            "disabled": list(ruleset.disabled) if ruleset else [],
            "policy_version": ruleset.version if ruleset else None,
            "sources": [str(path) for path in ruleset.sources] if ruleset else [],
            "resolved": {k: list(v) for k, v in ruleset.resolved.items()} if ruleset else {},
        }

    def text(self) -> tuple[list[str], list[str]]:
        """(stdout lines, stderr lines): errors go to stderr, the summary to stdout."""
        errors = [p.format() for p in self.errors] + list(self.plain_errors)
        if self.ruleset is None:
            return [], errors
        out = [self._warning_line(p) for p in self.warnings]
        out += format_resolved(self.ruleset.resolved)
        files = ", ".join(str(path) for path in self.ruleset.sources)
        out.append(
            f"{self.config}: ok; {len(self.ruleset.rules)} rules from {files}; "
            f"policy version {self.ruleset.version}"
            + (f"; {len(self.warnings)} warnings" if self.warnings else "")
        )
        return out, errors

    @staticmethod
    def _warning_line(problem: Problem) -> str:
        return dataclasses.replace(problem, message=f"warning: {problem.message}").format()


def _plain(message: str) -> dict[str, str | int | None]:
    return {"path": None, "line": None, "col": None, "message": message}
