"""The garbage collector tuned for the log process: it allocates many short-lived objects per
event (dicts, strings) that reference counting frees, and almost never a reference cycle, so a
young collection every 700 allocations (Python's default) is mostly wasted work.
`fewer_collections` makes them 10,000 allocations apart and moves what exists (modules,
configuration) out of every later collection. The packet loop keeps Python's default:
its control clients' sockets must be freed promptly when descriptors run short."""

from __future__ import annotations

import gc

YOUNG = 10_000  # allocations between two young-generation collections


def fewer_collections() -> None:
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
    gc.freeze()
