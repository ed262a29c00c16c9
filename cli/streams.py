"""Moving bytes between the user's terminal and a container's stream (exec or attach).

Raw mode on the host terminal for `-t`, the window size at start and on SIGWINCH, Ctrl-C
and Ctrl-D passed through as bytes, the terminal restored on every exit path, and Docker's
detach keys (ctrl-p ctrl-q) for attach.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import sys
import termios
import tty
from collections.abc import Callable, Iterator

DETACH = b"\x10\x11"  # ctrl-p ctrl-q


def window() -> tuple[int, int]:
    size = shutil.get_terminal_size((80, 24))
    return size.columns, size.lines


@contextlib.contextmanager
def raw_terminal(enabled: bool) -> Iterator[None]:
    fd = sys.stdin.fileno()
    if not (enabled and os.isatty(fd)):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def on_resize(callback: Callable[[int, int], None]) -> Iterator[None]:
    def handler(_signum, _frame) -> None:
        callback(*window())

    old = signal.signal(signal.SIGWINCH, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, old)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def pump_exec(stream, interactive: bool, use_tty: bool) -> int | None:
    """Relay an exec session's stream until the command exits; its exit status (None: the
    guest went away under it)."""
    stdin_fd = sys.stdin.fileno()
    reading = interactive
    if not interactive:
        stream.close_stdin()
    with raw_terminal(use_tty), on_resize(lambda c, r: stream.resize(c, r)
                                          if use_tty else None):
        while True:
            chunks = stream.read()
            if chunks is None:
                break
            for kind, data in chunks:
                _write(1 if kind == 1 else 2, data)
            if chunks:
                continue  # drain before waiting again
            fds = [stream] + ([stdin_fd] if reading else [])
            try:
                ready, _, _ = select.select(fds, [], [], 0.5)
            except InterruptedError:
                continue
            if reading and stdin_fd in ready:
                data = os.read(stdin_fd, 65536)
                if data:
                    stream.write(data)
                else:
                    reading = False
                    if not use_tty:
                        stream.close_stdin()
    return stream.exit_code


def pump_attach(stream, stdin_open: bool, use_tty: bool) -> int | None:
    """Relay an attach stream; the container's exit code, or None when the user detached
    (or the guest went away without saying)."""
    stdin_fd = sys.stdin.fileno()
    reading = stdin_open
    detach_keys = use_tty and os.isatty(stdin_fd)
    pending = b""

    if use_tty:
        stream.resize(*window())
    with raw_terminal(use_tty and stdin_open), on_resize(stream.resize if use_tty
                                                         else lambda c, r: None):
        while True:
            fds = [stream] + ([stdin_fd] if reading else [])
            try:
                ready, _, _ = select.select(fds, [], [], 0.5)
            except InterruptedError:
                continue
            if stream in ready or stream.pending():
                chunks = stream.read()
                if chunks is None:
                    return stream.exit_code
                for kind, data in chunks:
                    _write(1 if kind == 1 else 2, data)
            if reading and stdin_fd in ready:
                data = os.read(stdin_fd, 65536)
                if not data:
                    reading = False
                    stream.close_stdin()
                    continue
                if detach_keys:
                    data = pending + data
                    if DETACH in data:
                        before = data[: data.index(DETACH)]
                        stream.write(before)
                        return None
                    pending = data[-1:] if data.endswith(DETACH[:1]) else b""
                    data = data[: len(data) - len(pending)]
                stream.write(data)
