"""What `portguard replay` prints: the totals by rule and verdict, the differences between two
policies (side by side, or JSON lines)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson

from portguard.core.events.record import address_text, timestamp
from portguard.core.replay import Counts, Decided, Difference

Totals = Mapping[tuple[str, str], int]  # (rule id, verdict) -> connections


def totals_table(capture: Path, totals: Totals, counts: Counts) -> str:
    """Connections by deciding rule and verdict, then what became of the other packets."""
    rows = [("rule", "verdict", "connections")]
    rows += [(rule, verdict, f"{n:,}") for (rule, verdict), n in sorted(totals.items())]
    lines = [f"{capture}: {counts.frames:,} packets, {counts.decided:,} SYNs decided", ""]
    lines += columns(rows, right={2})
    skipped = [
        (counts.other, "not a SYN to a hooked port"),
        (counts.kept, "a retransmitted SYN of an allowed connection (kept by the kernel)"),
        (counts.retransmissions, "a retransmitted dropped SYN (dropped again, no event)"),
        (counts.outgoing, "the copy of a forwarded packet the capture saw leave"),
        (counts.not_ip, "not IPv4 or IPv6"),
        (counts.broken, "could not be decoded"),
    ]
    shown = [f"  {n:>12,}  {text}" for n, text in skipped if n]
    if shown:
        lines += ["", "packets not decided:", *shown]
    return "\n".join(lines) + "\n"


def differences(found: Sequence[Difference], decided: int, output_format: str) -> str:
    """The connections decided differently: a side-by-side table, or one JSON line each."""
    if output_format == "json":
        return "".join(orjson.dumps(_as_json(d)).decode() + "\n" for d in found)
    if not found:
        return f"no difference: all {decided:,} SYNs decided alike\n"
    rows: list[tuple[str, ...]] = [("time", "source", "destination", "port", "old rule",
                                    "old verdict", "new rule", "new verdict")]  # fmt: skip
    rows += [_row(d) for d in found]
    summary = f"{len(found):,} of {decided:,} SYNs decided differently"
    return "\n".join([*columns(rows, right={3}), "", summary]) + "\n"


def _row(difference: Difference) -> tuple[str, ...]:
    old, new = difference
    version, src, dst, _sport, dport = old.key
    return (timestamp(old.now), address_text(version, src), address_text(version, dst),
            str(dport), old.rule_id, old.verdict.value, new.rule_id, new.verdict.value)  # fmt: skip


def _as_json(difference: Difference) -> dict[str, object]:
    old, new = difference
    version, src, dst, sport, dport = old.key
    return {
        "@timestamp": timestamp(old.now),
        "packet": old.number,
        "source": {"ip": address_text(version, src), "port": sport},
        "destination": {"ip": address_text(version, dst), "port": dport},
        "network": {"direction": old.direction.value},
        "old": _side(old),
        "new": _side(new),
    }


def _side(decided: Decided) -> dict[str, str]:
    return {"rule": decided.rule_id, "verdict": decided.verdict.value}


def columns(rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """Aligned text columns (the `right` ones right-aligned), two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
