"""A running process's stdio as the Engine API models it: bytes in, (stream, bytes) out,
resize, close stdin, an exit code at the end.

Two kinds behind one shape: `AttachStream` (the main process, through the agent's attach
frames) and `ExecStream` (an exec session's channel). A front end selects on `fileno()`
and calls `read()`, which never blocks: a list of (stream, bytes) pairs (empty: nothing
yet), None once the process ended and all its output was read (`exit_code` then says how;
None: the guest went away). Neither front end knows the agent's protocol or transports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

STDOUT = 1
STDERR = 2


class _Stream:
    def __init__(self, agent, channel, tty: bool,
                 on_exit: Callable[[int | None], None] | None = None) -> None:
        self._agent = agent
        self._ch = channel
        self.tty = tty
        self._on_exit = on_exit
        self._stdin_closed = False
        self.exit_code: int | None = None
        self.done = False

    def fileno(self) -> int:
        return self._ch.fileno()

    def _finish(self, code: int | None) -> None:
        if not self.done:
            self.done = True
            self.exit_code = None if code is not None and code < 0 else code
            if self._on_exit is not None:
                self._on_exit(self.exit_code)

    def write(self, data: bytes) -> None:
        if data and not self._stdin_closed:
            self._send(data)

    def _send(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Let the process go (an attach detaches; an exec session ends with its channel:
        one still running is recorded as ended, its code unknown)."""
        try:
            with contextlib.suppress(Exception):
                self._ch.close()
            with contextlib.suppress(Exception):
                self._agent.close()
        finally:
            self._finish(None)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AttachStream(_Stream):
    """The main process of a running container (`attach`)."""

    def __init__(self, container, agent, channel) -> None:
        from hv.guest.attach import FrameDecoder

        super().__init__(agent, channel, container.record.tty)
        self.container = container
        self._decoder = FrameDecoder()

    def pending(self) -> bool:
        return self._ch.recv_ready()

    def read(self) -> list[tuple[int, bytes]] | None:
        from hv.guest import attach as proto

        if self.done:
            return None
        out: list[tuple[int, bytes]] = []
        ch = self._ch
        while not self.done and ch.recv_ready():
            data = ch.recv(65536)
            if not data:
                break
            for frame in self._decoder.feed(data):
                if frame.type in (STDOUT, STDERR):
                    out.append((frame.type, frame.data))
                elif frame.type == proto.EXIT:
                    self.done = True  # after the output that came before it
                    self.exit_code = proto.exit_code(frame)
        if out:
            return out
        if self.done or ch.eof_received or getattr(ch, "closed", False):
            self._finish(self.exit_code)  # no exit frame: the guest went away
            return None
        return []

    def _send(self, data: bytes) -> None:
        from hv.guest.attach import stdin_frame

        self._ch.sendall(stdin_frame(data))

    def close_stdin(self) -> None:
        """EOF on the main process's stdin (a TTY gets ^D, as a terminal would send)."""
        from hv.guest.attach import eof_frame, stdin_frame

        if not self._stdin_closed:
            self._stdin_closed = True
            self._ch.sendall(stdin_frame(b"\x04") if self.tty else eof_frame())

    def resize(self, cols: int, rows: int) -> None:
        from hv.guest.attach import resize_frame

        if self.tty:
            self._ch.sendall(resize_frame(rows, cols))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ch.close()
        with contextlib.suppress(Exception):
            self._agent.close()
        self.done = True  # detached: the main process goes on


class ExecStream(_Stream):
    """One exec session's process: stdout and stderr apart (one stream with a TTY)."""

    def read(self) -> list[tuple[int, bytes]] | None:
        if self.done:
            return None
        ch, out = self._ch, []
        while ch.recv_ready():
            out.append((STDOUT, ch.recv(65536)))
        while ch.recv_stderr_ready():
            out.append((STDERR, ch.recv_stderr(65536)))
        if out:
            return out
        if ch.eof_received and ch.exit_status_ready():
            # all output is in: sshd may send the status before the last bytes
            self._finish(ch.recv_exit_status())
            return None
        if getattr(ch, "closed", False):
            self._finish(None)
            return None
        return []

    def _send(self, data: bytes) -> None:
        self._ch.sendall(data)

    def close_stdin(self) -> None:
        """EOF on the command's stdin (a TTY gets ^D, as a terminal would send)."""
        if not self._stdin_closed:
            self._stdin_closed = True
            if self.tty:
                self._ch.sendall(b"\x04")
            else:
                self._ch.shutdown_write()

    def resize(self, cols: int, rows: int) -> None:
        if self.tty:
            self._ch.resize_pty(width=cols, height=rows)
