"""Moving bytes between the user's terminal and a guest: exec channels and attach frames.

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


def pump_exec(ch, interactive: bool, use_tty: bool) -> int:
    """Relay an exec channel until the command exits; its exit status."""
    stdin_fd = sys.stdin.fileno()
    reading = interactive
    if not interactive:
        ch.shutdown_write()
    with raw_terminal(use_tty), on_resize(lambda c, r: ch.resize_pty(width=c, height=r)
                                          if use_tty else None):
        while True:
            if ch.recv_ready():
                _write(1, ch.recv(65536))
                continue
            if ch.recv_stderr_ready():
                _write(2, ch.recv_stderr(65536))
                continue
            if ch.eof_received and ch.exit_status_ready():
                break  # all output is in: sshd may send the status before the last bytes
            fds = [ch] + ([stdin_fd] if reading else [])
            try:
                ready, _, _ = select.select(fds, [], [], 0.5)
            except InterruptedError:
                continue
            if reading and stdin_fd in ready:
                data = os.read(stdin_fd, 65536)
                if data:
                    ch.sendall(data)
                else:
                    reading = False
                    if not use_tty:
                        ch.shutdown_write()
        while ch.recv_ready():
            _write(1, ch.recv(65536))
        while ch.recv_stderr_ready():
            _write(2, ch.recv_stderr(65536))
    return ch.recv_exit_status()


def pump_attach(ch, stdin_open: bool, use_tty: bool) -> int | None:
    """Relay attach frames; the container's exit code, or None when the user detached."""
    from hv.guest import attach as proto

    decoder = proto.FrameDecoder()
    stdin_fd = sys.stdin.fileno()
    reading = stdin_open
    detach_keys = use_tty and os.isatty(stdin_fd)
    pending = b""

    def resize(cols: int, rows: int) -> None:
        ch.sendall(proto.resize_frame(rows, cols))

    if use_tty:
        resize(*window())
    with raw_terminal(use_tty and stdin_open), on_resize(resize if use_tty else lambda c, r: None):
        while True:
            fds = [ch] + ([stdin_fd] if reading else [])
            try:
                ready, _, _ = select.select(fds, [], [], 0.5)
            except InterruptedError:
                continue
            if ch in ready or ch.recv_ready():
                data = ch.recv(65536)
                if not data:
                    return None  # the guest went away without an exit frame
                for frame in decoder.feed(data):
                    if frame.type == proto.STDOUT:
                        _write(1, frame.data)
                    elif frame.type == proto.STDERR:
                        _write(2, frame.data)
                    elif frame.type == proto.EXIT:
                        return proto.exit_code(frame)
            if reading and stdin_fd in ready:
                data = os.read(stdin_fd, 65536)
                if not data:
                    reading = False
                    ch.sendall(proto.eof_frame())
                    continue
                if detach_keys:
                    data = pending + data
                    if DETACH in data:
                        before = data[: data.index(DETACH)]
                        if before:
                            ch.sendall(proto.stdin_frame(before))
                        return None
                    pending = data[-1:] if data.endswith(DETACH[:1]) else b""
                    data = data[: len(data) - len(pending)]
                if data:
                    ch.sendall(proto.stdin_frame(data))
