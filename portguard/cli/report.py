"""`portguard report`: decision logs in, sources ranked by denied SMTP-port attempts
(docs/abuse-desk.md).

Reads each file line by line (io/logfiles.py: plain or gzip), parses each line with orjson and
hands it to an `AbuseReport` (core/abuse.py); prints the ranking as a table or JSON lines
(cli/reporttext.py). No daemon, no config and no root needed. Exit 0 done, 1 a file that
cannot be read (`path: message`), 2 bad arguments.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import orjson

from portguard.cli import reporttext
from portguard.core.abuse import SMTP_PORTS, AbuseReport, since_text
from portguard.io.logfiles import LogFileError, log_lines

DEFAULT_TOP = 20


@dataclass(frozen=True, slots=True)
class ReportArgs:
    logs: Sequence[Path]
    since: int | None = None  # seconds before now
    top: int = DEFAULT_TOP  # 0: every source
    output_format: str = "table"
    ports: frozenset[int] = SMTP_PORTS


def report(
    args: ReportArgs, out: TextIO | None = None, err: TextIO | None = None,
    now: float | None = None,
) -> int:  # fmt: skip
    """The command; never a traceback: every failure is a message and exit 1."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        tally = read_logs(args, err, time.time() if now is None else now)
        out.write(reporttext.render(tally, args.top, args.output_format, len(args.logs)))
        out.flush()
    except LogFileError as error:
        print(error, file=err)
        return 1
    except BrokenPipeError:  # `| head`: the reader is gone, not an error of the report
        return 0
    except KeyboardInterrupt:
        print("portguard report: interrupted", file=err)
        return 130
    except Exception as error:  # the last resort: a message, never a traceback
        print(f"portguard report: unexpected error: {error!r}", file=err)
        return 1
    if args.output_format == "json" and tally.skipped:
        print(f"portguard report: {tally.skipped:,} lines skipped (not portguard events)",
              file=err)  # fmt: skip
    return 0


def read_logs(args: ReportArgs, err: TextIO, now: float) -> AbuseReport:
    """Every file's lines through one report, in the order given (any order gives the same)."""
    since = None if args.since is None else since_text(now, args.since)
    tally = AbuseReport(frozenset(args.ports), since)
    for path in args.logs:
        feed(log_lines(path, lambda text: print(text, file=err)), tally)
    return tally


def feed(lines: Iterable[bytes], tally: AbuseReport) -> None:
    """Each line parsed and added; a line that is no JSON object is counted as skipped. A line
    may carry a prefix before its JSON (a syslog collector's header): it starts at the first
    `{`. Blank lines are ignored."""
    add, loads, error = tally.add, orjson.loads, orjson.JSONDecodeError
    for line in lines:
        if line[:1] != b"{":
            start = line.find(b"{")
            if start < 0:
                tally.skipped += bool(line.strip())
                continue
            line = line[start:]
        try:
            event = loads(line)
        except error:
            tally.skipped += 1
            continue
        add(event)
