"""The kernel's per-queue counters from /proc/net/netfilter/nfnetlink_queue (per netns)."""

from __future__ import annotations

from pathlib import Path

# 0440 root in every namespace: the daemon reads it only when it runs as root; `portguard
# status` (run as root) reads it itself otherwise
QUEUE_STATS_FILE = Path("/proc/self/net/netfilter/nfnetlink_queue")
QUEUE_STATS_FIELDS = (
    "queue_num",
    "port_id",  # netlink port id of the bound socket
    "queue_total",  # packets waiting for a verdict now
    "copy_mode",
    "copy_range",
    "queue_dropped",  # dropped because the queue was full
    "user_dropped",  # dropped because the socket buffer was full
    "id_sequence",  # the last packet id: how many packets were ever queued
)


def parse_queue_stats(text: str, queue_num: int) -> dict[str, int] | None:
    """The row of `queue_num`, or None when no process has bound that queue."""
    for line in text.splitlines():
        words = line.split()
        if len(words) < len(QUEUE_STATS_FIELDS) or not all(w.isdigit() for w in words):
            continue
        row = dict(zip(QUEUE_STATS_FIELDS, (int(w) for w in words), strict=False))
        if row["queue_num"] == queue_num:
            return row
    return None


def read_queue_stats(queue_num: int, path: Path = QUEUE_STATS_FILE) -> dict[str, int] | None:
    try:
        text = path.read_text()
    except OSError:  # the module is not loaded yet: nothing is bound
        return None
    return parse_queue_stats(text, queue_num)


def bound_queues(first: int, count: int, path: Path = QUEUE_STATS_FILE) -> list[int]:
    """Which of the queues first .. first+count-1 some process has bound already."""
    return [n for n in range(first, first + count) if read_queue_stats(n, path) is not None]
