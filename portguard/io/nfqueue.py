"""The kernel queue edge: the only module that imports netfilterqueue.

Every queued packet gets exactly one verdict: the verdict is applied in a `finally`, and
when deciding fails for any reason the packet gets the fail-mode verdict instead.

A read handles a bounded batch (at most BATCH_PACKETS messages or BATCH_SECONDS), never
"until the socket is empty": netfilterqueue's own `run(block=False)` loops until EAGAIN, so
under a steady flood it would never hand the loop back to its housekeeping (signals, reloads,
status, the watchdog). `run_socket` reads through a `BatchSocket` instead, whose `recv` says
EAGAIN once the batch is full.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

from netfilterqueue import COPY_PACKET, NetfilterQueue

from portguard.core.events.record import Loggable
from portguard.core.gate import Outcome, Verdict
from portguard.core.marks import (
    MARK_ALLOW,
    MARK_CACHE,
    MARK_DROP,
    MARK_MASK,
    MARK_REJECT,
    mark_bits,
    with_mark_bits,
)
from portguard.core.policy.model import Direction

# The most python-netfilterqueue lets a queue copy (1.1.0 caps `range` at 4016): the TCP header
# of any SYN the hook matches, behind however many IPv6 extension headers, is read. SYNs are
# small, so the larger range costs nothing; a TCP header beyond it is undecidable and dropped.
COPY_RANGE = 4016
# What one read of the netlink socket takes. netfilterqueue's own 4096-byte buffer is too small
# for a full copy range plus the message's attributes (a forwarded, marked, timestamped packet
# of 4016+ bytes, e.g. a reassembled fragmented SYN, makes a ~4120-byte message): a truncated
# message is never handed to the callback, and its packet would stay queued without a verdict.
RECV_SIZE = 16384

BATCH_PACKETS = 64  # messages one read handles at most before the loop's housekeeping
BATCH_SECONDS = 0.005  # ... or this long, whichever comes first
NETLINK_NETFILTER = 12

Decider = Callable[[bytes, int, int], Outcome]  # (packet bytes, indev, outdev) -> outcome


class Receiver(Protocol):
    """What BatchSocket reads from: a socket's `recv(size, flags)`."""

    def recv(self, size: int, flags: int = 0, /) -> bytes: ...


class BatchSocket:
    """A socket-like object for `NetfilterQueue.run_socket`: `recv` hands over at most `limit`
    messages, for at most `seconds`, then raises BlockingIOError (EAGAIN), which ends
    `run_socket` as an empty socket would. Never blocks (MSG_DONTWAIT)."""

    def __init__(self, sock: Receiver, clock: Callable[[], float] = time.monotonic) -> None:
        self._sock = sock
        self._clock = clock
        self._left = 0
        self._deadline = 0.0
        self.emptied = False  # the socket had nothing more in this batch
        self.received = 0  # messages of the current batch
        self.overruns = 0  # ENOBUFS: the kernel could not deliver (socket buffer full)

    def start(self, limit: int, seconds: float) -> None:
        self._left, self._deadline = limit, self._clock() + seconds
        self.emptied, self.received = False, 0

    @property
    def full(self) -> bool:
        """The batch ended on its limit, not on an empty socket: more may be waiting."""
        return not self.emptied

    def recv(self, size: int) -> bytes:
        if self._left <= 0 or self._clock() >= self._deadline:
            raise BlockingIOError(errno.EAGAIN, "batch complete")
        try:
            data = self._sock.recv(max(size, RECV_SIZE), socket.MSG_DONTWAIT)
        except BlockingIOError:
            self.emptied = True
            raise
        except OSError as error:
            if error.errno == errno.ENOBUFS:  # run_socket goes on reading
                self.overruns += 1
            raise
        self._left -= 1
        self.received += 1
        return data


# (verdict, direction, cached) -> portguard's bits of the mark that verdict repeats the
# packet with; a verdict missing here is given without a mark (accept, drop)
_MARKS: dict[tuple[Verdict, Direction | None, bool], int] = {
    (verdict, direction, cached): mark_bits(bits, direction) | (MARK_CACHE if cached else 0)
    for verdict, bits, cached in (
        (Verdict.ALLOW, MARK_ALLOW, False),
        (Verdict.REJECT, MARK_REJECT, False),
        (Verdict.REJECT, MARK_REJECT, True),
        (Verdict.DROP, MARK_DROP, True),
    )
    for direction in (*Direction, None)
}


NF_DROP, NF_ACCEPT, NF_REPEAT = 0, 1, 4  # netfilter's verdict codes
_KEPT = ~MARK_MASK & 0xFFFFFFFF  # the bits of a mark that are not portguard's


def _bits(verdict: Verdict, direction: Direction | None, cache: bool) -> int | None:
    return _MARKS.get((verdict, direction, cache and verdict is not Verdict.ALLOW))


