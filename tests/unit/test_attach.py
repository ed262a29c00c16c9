"""The host side of the agent's SSH protocol: session command strings and attach frames."""

from __future__ import annotations

import base64
import struct

import pytest

from hv.guest import attach
from hv.guest.attach import (
    FrameDecoder,
    StatResult,
    encode_frame,
    exec_command,
    session_command,
)
from hv.guest.logstream import HEADER


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def test_session_command_encodings() -> None:
    assert session_command("ready") == "ready"
    assert session_command("signal", "15") == f"signal {b64(b'15')}"
    # lists: NUL-terminated items; None, "" and [] are "-"; bytes pass through
    assert session_command("exec", ["a", "b c", ""], None, "", []) == (
        f"exec {b64(b'a' + bytes(1) + b'b c' + bytes(2))} - - -"
    )
    raw = b"\xff/dir"
    assert session_command("tar-in", raw) == "tar-in " + b64(raw)
    cmd = exec_command(["sh", "-c", "echo 'x y'\n"], ["A=1"], "/w d", "1:2")
    verb, *words = cmd.split(" ")
    assert verb == "exec" and len(words) == 4
    assert base64.b64decode(words[0]) == b"sh\0-c\0echo 'x y'\n\0"
    assert base64.b64decode(words[2]) == b"/w d" and base64.b64decode(words[3]) == b"1:2"
    with pytest.raises(ValueError):
        session_command("exec", ["a\0b"])
    with pytest.raises(ValueError):
        session_command("nope")
    with pytest.raises(ValueError):
        exec_command([])


def test_frames_round_trip_in_pieces() -> None:
    data = (
        encode_frame(attach.STDOUT, b"hello", ts_ns=5)
        + attach.resize_frame(24, 80)
        + attach.eof_frame()
        + encode_frame(attach.EXIT, b"42")
    )
    assert data[:16] == struct.pack(">B3xIQ", 1, 5, 5)
    assert HEADER.size == 16
    dec = FrameDecoder()
    frames = []
    for i in range(len(data)):  # one byte at a time
        frames += dec.feed(data[i : i + 1])
    assert dec.pending == 0
    assert [(f.type, f.data) for f in frames] == [
        (attach.STDOUT, b"hello"),
        (attach.RESIZE, b"24 80"),
        (attach.STDIN_EOF, b""),
        (attach.EXIT, b"42"),
    ]
    assert frames[0].ts_ns == 5 and attach.exit_code(frames[-1]) == 42


def test_stat_line() -> None:
    st = StatResult.parse(f"l 0777 0 0 4 1700000000.123456789 {b64(b'../x')}\n")
    assert (st.type, st.mode, st.size, st.link_target) == ("l", 0o777, 4, "../x")
    assert st.mtime_ns == 1700000000123456789
    st = StatResult.parse(b"f 4755 1234 5678 6 1700000000.000000001 -")
    assert (st.mode, st.uid, st.gid, st.mtime_ns, st.link_target) == (
        0o4755, 1234, 5678, 1700000000000000001, "")  # fmt: skip
