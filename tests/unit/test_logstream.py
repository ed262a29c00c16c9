"""Decoding the guest agent's hv.log frames and hv.status lines."""

from __future__ import annotations

import struct
from pathlib import Path

from hv.guest.logstream import LogDecoder, Record, Status, read_records, read_status


def frame(stream: int, ts: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + struct.pack(">IQ", len(data), ts) + data


RECS = [
    Record(1, 1_700_000_000_123_456_789, b"hello\n"),
    Record(2, 1_700_000_000_223_456_789, b"oops\n"),
    Record(1, 1_700_000_001_000_000_000, b""),
    Record(1, 2**63 + 5, bytes(range(256)) * 200),
]
STREAM = b"".join(frame(r.stream, r.ts_ns, r.data) for r in RECS)


def test_header_layout() -> None:
    raw = frame(2, 0x0102030405060708, b"xy")
    assert raw[:16] == b"\x02\0\0\0\0\0\0\x02\x01\x02\x03\x04\x05\x06\x07\x08"
    assert LogDecoder().feed(raw) == [Record(2, 0x0102030405060708, b"xy")]


def test_whole_stream() -> None:
    dec = LogDecoder()
    assert dec.feed(STREAM) == RECS
    assert dec.pending == 0 and dec.consumed == len(STREAM)


def test_byte_by_byte_keeps_partial_frames() -> None:
    dec = LogDecoder()
    out: list[Record] = []
    for i in range(len(STREAM)):
        out += dec.feed(STREAM[i : i + 1])
    assert out == RECS


def test_arbitrary_chunks() -> None:
    dec = LogDecoder()
    out: list[Record] = []
    pos = 0
    for size in [3, 17, 1, 100, 5000, 7, 10**6]:
        out += dec.feed(STREAM[pos : pos + size])
        pos += size
    assert out == RECS


def test_read_records_offsets(tmp_path: Path) -> None:
    log = tmp_path / "log"
    assert read_records(log) == ([], 0)
    first = frame(1, 1, b"a") + frame(2, 2, b"b")
    log.write_bytes(first + frame(1, 3, b"partial")[:10])
    recs, off = read_records(log)
    assert recs == [Record(1, 1, b"a"), Record(2, 2, b"b")]
    assert off == len(first)
    with log.open("ab") as f:
        f.write(frame(1, 3, b"partial")[10:])
    recs, off2 = read_records(log, off)
    assert recs == [Record(1, 3, b"partial")]
    assert off2 == log.stat().st_size
    assert read_records(log, off2) == ([], off2)


def test_status_missing(tmp_path: Path) -> None:
    assert read_status(tmp_path / "nope") == Status(None, None, None, None, None)


def test_status_lines(tmp_path: Path) -> None:
    p = tmp_path / "status"
    p.write_text("started 1700000000000000001\n")
    assert read_status(p) == Status(1700000000000000001, None, None, None, None)
    p.write_text("started 5\nexited 137 9\n")
    assert read_status(p) == Status(5, 137, 9, None, None)


def test_status_error(tmp_path: Path) -> None:
    p = tmp_path / "status"
    p.write_text('error 127 exec: "foo": executable file not found in $PATH\nexited 127 42\n')
    st = read_status(p)
    assert st.error_code == 127
    assert st.error == 'exec: "foo": executable file not found in $PATH'
    assert (st.exit_code, st.finished_ns, st.started_ns) == (127, 42, None)


def test_status_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "status"
    p.write_text("started 5\nexited 0 12")  # no newline yet: still parsed
    assert read_status(p).exit_code == 0
    p.write_text("started 5\nexi")
    assert read_status(p) == Status(5, None, None, None, None)
