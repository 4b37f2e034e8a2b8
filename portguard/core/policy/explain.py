"""Text for ``portguard explain``: which rule decides a connection, and why earlier ones did not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from portguard.core.packet.model import to_address
from portguard.core.policy.model import Connection
from portguard.core.policy.ruleset import Explanation, RuleCheck


def format_connection(conn: Connection) -> str:
    src = to_address(conn.version, conn.src)
    dst = to_address(conn.version, conn.dst)
    target = f"[{dst}]:{conn.dport}" if conn.version == 6 else f"{dst}:{conn.dport}"
    return f"{src} -> {target} (ipv{conn.version}, {conn.direction})"


def format_explanation(
    explanation: Explanation, resolved: Mapping[str, Sequence[str]] | None = None
) -> str:
    """A few lines: the connection, each rule tried with its verdict, the decision; with
    ``resolved``, the addresses the policy's host names resolved to."""
    lines = [f"connection: {format_connection(explanation.connection)}"]
    checks = explanation.checks
    width = max((len(check.rule_id) for check in checks), default=0)
    deciding = explanation.decision.rule_id
    for number, check in enumerate(checks, start=1):
        lines.append(f"  {number:>3}. {_check_line(check, width, deciding, explanation.every)}")
    lines += _decision_lines(explanation)
    if explanation.disabled:
        lines.append(f"disabled rules, not tried: {', '.join(explanation.disabled)}")
    lines += format_resolved(resolved or {})
    return "\n".join(lines)


def _check_line(check: RuleCheck, width: int, deciding: str, every: bool) -> str:
    verdict = "match   " if check.matched else "no match"
    text = f"{check.rule_id.ljust(width)}  {verdict}  {check.reason}"
    if check.limit is not None:
        text += f"; subject to limit {check.limit.describe()}"
    if every and check.matched and check.rule_id != deciding:
        text += " (not reached: an earlier rule decides)"
    return f"{text}  [{check.ruleset}]"


def _decision_lines(explanation: Explanation) -> list[str]:
    decision = explanation.decision
    if not explanation.matches:
        tried = "no rule matched" if explanation.checks else "the policy has no rules"
        return [f"decision: {decision.action} ({tried}; default action)"]
    lines = [f"decision: {decision.action} by rule '{decision.rule_id}' ({decision.ruleset})"]
    limit = explanation.matches[0].limit
    if limit is not None:
        lines.append(
            f"  past its limit the rule gives {limit.exceed} "
            "(explain takes no token: the daemon's buckets decide)"
        )
    if decision.description:
        lines.append(f"  {decision.description}")
    if not decision.log:
        lines.append("  not logged (log = false)")
    return lines


def format_resolved(resolved: Mapping[str, Sequence[str]]) -> list[str]:
    """``host smtp.example.net: 198.51.100.26, 2001:db8::26`` lines."""
    return [f"host {name}: {', '.join(addresses)}" for name, addresses in sorted(resolved.items())]
