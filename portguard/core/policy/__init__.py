"""The SMTP-port policy: rule files compiled into a read-only RuleSet that decides connections."""

from portguard.core.errors import PolicyError
from portguard.core.policy.compiler import compile_ruleset
from portguard.core.policy.explain import format_explanation
from portguard.core.policy.limits import Limiter
from portguard.core.policy.model import Action, Connection, Decision, Direction, Limit, LimitResult
from portguard.core.policy.ruleset import (
    CompiledRule,
    Condition,
    Explanation,
    RuleCheck,
    RuleSet,
    first_mismatch,
)

__all__ = [
    "Action",
    "CompiledRule",
    "Condition",
    "Connection",
    "Decision",
    "Direction",
    "Explanation",
    "Limit",
    "LimitResult",
    "Limiter",
    "PolicyError",
    "RuleCheck",
    "RuleSet",
    "compile_ruleset",
    "first_mismatch",
    "format_explanation",
]
