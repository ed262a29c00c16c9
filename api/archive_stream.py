"""GET /containers/ID/archive's body: the facade writes the tar (Engine.archive_get) on a
thread of its own into a bounded queue, the HTTP response sends it as chunks."""

from __future__ import annotations

import io
import queue
import threading
from collections.abc import Iterator


class _QueueWriter(io.RawIOBase):
    """The copy's `stdout`: chunks into a bounded queue; a reader that left (`gone`) makes
    the next write fail, so the copy ends instead of waiting forever."""

    def __init__(self, q: queue.Queue, gone: threading.Event) -> None:
        self.q, self.gone = q, gone

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        while True:
            if self.gone.is_set():
                raise BrokenPipeError("the client went away")
            try:
                self.q.put(bytes(data), timeout=0.5)
                return len(data)
            except queue.Full:
                continue


def read(engine, ref: str, path: str,
         done: threading.Event | None = None) -> Iterator[bytes]:
    """The tar of PATH, as chunks (the copy runs on a thread of its own meanwhile). An error
    after the first chunk ends the stream early (the client sees a short tar). `done` is set
    once the copy is over, the maintenance VM of a stopped container gone too: a client may
    stop reading at the tar's end, before that."""
    q: queue.Queue = queue.Queue(maxsize=64)
    gone = threading.Event()

    def work() -> None:
        try:
            engine.archive_get(ref, path, _QueueWriter(q, gone))
        except Exception:  # noqa: BLE001 - the stream just ends (a short tar)
            pass
        finally:
            if done is not None:
                done.set()
            while not gone.is_set():
                try:
                    q.put(None, timeout=0.5)
                    break
                except queue.Full:
                    continue

    threading.Thread(target=work, daemon=True, name="hv-archive-out").start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            yield item
    finally:
        gone.set()
