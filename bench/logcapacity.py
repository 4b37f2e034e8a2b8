"""The log process alone: the highest rate of decision events it writes with nothing dropped.

    python -m bench.logcapacity --rules DIR [--records N] CONFIG [CONFIG ...]

Builds the decision records of N distinct business-customer SYNs (`Gate.handle` under the
policy in DIR, as the packet loop makes them), prints READY, then answers commands on stdin,
one a line, with one JSON line each:

    run INDEX RATE SECONDS   # a log process for config INDEX (0-based), fed RATE records/s

For a run, a log process is started exactly as a worker starts one (`LogProcess` with
`make_writer(config)` and the config's flood window: its `[log]` outputs, e.g. a file, or a file
and a TCP syslog output) and handed RATE * SECONDS records (the N in turn), paced every
millisecond as the packet loop hands over a batch (`add`, then `flush`); then `close()` with a
stop event, which returns once the log process has written everything and exited. The answer:
{"config", "rate", "records", "seconds" (the hand-over), "drained" (until close returned),
"refused" (records its socket buffer refused: what the daemon counts as hand-over drops),
"written" (decision events in the file), "outputs" (each output's counters from the stop
event)}. The caller (decisions_phases.log_capacity) looks for the highest rate at which none
was refused or dropped and everything was written in time (an output's buffer can hide for a
while that it falls behind). `quit` (or the end of stdin) ends it.

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
from typing import Any

from lab import addresses as a
from lab import synflood
from portguard import __version__
from portguard.config.model import Config, load_config
from portguard.core.events.record import Loggable, Observer, lifecycle_event
from portguard.core.gate import Gate
from portguard.io.policyfiles import load_ruleset
from portguard.log.logprocess import LogProcess
from portguard.log.outputs import make_writer

FIRST_SOURCE = "203.0.113.100"
SOURCES = 32


def business_records(rules: Path, count: int) -> list[Loggable]:
    """The decision records of `count` distinct SYNs from business addresses to the MX."""
    first = int.from_bytes(socket.inet_aton(FIRST_SOURCE), "big")
    mx = int.from_bytes(socket.inet_aton(a.MX.v4), "big")
    template = synflood.SynTemplate(4, [first + i for i in range(SOURCES)], mx, a.PORT_SMTP)
    gate = Gate(load_ruleset([rules]), Observer("bench", __version__))
    records: list[Loggable] = []
    for index in range(count):
        packet = template.packet(*synflood.attempt(index, SOURCES), index * 2654435761 & 0xFFFFFFFF)
        event = gate.handle(packet, False, True, 1.8e9 + index * 1e-5).event
        if event is not None:
            records.append(event)
    return records


def hand_over(process: LogProcess, records: Sequence[Loggable], rate: float, total: int) -> int:
    """`total` records (`records` in turn) into the log process at `rate` a second, the ones
    due every millisecond as one batch (synflood's pacing); how many it refused."""
    before, start, sent = process.dropped, time.monotonic(), 0
    cap, count = synflood.batch_cap(rate), len(records)
    while sent < total:
        elapsed = time.monotonic() - start
        due = synflood.batch_size(elapsed, rate, sent, total)
        for index in range(sent, sent + due):
            process.add(records[index % count])
        process.flush()
        sent += due
        if due < cap:  # not behind: wait for the next tick
            time.sleep(max(0.0, synflood.TICK - (time.monotonic() - start - elapsed)))
    return process.dropped - before


def output_path(config: Config) -> Path:
    (path,) = [Path(o.path) for o in config.log.outputs if o.type == "file" and o.path]
    return path


def one_run(
    config: Config, records: Sequence[Loggable], rate: float, seconds: float
) -> dict[str, Any]:
    path = output_path(config)
    path.unlink(missing_ok=True)
    observer = Observer(socket.gethostname(), __version__)
    process = LogProcess(lambda: make_writer(config, observer), observer,
                         flood_window=config.log.flood_window)  # fmt: skip
    process.start()
    time.sleep(0.5)  # the writer's threads and connections up
    total = round(rate * seconds)
    started = time.monotonic()
    refused = hand_over(process, records, rate, total)
    pushed = time.monotonic() - started
    process.close(lifecycle_event("stop", "bench", observer, time.time()), timeout=300)
    drained = time.monotonic() - started
    data = path.read_bytes()
    stop = json.loads(data.splitlines()[-1])
    return {"rate": rate, "records": total, "seconds": pushed, "drained": drained,
            "refused": refused, "written": data.count(b'"portguard.decision"'),
            "outputs": stop.get("portguard", {}).get("sinks", [])}  # fmt: skip


def serve(configs: Sequence[Config], records: Sequence[Loggable]) -> None:
    print("READY", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            return
        index, rate, seconds = int(words[1]), float(words[2]), float(words[3])
        result = one_run(configs[index], records, rate, seconds)
        print(json.dumps({"config": index, **result}), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--rules", type=Path, required=True)
    parser.add_argument("--records", type=int, default=100_000, help="distinct records")
    args = parser.parse_args(argv)
    configs = [load_config(path) for path in args.configs]
    serve(configs, business_records(args.rules, args.records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
