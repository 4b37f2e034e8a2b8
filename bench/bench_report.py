"""`portguard report` throughput against a plain `orjson.loads` of every line, same run.

    .venv/bin/python bench/bench_report.py [--lines N] [--deny-share S] [--repeat R]

Writes a decision log of N lines as the daemon writes it (each event built by the log
process's EventFlow and rendered by the ECS renderer, flood control off so that every line is
an event of its own: the report's worst case), S of them denies to port 25 from 5,000
subscribers to 2,000 mail exchangers, the rest allowed smarthost and submission connections,
then gzips a copy. Times, best of R rounds each (the files in the page cache):

- baseline: every line of the plain file read and parsed with `orjson.loads`, nothing else;
- report: what `portguard report` does before printing (io/logfiles.py line by line, parse,
  core/abuse.py tallies), on the plain file and on the gzipped one.

Prints lines/s of each and each report's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import gzip
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from portguard.cli.report import ReportArgs, read_logs
from portguard.core.events.record import DecisionRecord, Observer
from portguard.log.ecs import ecs_line
from portguard.log.eventflow import EventFlow
from portguard.log.sinks import prepare

NOW = 1795798800.0
SUBSCRIBERS, EXCHANGERS = 5000, 2000
ALLOWED = [(0xC633641A, 25, "smarthost"), (0xC633641B, 587, "submission")]


def write_log(path: Path, lines: int, deny_share: float) -> None:
    """`lines` events, one a line, as the daemon's file output writes them."""
    rng, flow = random.Random(1), EventFlow(Observer("gw1", "0.1.0"), 0)
    with path.open("wb") as out:
        for n in range(lines):
            src = 0x64400000 + rng.randrange(SUBSCRIBERS)
            if rng.random() < deny_share:
                dst = 0xCB007100 + rng.randrange(EXCHANGERS)
                dport, rule, action = 25, "block-25", "reject"
            else:
                (dst, dport, rule), action = rng.choice(ALLOWED), "allow"
            record = DecisionRecord(NOW + n * 1e-3, 4, src, dst, 1024 + n % 60000, dport,
                                    "outbound", action, rule, "10-isp.toml", "", "matched",
                                    "v1", f"0-{n:x}", None)  # fmt: skip
            for event in flow.decision(record):
                out.write(ecs_line(prepare(event)) + b"\n")


def baseline(path: Path) -> int:
    loads, lines = orjson.loads, 0
    with path.open("rb") as log:
        for line in log:
            loads(line)
            lines += 1
    return lines


def report(path: Path) -> int:
    tally = read_logs(ReportArgs([path], top=0), err=None, now=NOW)  # type: ignore[arg-type]
    return tally.events + tally.skipped


def best(run: Callable[[Path], int], path: Path, repeat: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        count = run(path)
        times.append(time.perf_counter() - start)
    return min(times), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--deny-share", type=float, default=0.4)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain, packed = Path(tmp) / "decisions.log", Path(tmp) / "decisions.log.1.gz"
        write_log(plain, args.lines, args.deny_share)
        packed.write_bytes(gzip.compress(plain.read_bytes(), compresslevel=6))
        size, zipped = plain.stat().st_size / 1e6, packed.stat().st_size / 1e6
        print(f"log: {args.lines:,} lines, {size:.0f} MB ({zipped:.0f} MB gzipped), "
              f"{args.deny_share:.0%} denies")  # fmt: skip
        base, lines = best(baseline, plain, args.repeat)
        print(f"{'run':28} {'seconds':>8} {'lines/s':>11} {'vs orjson.loads':>16}")
        print(f"{'baseline: orjson.loads':28} {base:8.2f} {lines / base:11,.0f} {1:16.2f}")
        for name, path in (("report, plain file", plain), ("report, gzip file", packed)):
            took, counted = best(report, path, args.repeat)
            assert counted == lines, (counted, lines)
            print(f"{name:28} {took:8.2f} {lines / took:11,.0f} {base / took:16.2f}")


if __name__ == "__main__":
    main()
