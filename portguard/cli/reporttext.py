"""What `portguard report` prints: an aligned table for the abuse desk, or one JSON object a
source for tools."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from portguard.cli.replaytext import columns
from portguard.core.abuse import AbuseReport, SourceRow

HEADER = ("#", "source", "attempts", "destinations", "ports", "first seen", "last seen",
          "alerts", "quarantines", "sample destinations")  # fmt: skip
RIGHT = {0, 2, 3, 7, 8}  # right-aligned columns (numbers)
TABLE_SAMPLES = 3  # sample destinations a table row shows (JSON: all, up to 10)


def render(tally: AbuseReport, top: int, output_format: str, files: int) -> str:
    rows = tally.rows(top)
    if output_format == "json":
        return "".join(orjson.dumps(as_json(rank, row)).decode() + "\n"
                       for rank, row in enumerate(rows, 1))  # fmt: skip
    return table(tally, rows, files)


def as_json(rank: int, row: SourceRow) -> dict[str, object]:
    return {
        "rank": rank,
        "source": row.source,
        "attempts": row.attempts,
        "destinations": row.destinations,
        "destinations_exact": row.exact,
        "ports": list(row.ports),
        "first_seen": row.first_seen,
        "last_seen": row.last_seen,
        "alerts": row.alerts,
        "quarantines": row.quarantines,
        "sample": list(row.sample),
    }


def table(tally: AbuseReport, rows: Sequence[SourceRow], files: int) -> str:
    """The ranking, a line on what it covers above it and the lines read below it."""
    ports = ", ".join(str(port) for port in sorted(tally.ports))
    span = f"since {_time(tally.since)}" if tally.since is not None else "all times in the logs"
    shown = f"the top {len(rows):,} of {len(tally):,}" if len(rows) < len(tally) else "all"
    lines = [f"sources denied on ports {ports}, {span}: {shown} sources, most attempts first", ""]
    if rows:
        lines += columns([HEADER, *(_cells(rank, row) for rank, row in enumerate(rows, 1))], RIGHT)
    else:
        lines.append("no denied attempts")
    lines += ["", _totals(tally, files)]
    return "\n".join(lines) + "\n"


def _cells(rank: int, row: SourceRow) -> tuple[str, ...]:
    destinations = f"{row.destinations:,}" if row.exact else f"~{row.destinations:,}"
    return (str(rank), row.source, f"{row.attempts:,}", destinations,
            ",".join(map(str, row.ports)) or "-", _time(row.first_seen), _time(row.last_seen),
            str(row.alerts), str(row.quarantines),
            " ".join(row.sample[:TABLE_SAMPLES]))  # fmt: skip


def _totals(tally: AbuseReport, files: int) -> str:
    text = f"read {files:,} file{'s' if files != 1 else ''}: {tally.events:,} portguard events"
    if tally.earlier:
        text += f" ({tally.earlier:,} before the --since time)"
    if tally.skipped:
        text += f"; {tally.skipped:,} other lines skipped (not portguard events)"
    return text


def _time(stamp: str) -> str:
    """``2026-11-27T17:00:00.123456Z`` as ``2026-11-27 17:00:00Z`` (to the second, UTC)."""
    return stamp[:19].replace("T", " ") + "Z" if len(stamp) >= 19 else stamp
