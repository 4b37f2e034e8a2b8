"""Text for ``portguard explain``: which rule decides a connection, and why earlier ones did not."""

from __future__ import annotations

from portguard.packet.model import to_address
from portguard.policy.model import Connection
from portguard.policy.ruleset import Explanation


def format_connection(conn: Connection) -> str:
    src = to_address(conn.version, conn.src)
    dst = to_address(conn.version, conn.dst)
    target = f"[{dst}]:{conn.dport}" if conn.version == 6 else f"{dst}:{conn.dport}"
    return f"{src} -> {target} (ipv{conn.version}, {conn.direction})"


def format_explanation(explanation: Explanation) -> str:
    """A few lines: the connection, each rule tried with its verdict, the decision."""
    lines = [f"connection: {format_connection(explanation.connection)}"]
    checks = explanation.checks
    width = max((len(check.rule_id) for check in checks), default=0)
    for number, check in enumerate(checks, start=1):
        verdict = "match   " if check.matched else "no match"
        name = check.rule_id.ljust(width)
        lines.append(f"  {number:>3}. {name}  {verdict}  {check.reason}  [{check.ruleset}]")
    decision = explanation.decision
    if not any(check.matched for check in checks):
        tried = "no rule matched" if checks else "the policy has no rules"
        lines.append(f"decision: {decision.action} ({tried}; default action)")
    else:
        lines.append(
            f"decision: {decision.action} by rule '{decision.rule_id}' ({decision.ruleset})"
        )
        if decision.description:
            lines.append(f"  {decision.description}")
    if explanation.disabled:
        lines.append(f"disabled rules, not tried: {', '.join(explanation.disabled)}")
    return "\n".join(lines)
