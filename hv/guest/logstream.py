"""Host side of the guest agent's virtio-serial ports.

`hv.log` carries framed records of the main process's output: a 16-byte header (byte 0 the
stream, 1 stdout / 2 stderr; bytes 1-3 zero; bytes 4-7 big-endian payload length; bytes 8-15
big-endian guest CLOCK_REALTIME in ns) and the payload.
`hv.status` carries text lines: `started NS`, `error CODE MESSAGE`, `exited CODE NS`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

HEADER = struct.Struct(">B3xIQ")
STDOUT = 1
STDERR = 2


@dataclass(frozen=True)
class Record:
    stream: int
    ts_ns: int
    data: bytes


class LogDecoder:
    """Incremental decoder: feed it bytes as they come, get whole records back."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.consumed = 0  # bytes of the stream turned into records so far

    def feed(self, data: bytes) -> list[Record]:
        self._buf += data
        out: list[Record] = []
        pos = 0
        while len(self._buf) - pos >= HEADER.size:
            stream, length, ts = HEADER.unpack_from(self._buf, pos)
            end = pos + HEADER.size + length
            if len(self._buf) < end:
                break
            out.append(Record(stream, ts, bytes(self._buf[pos + HEADER.size : end])))
            pos = end
        del self._buf[:pos]
        self.consumed += pos
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete record kept for the next feed."""
        return len(self._buf)


def read_records(path: Path, offset: int = 0) -> tuple[list[Record], int]:
    """Whole records of the log file from `offset`, and the offset after the last one.

    A partial record at the end (the guest is still writing it) is left for the next call.
    A missing file has no records.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    dec = LogDecoder()
    records = dec.feed(data)
    return records, offset + dec.consumed


@dataclass
class Status:
    started_ns: int | None = None
    exit_code: int | None = None
    finished_ns: int | None = None
    error: str | None = None
    error_code: int | None = None


def parse_status(text: str) -> Status:
    st = Status()
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        try:
            if word == "started":
                st.started_ns = int(rest)
            elif word == "error":
                code, _, msg = rest.partition(" ")
                st.error_code, st.error = int(code), msg
            elif word == "exited":
                code, _, ts = rest.partition(" ")
                st.exit_code = int(code)
                st.finished_ns = int(ts) if ts else None
        except ValueError:
            continue  # a torn or foreign line: ignore it
    return st


def read_status(path: Path) -> Status:
    """The agent's status file; a missing file gives a Status of all None."""
    try:
        text = Path(path).read_bytes().decode(errors="replace")
    except FileNotFoundError:
        return Status()
    return parse_status(text)
