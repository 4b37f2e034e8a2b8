"""The log process alone: how many decision events a second it writes, fed as fast as it takes
them.

    python -m bench.logcapacity --rules DIR --records N --rounds R CONFIG [CONFIG ...]

For each daemon config (its `[log]` outputs: a file, or a file and a TCP syslog output), a log
process is started exactly as a worker starts one (`LogProcess` with `make_writer(config)` and
the config's flood window), and the decision records of N distinct business-customer SYNs
(made by `Gate.handle` under the policy in DIR, as the packet loop makes them) are handed to it
with `add` and `flush`, 32 at a time. When its socket buffer is full the batch is refused
(`LogProcess.dropped` grows): the batch is handed over again a moment later, so nothing is lost
and the log process always has work waiting. The time runs from the first record to the end of
`close()`, which returns once the log process has written everything and exited. Runs of the
configs alternate; one JSON line per run: {"config", "round", "records", "seconds",
"events_per_s", "refused", "written", "outputs"} (`outputs` from the stop event).

Run it where the outputs' addresses are (the decision benchmark runs it in the lab's gateway,
next to its rsyslog collector).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lab import addresses as a
from lab import synflood
from portguard import __version__
from portguard.config.model import Config, load_config
from portguard.core.events.record import Loggable, Observer, lifecycle_event
from portguard.core.flow.table import FlowTable
from portguard.core.gate import Gate
from portguard.io.policyfiles import load_ruleset
from portguard.log.logprocess import LogProcess
from portguard.log.outputs import make_writer

BATCH = 32  # records a hand-over (below LogProcess.BATCH_FRAMES: one `send` each)
FIRST_SOURCE = "203.0.113.100"
SOURCES = 32


def business_records(rules: Path, count: int) -> list[Loggable]:
    """The decision records of `count` distinct SYNs from business addresses to the MX."""
    first = int.from_bytes(socket.inet_aton(FIRST_SOURCE), "big")
    mx = int.from_bytes(socket.inet_aton(a.MX.v4), "big")
    template = synflood.SynTemplate(4, [first + i for i in range(SOURCES)], mx, a.PORT_SMTP)
    gate = Gate(load_ruleset([rules]), Observer("bench", __version__), FlowTable(count + 1))
    records: list[Loggable] = []
    for index in range(count):
        packet = template.packet(*synflood.attempt(index, SOURCES), index * 2654435761 & 0xFFFFFFFF)
        event = gate.handle(packet, False, True, 1.8e9 + index * 1e-5).event
        if event is not None:
            records.append(event)
    return records


def hand_over(process: LogProcess, records: Sequence[Loggable]) -> int:
    """Every record into the log process, BATCH at a time, a refused batch again after a
    moment; how many batches were refused."""
    refused = 0
    for start in range(0, len(records), BATCH):
        batch = records[start : start + BATCH]
        while True:
            before = process.dropped
            for record in batch:
                process.add(record)
            process.flush()
            if process.dropped == before:
                break
            process.dropped = before  # handed over again below: nothing is lost
            refused += 1
            time.sleep(0.0005)
    return refused


def output_path(config: Config) -> Path:
    (path,) = [Path(o.path) for o in config.log.outputs if o.type == "file" and o.path]
    return path


def one_run(config: Config, records: Sequence[Loggable]) -> dict[str, object]:
    path = output_path(config)
    path.unlink(missing_ok=True)
    observer = Observer(socket.gethostname(), __version__)
    process = LogProcess(lambda: make_writer(config, observer), observer,
                         flood_window=config.log.flood_window)  # fmt: skip
    process.start()
    time.sleep(0.5)  # the writer's threads and connections up
    started = time.perf_counter()
    refused = hand_over(process, records)
    process.close(lifecycle_event("stop", "bench", observer, time.time()), timeout=300)
    seconds = time.perf_counter() - started
    data = path.read_bytes()
    stop = json.loads(data.splitlines()[-1])
    return {"records": len(records), "seconds": seconds, "events_per_s": len(records) / seconds,
            "refused": refused, "written": data.count(b'"portguard.decision"'),
            "outputs": stop.get("portguard", {}).get("sinks", [])}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--rules", type=Path, required=True)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    records = business_records(args.rules, args.records)
    configs = [load_config(path) for path in args.configs]
    for round_number in range(args.rounds):
        for path, config in zip(args.configs, configs, strict=True):
            result = one_run(config, records)
            print(json.dumps({"config": str(path), "round": round_number, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
