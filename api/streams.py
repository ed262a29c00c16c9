"""Moving a container's bytes over a hijacked connection (attach, exec start) and log bodies.

Docker's framing when there is no TTY: an 8-byte header `[stream, 0, 0, 0, len32be]` before
each piece (1 stdout, 2 stderr); with a TTY the bytes go as they are. A client's half-close
(shutdown SHUT_WR, what `docker` does at the end of its stdin) is the end of the process's
stdin, not of the session: output keeps flowing until the process ends, then the server
closes the connection.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
from typing import Protocol

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"


class ByteStream(Protocol):
    """What the facade hands out for exec and attach (hv.engine.streams)."""

    exit_code: int | None

    def fileno(self) -> int: ...
    def read(self) -> list[tuple[int, bytes]] | None: ...
    def write(self, data: bytes) -> None: ...
    def close_stdin(self) -> None: ...
    def close(self) -> None: ...


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def content_type(tty: bool, version: tuple[int, int] | None) -> str:
    """moby: the multiplexed media type from API 1.42 on, for a stream without a TTY."""
    if not tty and (version is None or version >= (1, 42)):
        return MULTIPLEXED
    return RAW


def pump(sock: socket.socket, stream: ByteStream, multiplexed: bool, stdin: bool,
         leftover: bytes = b"", streams: tuple[int, ...] = (1, 2)) -> int | None:
    """Relay until the process ends (its exit code) or the client is gone (None).

    `stdin`: what the client sends is the process's input, and its EOF closes that
    input; otherwise the client's bytes are read and dropped."""
    if stdin and leftover:
        stream.write(leftover)
    reading = True
    while True:
        fds: list = [stream] + ([sock] if reading else [])
        try:
            ready, _, _ = select.select(fds, [], [], 1.0)
        except InterruptedError:
            continue
        if sock in ready:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                reading = False
                if stdin:
                    stream.close_stdin()
            elif stdin:
                stream.write(data)
        out = stream.read()
        if out is None:
            return stream.exit_code
        try:
            for kind, data in out:
                if kind in streams and data:
                    sock.sendall(frame(kind, data) if multiplexed else data)
        except OSError:
            return None  # the client went away; the process goes on (attach) or is dropped


def drain(stream: ByteStream) -> int | None:
    """A detached exec: read and drop its output until it ends; its exit code."""
    with contextlib.suppress(Exception):
        while True:
            select.select([stream], [], [], 1.0)
            if stream.read() is None:
                break
    return stream.exit_code
