"""Host side of the guest agent's SSH protocol: session commands and attach frames.

Every SSH channel to a container's sshd runs `hv-init --session`, which reads
`$SSH_ORIGINAL_COMMAND` = `VERB ARG...`: words separated by single spaces, every ARG standard
base64 of its bytes (so any byte survives; an empty ARG is `-`); a list is base64 of its
NUL-terminated items. `session_command` builds that string.

The `attach` verb relays the channel to PID 1's attach socket, which speaks frames with the
16-byte header of hv.log (logstream.HEADER: type, 3 zero bytes, BE u32 length, BE u64 ns):

    guest -> host   STDOUT (1), STDERR (2): output; EXIT (3): ASCII exit code, the last frame
    host -> guest   STDIN (0): data; STDIN_EOF (4): close the main process's stdin (ignored
                    with a tty: send b"\\x04"); RESIZE (5): b"ROWS COLS"
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from dataclasses import dataclass

from hv.guest.logstream import HEADER, LogDecoder

STDIN = 0
STDOUT = 1
STDERR = 2
EXIT = 3
STDIN_EOF = 4
RESIZE = 5

# Verbs of `hv-init --session`.
VERBS = ("exec", "signal", "attach", "top", "stat", "tar-out", "tar-in", "hosts", "nics", "resume",
         "ready")
EXIT_BAD_REQUEST = 125  # unknown verb or malformed arguments


@dataclass(frozen=True)
class Frame:
    type: int
    ts_ns: int
    data: bytes


def encode_frame(type: int, payload: bytes = b"", ts_ns: int | None = None) -> bytes:
    """One frame: header + payload."""
    if ts_ns is None:
        ts_ns = time.time_ns()
    return HEADER.pack(type, len(payload), ts_ns) + payload


def stdin_frame(data: bytes) -> bytes:
    return encode_frame(STDIN, data)


def eof_frame() -> bytes:
    return encode_frame(STDIN_EOF)


def resize_frame(rows: int, cols: int) -> bytes:
    return encode_frame(RESIZE, f"{int(rows)} {int(cols)}".encode())


class FrameDecoder:
    """Incremental decoder of attach frames (hv.log's framing, so LogDecoder does the work)."""

    def __init__(self) -> None:
        self._records = LogDecoder()

    def feed(self, data: bytes) -> list[Frame]:
        return [Frame(r.stream, r.ts_ns, r.data) for r in self._records.feed(data)]

    @property
    def pending(self) -> int:
        return self._records.pending


def exit_code(frame: Frame) -> int:
    """The exit code an EXIT frame carries."""
    return int(frame.data.decode("ascii").strip())


Arg = bytes | str | list[str] | tuple[str, ...] | None


def _arg_bytes(arg: Arg) -> bytes:
    if arg is None:
        return b""
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode("utf-8", "surrogateescape")  # argv is bytes on Linux
    if isinstance(arg, (list, tuple)):
        out = bytearray()
        for item in arg:
            b = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else bytes(item)
            if b"\0" in b:
                raise ValueError(f"list item {item!r} contains a NUL byte")
            out += b + b"\0"
        return bytes(out)
    raise TypeError(f"unsupported argument type {type(arg).__name__}")


def encode_arg(arg: Arg) -> str:
    """One ARG word: base64 of the bytes, `-` when empty (None, "", b"", [])."""
    b = _arg_bytes(arg)
    return base64.b64encode(b).decode("ascii") if b else "-"


def session_command(verb: str, *args: Arg) -> str:
    """`$SSH_ORIGINAL_COMMAND` for `hv-init --session`.

    str/bytes -> the bytes; list -> NUL-terminated items; None or empty -> `-`.
    E.g. session_command("exec", ["ls", "-l"], ["A=1"], None, "nobody").
    """
    if verb not in VERBS:
        raise ValueError(f"unknown session verb {verb!r}")
    return " ".join([verb, *(encode_arg(a) for a in args)])


def exec_command(
    argv: Iterable[str],
    env: Iterable[str] = (),
    workdir: str | None = None,
    user: str | None = None,
) -> str:
    """`exec`: argv, extra env ("K=V", later wins), workdir/user (None: the container's)."""
    argv = list(argv)
    if not argv:
        raise ValueError("argv must not be empty")
    return session_command("exec", argv, list(env), workdir, user)


@dataclass(frozen=True)
class StatResult:
    """One line of `stat`: `TYPE MODE UID GID SIZE MTIME LINKTARGET_BASE64`."""

    type: str  # f d l c b p s
    mode: int  # permission bits incl. setuid/setgid/sticky (st_mode & 0o7777)
    uid: int
    gid: int
    size: int
    mtime_ns: int
    link_target: str  # "" unless a symlink (lstat)

    @classmethod
    def parse(cls, line: str | bytes) -> StatResult:
        if isinstance(line, bytes):
            line = line.decode()
        t, mode, uid, gid, size, mtime, link = line.split()
        sec, _, frac = mtime.partition(".")
        ns = int(sec) * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])
        target = "" if link == "-" else base64.b64decode(link).decode(errors="surrogateescape")
        return cls(t, int(mode, 8), int(uid), int(gid), int(size), ns, target)
