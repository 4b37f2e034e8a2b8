"""Reading pcap and pcapng captures, streaming, with scapy's raw readers (frames as bytes).

The only module that imports scapy, and only when a capture is opened (`Capture.open`):
importing scapy takes about a second, and the daemon never reads a capture. Frames come out
one at a time (`Capture.frames`): a capture of any size is read in constant memory.

scapy's readers end quietly at any damage. The reader here tells a damaged capture from a cut
one: it counts the bytes each record took, so a record that runs past the end of the file
(the last one, cut short by a full disk or a killed tcpdump) is a warning and the replay goes
on, while a record that cannot be right (a length beyond any snapshot length, a pcapng block
whose lengths disagree) is a `CaptureError` naming the packet: ``packet 1234: ...``.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from portguard.core.packet.linklayer import LINK_TYPES, supported
from portguard.core.replay import Frame

PCAP_MAGICS = (b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1")
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"
PCAP_RECORD_HEADER = 16
MAX_SNAPLEN = 262144  # libpcap's largest snapshot length: a longer record is damage
MAX_BLOCK = 16 << 20  # a pcapng block longer than this (bytes) is damage, not a cut packet
PCAPNG_OUTBOUND = 2  # the enhanced packet block's direction flag: the frame left
Warn = Callable[[str], None]


class CaptureError(Exception):
    """The capture cannot be read (on) here; the message names the packet when it can."""


class _Counted:
    """A binary stream that counts the bytes read and notes a read that came back short."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.position = 0
        self.short = False  # a read returned fewer bytes than asked: the file ended
        self.largest_ask = 0  # since `mark`: the longest read asked for (a block's length)

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        got = len(data)
        self.position += got
        if got < size:
            self.short = True
        if size > self.largest_ask:
            self.largest_ask = size
        return data

    def mark(self) -> int:
        self.largest_ask = 0
        return self.position

    def fileno(self) -> int:
        return self.stream.fileno()

    def close(self) -> None:
        self.stream.close()