def answer(outcome: Outcome, packet_id: int, mark: int) -> tuple[int, int, int, int]:
    """What apply_verdict tells the kernel, as a batch reader's words: the packet id, the
    netfilter verdict, whether to set the mark, the mark (portguard's bits into `mark`).
    Once per packet: `_bits` and `with_mark_bits` written out."""
    verdict = outcome.verdict
    bits = _MARKS.get((verdict, outcome.direction, outcome.cache and verdict is not Verdict.ALLOW))
    if bits is not None:
        return packet_id, NF_REPEAT, 1, (mark & _KEPT) | bits
    return packet_id, NF_ACCEPT if outcome.verdict is Verdict.ACCEPT else NF_DROP, 0, 0


def apply_verdict(
    packet: Any, verdict: Verdict, direction: Direction | None = None, cache: bool = False
) -> None:
    """Tell the kernel what to do with `packet` (a netfilterqueue.Packet).

    Allow and reject mark the packet with the verdict and the connection's `direction` (None:
    internal) and repeat it: the hook's chain sees the mark and saves it, direction included,
    to the connmark and returns (allow), or answers with a TCP RST (reject). A deny to `cache`
    (reject or drop) is marked with MARK_CACHE too and repeated: the hook adds its key to the
    deny cache, then rejects or drops it.
    """
    bits = _bits(verdict, direction, cache)
    if bits is not None:
        packet.set_mark(with_mark_bits(packet.get_mark(), bits))
        packet.repeat()
    elif verdict is Verdict.ACCEPT:
        packet.accept()
    else:
        packet.drop()


class QueueReader:
    """One bound kernel queue. Call `read()` when `fileno()` is readable."""

    batched = False  # one system call per packet (batchqueue.BatchReader: per batch)

    def __init__(
        self,
        queue_num: int,
        max_len: int,
        decide: Decider,
        on_event: Callable[[Loggable], object],
        fallback: Verdict,
    ) -> None:
        self.queue_num = queue_num
        self.max_len = max_len
        self.decide = decide
        self.on_event = on_event
        self.fallback = fallback
        self.packets = 0
        self.errors = 0
        self.verdict_errors = 0
        self.last_error: BaseException | None = None
        self.batches_full = 0  # reads that stopped at the batch bound (the queue kept coming)
        self._nfq: Any = None
        self._batch: BatchSocket | None = None
        self._sock: socket.socket | None = None

    def open(self) -> None:
        nfq = NetfilterQueue()
        nfq.bind(
            self.queue_num,
            self._on_packet,
            max_len=self.max_len,
            mode=COPY_PACKET,
            range=COPY_RANGE,
        )
        self._nfq = nfq
        # a second descriptor of the same netlink socket, read through Python's socket
        sock = self._sock = socket.fromfd(nfq.get_fd(), socket.AF_NETLINK, socket.SOCK_RAW,
                                          NETLINK_NETFILTER)  # fmt: skip
        self._batch = BatchSocket(sock)

    def fileno(self) -> int:
        return int(self._nfq.get_fd())

    @property
    def overruns(self) -> int:
        return self._batch.overruns if self._batch is not None else 0

    def read(self, limit: int = BATCH_PACKETS, seconds: float = BATCH_SECONDS) -> bool:
        """Handle at most `limit` waiting packets (or for `seconds`), without blocking.

        True when the batch was full: more packets may be waiting, and the caller should
        come back soon (after its housekeeping), without waiting for the socket.
        """
        batch = self._batch
        assert batch is not None, "read() before open()"
        batch.start(limit, seconds)
        self._nfq.run_socket(batch)
        if batch.full:
            self.batches_full += 1
        return batch.full

    def drain(self, most: int = 100_000) -> int:
        """Handle what is waiting, batch after batch, up to `most` packets; how many it was."""
        handled = 0
        while handled < most:
            more = self.read(min(BATCH_PACKETS, most - handled), seconds=1.0)
            handled += self.received
            if not more:
                break
        return handled

    @property
    def received(self) -> int:
        """Messages the last `read` took."""
        return self._batch.received if self._batch is not None else 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._nfq is not None:
            self._nfq.unbind()
            self._nfq = None

    def _on_packet(self, packet: Any) -> None:
        self.packets += 1
        outcome = Outcome(self.fallback, None)
        try:
            outcome = self.decide(packet.get_payload(), packet.indev, packet.outdev)
        except Exception as error:  # any failure still gets a verdict
            self.errors += 1
            self.last_error = error
        finally:
            self._give_verdict(packet, outcome)
        if outcome.event is not None:
            try:
                self.on_event(outcome.event)
            except Exception as error:  # logging must never stop the packet loop
                self.errors += 1
                self.last_error = error

    def _give_verdict(self, packet: Any, outcome: Outcome) -> None:
        try:
            apply_verdict(packet, outcome.verdict, outcome.direction, outcome.cache)
        except Exception as error:  # never let an exception into the C loop
            self.verdict_errors += 1
            self.last_error = error
