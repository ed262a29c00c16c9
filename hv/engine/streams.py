"""A running process's stdio as the Engine API models it: bytes in, (stream, bytes) out,
resize, close stdin, an exit code at the end.

Two kinds behind one shape: `AttachStream` (the main process, through the agent's attach
frames) and `ExecStream` (an exec session's channel). A front end selects on `fileno()`
and calls `read()`; neither knows the agent's protocol or its transports.
"""

from __future__ import annotations

from collections.abc import Callable

STDOUT = 1
STDERR = 2


class _Stream:
    def __init__(self, agent, channel, on_exit: Callable[[int | None], None] | None = None
                 ) -> None:
        self._agent = agent
        self._ch = channel
        self._on_exit = on_exit
        self.exit_code: int | None = None  # once `done`: the process's code (None: lost)
        self.done = False

    def fileno(self) -> int:
        return self._ch.fileno()

    def _finish(self, code: int | None) -> None:
        if not self.done:
            self.done = True
            self.exit_code = code
            if self._on_exit is not None:
                self._on_exit(code)

    def close(self) -> None:
        """Let the process go (an attach detaches; an exec session ends with its channel)."""
        try:
            self._ch.close()
        finally:
            self._agent.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AttachStream(_Stream):
    """The main process of a running container (`attach`); `done` when it exited."""

    def __init__(self, container, agent, channel) -> None:
        from hv.guest.attach import FrameDecoder

        super().__init__(agent, channel)
        self.container = container
        self._decoder = FrameDecoder()

    def pending(self) -> bool:
        return self._ch.recv_ready()

    def read(self) -> list[tuple[int, bytes]]:
        """What is there now (blocks for the next bytes when nothing is: select on fileno()
        first): (stream, data) pairs; empty and `done` at the end."""
        from hv.guest import attach as proto

        if self.done:
            return []
        data = self._ch.recv(65536)
        if not data:
            self._finish(None)  # the guest went away without an exit frame
            return []
        out = []
        for frame in self._decoder.feed(data):
            if frame.type in (STDOUT, STDERR):
                out.append((frame.type, frame.data))
            elif frame.type == proto.EXIT:
                self._finish(proto.exit_code(frame))
        return out

    def write(self, data: bytes) -> None:
        from hv.guest.attach import stdin_frame

        if data:
            self._ch.sendall(stdin_frame(data))

    def close_stdin(self) -> None:
        from hv.guest.attach import eof_frame

        self._ch.sendall(eof_frame())

    def resize(self, cols: int, rows: int) -> None:
        from hv.guest.attach import resize_frame

        self._ch.sendall(resize_frame(rows, cols))


class ExecStream(_Stream):
    """One exec session's process; `done` once its output is all read and it exited."""

    def __init__(self, agent, channel, on_exit: Callable[[int | None], None] | None = None
                 ) -> None:
        super().__init__(agent, channel, on_exit)

    def read(self) -> list[tuple[int, bytes]]:
        """What is there now, never blocking: (stream, data) pairs; `done` at the end."""
        ch = self._ch
        out = []
        while ch.recv_ready():
            out.append((STDOUT, ch.recv(65536)))
        while ch.recv_stderr_ready():
            out.append((STDERR, ch.recv_stderr(65536)))
        if not out and ch.eof_received and ch.exit_status_ready():
            # all output is in: sshd may send the status before the last bytes
            code = ch.recv_exit_status()
            self._finish(None if code < 0 else code)
        return out

    def write(self, data: bytes) -> None:
        if data:
            self._ch.sendall(data)

    def close_stdin(self) -> None:
        self._ch.shutdown_write()

    def resize(self, cols: int, rows: int) -> None:
        self._ch.resize_pty(width=cols, height=rows)