class Capture:
    """An open capture: `frames` reads it, `done` tells how far (for progress)."""

    def __init__(self, path: Path, raw: BinaryIO, stream: _Counted, reader: Any, ng: bool) -> None:
        self.path = path
        self._raw = raw
        self._stream = stream
        self._reader = reader
        self._ng = ng
        self.size = os.fstat(raw.fileno()).st_size
        self.number = 0  # frames read so far

    @classmethod
    def open(cls, path: Path) -> Capture:
        try:
            raw: BinaryIO = open(path, "rb")  # noqa: SIM115 (closed by `close`)
        except OSError as error:
            raise CaptureError(f"cannot open: {error.strerror or error}") from None
        try:
            return cls._over(path, raw)
        except BaseException:
            raw.close()
            raise

    @classmethod
    def _over(cls, path: Path, raw: BinaryIO) -> Capture:
        outer: BinaryIO = raw
        if raw.read(2) == GZIP_MAGIC:
            raw.seek(0)
            outer = gzip.GzipFile(fileobj=raw)  # type: ignore[assignment]
        else:
            raw.seek(0)
        stream = _Counted(outer)
        try:
            magic = stream.read(4)
        except OSError as error:  # a broken gzip stream
            raise CaptureError(f"cannot read: {error}") from None
        if magic not in (*PCAP_MAGICS, PCAPNG_MAGIC):
            raise CaptureError(f"not a pcap or pcapng capture (it starts with {magic.hex()})")
        ng = magic == PCAPNG_MAGIC
        reader = _make_reader(ng, str(path), stream, magic)
        if not ng and not supported(reader.linktype):
            raise CaptureError(_unsupported(reader.linktype))
        return cls(path, raw, stream, reader, ng)

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def done(self) -> float:
        """How much of the file was read, from 0 to 1 (by its compressed size when gzipped)."""
        return min(1.0, self._raw.tell() / self.size) if self.size else 1.0

    def frames(self, warn: Warn) -> Iterator[Frame]:
        """Every frame in order; `warn` hears about a cut last packet."""
        read = self._ng_frame if self._ng else self._pcap_frame
        while True:
            self.number += 1
            try:
                frame = read(warn)
            except EOFError:
                self.number -= 1
                return
            except CaptureError:
                raise
            except Exception as error:  # gzip, struct, scapy's own (Scapy_Exception)
                raise CaptureError(f"packet {self.number}: cannot read: {error}") from None
            yield frame

    def _pcap_frame(self, warn: Warn) -> Frame:
        start = self._stream.mark()
        try:
            data, meta = self._reader._read_packet()
        except EOFError:
            self._cut_header(start, PCAP_RECORD_HEADER, warn)
            raise
        if meta.caplen > max(self._reader.snaplen, MAX_SNAPLEN):
            raise CaptureError(f"packet {self.number}: record length {meta.caplen} is larger "
                               "than any snapshot length: the file is damaged here")  # fmt: skip
        taken = self._stream.position - start - PCAP_RECORD_HEADER
        if taken < meta.caplen:
            warn(f"packet {self.number}: cut short ({taken} of {meta.caplen} bytes): the "
                 "capture ends inside its last packet")  # fmt: skip
        scale = 1e9 if self._reader.nano else 1e6
        return Frame(self.number, meta.sec + meta.usec / scale, self._reader.linktype, data)

    def _ng_frame(self, warn: Warn) -> Frame:
        try:
            data, meta = self._reader._read_packet()
        except EOFError:
            self._ng_end(warn)
            raise
        if not supported(meta.linktype):
            raise CaptureError(f"packet {self.number}: {_unsupported(meta.linktype)}")
        if meta.tshigh is None:  # a simple packet block has no time: the previous one's
            now = self._reader.last_time
        else:
            now = ((meta.tshigh << 32) | meta.tslow) / meta.tsresol
        self._reader.last_time = now
        outgoing = meta.direction == PCAPNG_OUTBOUND
        return Frame(self.number, now, meta.linktype, data, outgoing)

    def _ng_end(self, warn: Warn) -> None:
        """Why a pcapng reader stopped: the end, a cut last block, or damage."""
        start = self._reader.block_start
        if self._stream.position == start:
            return  # the end of the file, between blocks
        if not self._stream.short or self._stream.largest_ask > MAX_BLOCK:
            raise CaptureError(f"packet {self.number}: a damaged pcapng block at byte {start} "
                               "(its lengths do not add up)")  # fmt: skip
        warn(f"packet {self.number}: cut short (the capture ends inside its last block)")

    def _cut_header(self, start: int, length: int, warn: Warn) -> None:
        taken = self._stream.position - start
        if taken:
            warn(f"packet {self.number}: cut short ({taken} of the record header's {length} "
                 "bytes): the capture ends there")  # fmt: skip


def _unsupported(linktype: int) -> str:
    names = ", ".join(sorted(set(LINK_TYPES.values())))
    return f"link type {linktype} is not supported (supported: {names})"


def _make_reader(ng: bool, name: str, stream: _Counted, magic: bytes) -> Any:
    """scapy's raw reader over `stream` (scapy imported here, once: it is slow to import)."""
    logging.getLogger("scapy").setLevel(logging.ERROR)  # its warnings are ours to word
    from scapy.error import Scapy_Exception

    cls = _ng_reader_class() if ng else _pcap_reader_class()
    reader: Any = object.__new__(cls)  # around the metaclass, which would open the file again
    try:
        reader.__init__(name, stream, magic)
    except (Scapy_Exception, EOFError, OSError) as error:
        raise CaptureError(f"not a readable capture: {error}") from None
    reader.block_start = stream.position
    reader.last_time = 0.0
    return reader


def _pcap_reader_class() -> type:
    from scapy.utils import RawPcapReader

    return RawPcapReader


_NG: list[type] = []


def _ng_reader_class() -> type:
    """scapy's pcapng reader, noting where each block starts (to tell a cut from damage)."""
    if _NG:
        return _NG[0]
    from scapy.utils import RawPcapNgReader

    class BlockReader(RawPcapNgReader):
        def _read_block(self, size: int = 65535) -> Any:
            stream: Any = self.f  # a _Counted
            self.block_start = stream.mark()
            return super()._read_block(size)

    _NG.append(BlockReader)
    return BlockReader
