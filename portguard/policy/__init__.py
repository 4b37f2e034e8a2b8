"""The SMTP-port policy: rule files compiled into a read-only RuleSet that decides connections."""

from portguard.errors import PolicyError
from portguard.policy.compiler import compile_ruleset
from portguard.policy.explain import format_explanation
from portguard.policy.limits import Limiter
from portguard.policy.loader import load_ruleset
from portguard.policy.model import Action, Connection, Decision, Direction, Limit, LimitResult
from portguard.policy.ruleset import (
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
    "load_ruleset",
]
