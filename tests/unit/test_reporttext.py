"""The report's table and JSON lines: estimates marked, times to the second, samples cut."""

from __future__ import annotations

import orjson

from portguard.cli.reporttext import as_json, render
from portguard.core.abuse import AbuseReport, SourceRow

ROW = SourceRow("2001:db8:64:10::/64", 1234, 250, False, (25, 587),
                "2026-11-27T17:00:00.123456Z", "2026-11-27T18:00:00.000000Z", 1, 2,
                ("[2001:db8::1]:25", "[2001:db8::2]:25", "[2001:db8::3]:587",
                 "[2001:db8::4]:25"))  # fmt: skip


class Fixed(AbuseReport):
    def rows(self, top: int = 0) -> list[SourceRow]:
        return [ROW]


def test_a_table_row() -> None:
    text = render(Fixed(), 20, "table", 1)
    row = text.splitlines()[3]
    assert row.split("  ")[0] == "1"
    assert "2001:db8:64:10::/64" in row and "1,234" in row and "~250" in row
    assert "25,587" in row and "2026-11-27 17:00:00Z" in row and "2026-11-27 18:00:00Z" in row
    assert row.endswith("[2001:db8::1]:25 [2001:db8::2]:25 [2001:db8::3]:587")  # three shown


def test_a_json_line_has_every_field() -> None:
    [line] = render(Fixed(), 20, "json", 1).splitlines()
    assert orjson.loads(line) == as_json(1, ROW) == {
        "rank": 1, "source": "2001:db8:64:10::/64", "attempts": 1234, "destinations": 250,
        "destinations_exact": False, "ports": [25, 587],
        "first_seen": "2026-11-27T17:00:00.123456Z", "last_seen": "2026-11-27T18:00:00.000000Z",
        "alerts": 1, "quarantines": 2, "sample": list(ROW.sample),
    }  # fmt: skip
