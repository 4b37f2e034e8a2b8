"""One client of the decision benchmark: `lab.synflood`, started at an agreed moment.

    python -m bench.synclient --at MONOTONIC SYNFLOOD-ARGUMENTS...

Waits until `time.monotonic()` (one clock for every process of the machine, whatever their
network namespace) reaches MONOTONIC, then runs `lab.synflood` with the remaining arguments, so
that several clients started one after the other (Python start-up takes a while) send during
the same seconds. Prints {"late": s} first (how late it started: 0 when it was ready in time),
then synflood's line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from lab import synflood


def split_at(argv: Sequence[str]) -> tuple[float, list[str]]:
    """(the moment to start at, synflood's arguments) from `--at T REST...`."""
    if len(argv) < 2 or argv[0] != "--at":
        raise SystemExit("usage: python -m bench.synclient --at MONOTONIC SYNFLOOD-ARGUMENTS...")
    return float(argv[1]), list(argv[2:])


def main(argv: Sequence[str] | None = None) -> int:
    at, rest = split_at(sys.argv[1:] if argv is None else argv)
    delay = at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    print(json.dumps({"late": round(max(0.0, time.monotonic() - at), 6)}), flush=True)
    return synflood.main(rest)


if __name__ == "__main__":
    sys.exit(main())
