"""Reading captures: every frame of scapy-written pcap and pcapng files, streaming; a cut last
packet is a warning, damage an error naming the packet."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
from scapy.packet import Packet
from scapy.utils import RawPcapReader, wrpcap

from portguard.core.replay import Frame
from portguard.io.capture import Capture, CaptureError
from tests.captures import (
    LINK_TYPES,
    LINKTYPE_NUMBERS,
    MX4,
    MX6,
    SUB4,
    SUB6,
    T0,
    framed,
    syn,
    write,
    write_ng,
)


def read(path: Path) -> tuple[list[Frame], list[str]]:
    warnings: list[str] = []
    with Capture.open(path) as capture:
        return list(capture.frames(warnings.append)), warnings


def packets(count: int, version: int = 4) -> list[tuple[float, Packet]]:
    src, dst = (SUB4, MX4) if version == 4 else (SUB6, MX6)
    return [(T0 + i * 0.25, syn(src, dst, sport=40000 + i)) for i in range(count)]


@pytest.mark.parametrize("link", LINK_TYPES)
def test_every_frame_with_its_time_and_link_type(tmp_path: Path, link: str) -> None:
    sent = packets(5, 6 if link == "raw6" else 4)
    path = write(tmp_path / f"{link}.pcap", link, sent)
    frames, warnings = read(path)
    assert warnings == []
    assert [f.number for f in frames] == [1, 2, 3, 4, 5]
    assert [f.now for f in frames] == [moment for moment, _ in sent]
    assert {f.linktype for f in frames} == {LINKTYPE_NUMBERS[link]}
    assert [f.data for f in frames] == [bytes(framed(link, ip)) for _, ip in sent]


def test_pcapng_frames(tmp_path: Path) -> None:
    sent = [*packets(3), (T0 + 9.5, syn(SUB6, MX6))]
    frames, warnings = read(write_ng(tmp_path / "a.pcapng", sent))
    assert warnings == []
    assert [(f.number, f.now, f.linktype) for f in frames] == [
        (1, T0, 1), (2, T0 + 0.25, 1), (3, T0 + 0.5, 1), (4, T0 + 9.5, 1)
    ]  # fmt: skip
    assert not any(f.outgoing for f in frames)


def test_pcapng_outbound_flag_marks_a_frame_outgoing(tmp_path: Path) -> None:
    path = write_ng(tmp_path / "a.pcapng", packets(1))
    data = bytearray(path.read_bytes())
    epb = data.index(struct.pack("<I", 6))  # the enhanced packet block
    length = struct.unpack_from("<I", data, epb + 4)[0]
    flags = struct.pack("<HHI", 2, 4, 2) + struct.pack("<HH", 0, 0)  # epb_flags: outbound
    block = data[epb : epb + length - 4] + flags
    block[4:8] = struct.pack("<I", len(block) + 4)
    data[epb : epb + length] = block + struct.pack("<I", len(block) + 4)
    path.write_bytes(bytes(data))
    frames, _ = read(path)
    assert [f.outgoing for f in frames] == [True]


def test_nanosecond_pcap(tmp_path: Path) -> None:
    frame = framed("ethernet", syn(SUB4, MX4))
    frame.time = T0 + 0.123456789
    wrpcap(str(tmp_path / "ns.pcap"), [frame], nano=True)
    assert [f.now for f in read(tmp_path / "ns.pcap")[0]] == [pytest.approx(T0 + 0.123456789)]


def test_gzipped_pcap(tmp_path: Path) -> None:
    path = write(tmp_path / "a.pcap", "ethernet", packets(2))
    zipped = tmp_path / "a.pcap.gz"
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    assert [f.data for f in read(zipped)[0]] == [f.data for f in read(path)[0]]


def test_reading_streams_one_frame_at_a_time(tmp_path: Path) -> None:
    path = write(tmp_path / "a.pcap", "ethernet", packets(1000))
    with Capture.open(path) as capture:
        frames = capture.frames(lambda _: None)
        next(frames)
        assert capture.done < 0.1  # the reader has not read the file ahead
        assert sum(1 for _ in frames) == 999
        assert capture.done == 1.0


def test_a_cut_last_packet_is_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "a.pcap", "ethernet", packets(3))
    path.write_bytes(path.read_bytes()[:-10])
    frames, warnings = read(path)
    assert len(frames) == 3  # the cut packet is still handed on: its headers are there
    assert warnings == ["packet 3: cut short (44 of 54 bytes): the capture ends inside its "
                        "last packet"]  # fmt: skip


def test_a_cut_record_header_is_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "a.pcap", "ethernet", packets(3))
    path.write_bytes(path.read_bytes() + b"\x00" * 7)
    frames, warnings = read(path)
    assert len(frames) == 3
    assert warnings == ["packet 4: cut short (7 of the record header's 16 bytes): the capture "
                        "ends there"]  # fmt: skip


def test_a_cut_pcapng_block_is_a_warning(tmp_path: Path) -> None:
    path = write_ng(tmp_path / "a.pcapng", packets(3))
    path.write_bytes(path.read_bytes()[:-10])
    frames, warnings = read(path)
    assert len(frames) == 2
    assert warnings == ["packet 3: cut short (the capture ends inside its last block)"]


def test_a_damaged_pcap_record_is_an_error_naming_the_packet(tmp_path: Path) -> None:
    path = write(tmp_path / "a.pcap", "ethernet", packets(5))
    data = bytearray(path.read_bytes())
    record = 24 + 2 * (16 + 54)  # the third record's header
    data[record + 8 : record + 12] = b"\xff\xff\xff\x7f"  # its captured length
    path.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match=r"^packet 3: record length 2147483647 is larger"):
        read(path)


def test_a_damaged_pcapng_block_is_an_error_naming_the_packet(tmp_path: Path) -> None:
    path = write_ng(tmp_path / "a.pcapng", packets(4))
    data = bytearray(path.read_bytes())
    third = [i for i in range(0, len(data), 4) if data[i : i + 4] == struct.pack("<I", 6)][2]
    data[third + 4 : third + 8] = struct.pack("<I", 8)  # a block length below the minimum
    path.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match=r"^packet 3: a damaged pcapng block at byte \d+"):
        read(path)


@pytest.mark.parametrize("content", [b"", b"hello world, not a capture", b"\xa1\xb2\xc3\xd4"])
def test_garbage_is_not_a_capture(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError, match=r"not a pcap or pcapng capture|not a readable capture"):
        read(path)


def test_an_unsupported_link_type(tmp_path: Path) -> None:
    path = write(tmp_path / "a.pcap", "ethernet", packets(1))
    data = bytearray(path.read_bytes())
    data[20:24] = struct.pack("<I", 105)  # 802.11
    path.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match="link type 105 is not supported"):
        read(path)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="cannot open: No such file"):
        read(tmp_path / "nothing.pcap")


def test_frames_match_scapy_reading_the_same_file(tmp_path: Path) -> None:
    path = write(tmp_path / "a.pcap", "dot1q", packets(20))
    with RawPcapReader(str(path)) as reader:
        theirs = [data for data, _ in reader]
    assert [f.data for f in read(path)[0]] == theirs
