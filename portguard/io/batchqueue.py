"""The kernel queue read and answered in batches: one system call for up to BATCH_PACKETS queued
SYNs, one for all their verdicts.

python-netfilterqueue binds the queue (and unbinds it); `BatchReader` then reads its netlink
socket with `recvmmsg` and sends the verdicts of a whole batch in one `sendto` (nfnetlink
handles each message of the buffer in turn), through the small C library `_nfqbatch.so`
(portguard/io/nfqbatch.c, built by `pip install`, loaded with ctypes). Where that library is
missing, `make_reader` falls back to `QueueReader`, one packet per system call.

Every packet of a batch gets exactly one verdict: decided packets their own, a packet whose
deciding failed (or that a failure left undecided) the fail-mode verdict, all sent in a
`finally`. Events go to the log process after the verdicts. With a fast path (fastpath.py),
the runs of packets it answers in C skip the gate; the others are decided as before, in the
batch's order.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from array import array
from collections.abc import Callable
from typing import NamedTuple

from portguard.core.events.record import Loggable
from portguard.core.gate import Outcome, Verdict
from portguard.io.fastpath import FastPath
from portguard.io.native import address, library
from portguard.io.nfqueue import BATCH_PACKETS, BATCH_SECONDS, RECV_SIZE, QueueReader, answer

META_WORDS = 7  # id, mark, indev, outdev, payload offset, payload length, flags
F_PAYLOAD, F_TRUNCATED = 1, 2
MAX_BATCH = BATCH_PACKETS  # packets a read takes at most (nfqbatch.c allows up to 256)
C_MESSAGES, C_OVERRUNS, C_ACKED_ERRORS, C_LAST_ERROR, C_OTHER = range(5)


class FastRecords(NamedTuple):
    """A run of decisions the fast path answered: their records (an ``r`` frame's payload)."""

    payload: bytes
    decisions: int


class NoPayload(ValueError):
    """A queued message without the packet's bytes (cut short, or no payload attribute)."""


class BatchReader(QueueReader):
    """A QueueReader that reads and answers a batch of packets per system call."""

    batched = True

    def __init__(
        self,
        lib: ctypes.CDLL,
        queue_num: int,
        max_len: int,
        decide: Callable[[bytes, int, int], Outcome],
        on_event: Callable[[Loggable], object],
        fallback: Verdict,
        on_events: Callable[[list[Loggable]], object] | None = None,
        fast: FastPath | None = None,
        on_records: Callable[[bytes, int], object] | None = None,
    ) -> None:
        """`on_events`: the events of a batch at once (else `on_event` for each); `fast`: the
        fast path (io/fastpath.py), whose records (an ``r`` frame's payload, and how many)
        go to `on_records`."""
        super().__init__(queue_num, max_len, decide, on_event, fallback)
        self.on_events = on_events or (lambda events: [on_event(e) for e in events])
        self.fast = fast if on_records is not None else None
        self.on_records = on_records
        self._lib = lib
        self._buf = bytearray(RECV_SIZE * MAX_BATCH)
        self._view = memoryview(self._buf)
        self._meta = array("I", bytes(4 * META_WORDS * MAX_BATCH))
        self.counters = array("I", bytes(4 * 5))
        self._addresses = (address(self._buf), address(self._meta), address(self.counters))
        self._seq = 0
        self._received = 0  # messages the last read took
        self._refused = 0  # verdicts the kernel refused, counted so far

    @property
    def overruns(self) -> int:
        return int(self.counters[C_OVERRUNS])

    def read(self, limit: int = BATCH_PACKETS, seconds: float = BATCH_SECONDS) -> bool:
        """Decide and answer at most `limit` waiting packets; True when that many came (more
        may be waiting). `seconds` is the QueueReader's bound: one read here is one call."""
        limit = max(1, min(limit, MAX_BATCH))
        fd = self.fileno()
        before = self.counters[C_MESSAGES]
        buf, meta, counters = self._addresses
        found = self._lib.pg_recv(fd, buf, RECV_SIZE, limit, meta, counters)
        if found < 0:
            if -found in (errno.EAGAIN, errno.EWOULDBLOCK):
                self._received = 0
                return False
            raise OSError(-found, os.strerror(-found))
        self._received = self.counters[C_MESSAGES] - before
        self._note_refusals()
        if found:
            self._answer(self._meta[: found * META_WORDS].tolist())
        full = self._received >= limit
        if full:
            self.batches_full += 1
        return full

    @property
    def received(self) -> int:
        return self._received

    def _answer(self, words: list[int]) -> None:
        """Each packet's verdict (the fail-mode one where deciding failed), all in one send;
        then the records and events, in the packets' order. With a fast path, it answers the
        runs of packets it can, the gate the others, one after the other (what the gate decides
        may change what the fast path may answer)."""
        count = len(words) // META_WORDS
        verdicts: list[int] = []  # 4 words a packet, in the packets' order
        handed: list[Loggable | FastRecords] = []
        now = time.time() if self.fast is not None else 0.0  # the fast path's clock
        fast_at = 0 if self.fast is not None else count
        try:
            while (index := len(verdicts) // 4) < count:
                if index >= fast_at:  # the fast path may answer this one
                    answered, fast_at = self._answer_fast(index, count, now, verdicts, handed)
                    if answered:
                        continue
                at = index * META_WORDS
                outcome = self._decide_one(words, at)
                verdicts += answer(outcome, words[at], words[at + 1])
                if outcome.event is not None:
                    handed.append(outcome.event)
        finally:
            self.packets += count
            fallback = Outcome(self.fallback, None)
            for at in range(len(verdicts) // 4 * META_WORDS, len(words), META_WORDS):
                verdicts += answer(fallback, words[at], words[at + 1])
            self._send(verdicts)
        self._hand_over(handed)

    def _answer_fast(
        self, start: int, count: int, now: float, verdicts: list[int],
        handed: list[Loggable | FastRecords],
    ) -> tuple[int, int]:  # fmt: skip
        """The run of packets from `start` the fast path answers: their verdicts and records;
        how many, and the next packet to offer it. A failure leaves the rest to the gate."""
        assert self.fast is not None
        try:
            answered = self.fast.decide(self._addresses[0], self._addresses[1], start, count,
                                        now)  # fmt: skip
            found = self.fast.verdicts(answered), self.fast.records(), self.fast.next
        except Exception as error:  # the gate decides the rest of the batch
            self.errors += 1
            self.last_error = error
            return 0, count
        words, records, next_at = found
        if answered:
            verdicts += words
            handed.append(FastRecords(records, answered))
        return answered, next_at

    def _hand_over(self, handed: list[Loggable | FastRecords]) -> None:
        """A batch's records and events to the log process, in order."""
        run: list[Loggable] = []
        try:
            for item in handed:
                if not isinstance(item, FastRecords):
                    run.append(item)
                    continue
                if run:
                    self.on_events(run)
                    run = []
                if self.on_records is not None:
                    self.on_records(item.payload, item.decisions)
            if run:
                self.on_events(run)
        except Exception as error:  # logging must never stop the packet loop
            self.errors += 1
            self.last_error = error

    def _decide_one(self, words: list[int], at: int) -> Outcome:
        _id, _mark, indev, outdev, offset, length, flags = words[at : at + META_WORDS]
        try:
            if not flags & F_PAYLOAD:
                raise NoPayload(f"queued packet {_id} came without its bytes (flags {flags})")
            return self.decide(self._view[offset : offset + length].tobytes(), indev, outdev)
        except Exception as error:  # any failure still gets a verdict
            self.errors += 1
            self.last_error = error
            return Outcome(self.fallback, None)

    def _send(self, verdicts: list[int]) -> None:
        count = len(verdicts) // 4
        if not count:
            return
        words = array("I", verdicts)
        for _attempt in range(2):  # a failed send (out of memory) is tried once more
            self._seq = (self._seq + count) & 0xFFFFFFFF
            result = self._lib.pg_send(self.fileno(), self.queue_num, address(words), count,
                                       self._seq)  # fmt: skip
            if result >= 0:
                return
        self.verdict_errors += count  # the kernel holds them until the queue is unbound
        self.last_error = OSError(-result, f"sending verdicts: {os.strerror(-result)}")

    def _note_refusals(self) -> None:
        """Verdicts the kernel refused (its error answers come with the packets) count as
        verdict errors, with the kernel's reason as the last error."""
        refused = int(self.counters[C_ACKED_ERRORS])
        if refused != self._refused:
            self.verdict_errors += refused - self._refused
            self._refused = refused
            code = int(self.counters[C_LAST_ERROR])
            self.last_error = OSError(code, f"the kernel refused a verdict: {os.strerror(code)}")


def make_reader(
    queue_num: int,
    max_len: int,
    decide: Callable[[bytes, int, int], Outcome],
    on_event: Callable[[Loggable], object],
    fallback: Verdict,
    batched: bool = True,
    on_events: Callable[[list[Loggable]], object] | None = None,
    fast: FastPath | None = None,
    on_records: Callable[[bytes, int], object] | None = None,
) -> QueueReader:
    """The batch reader where its library loads (and `batched`), else one packet per call
    (without the fast path, which lives in the same library)."""
    lib = library() if batched else None
    if lib is None:
        return QueueReader(queue_num, max_len, decide, on_event, fallback)
    return BatchReader(lib, queue_num, max_len, decide, on_event, fallback, on_events, fast,
                       on_records)  # fmt: skip
