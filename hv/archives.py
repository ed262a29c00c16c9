"""Docker's archive endpoints on hv's copy machinery: a path's stat (HEAD), a tar of a path
(GET) and a tar extracted into a folder (PUT), for front ends that move tars, not files.

`docker cp` asks for the stat first (`X-Docker-Container-Path-Stat`: name, size, mode as a
Go FileMode, mtime, link target) to apply its path rules on the client side. Running and
stopped containers both work: a stopped one is booted in maintenance mode for the copy
(hv.engine's copy agent). Functions take the engine first, to become Engine methods.
"""

from __future__ import annotations

import io
import posixpath
import queue
import threading
from collections.abc import Iterator

from hv.errors import NotFound
from hv.timefmt import rfc3339

# Go's os.FileMode bits (io/fs), which Docker's PathStat.mode carries
_GO_TYPE = {"d": 1 << 31, "l": 1 << 27, "p": 1 << 25, "s": 1 << 24, "b": 1 << 26,
            "c": (1 << 26) | (1 << 21)}
_SETUID, _SETGID, _STICKY = 1 << 23, 1 << 22, 1 << 20


def go_mode(kind: str, mode: int) -> int:
    """A stat's type and st_mode & 0o7777 as Go's FileMode."""
    out = (mode & 0o777) | _GO_TYPE.get(kind, 0)
    if mode & 0o4000:
        out |= _SETUID
    if mode & 0o2000:
        out |= _SETGID
    if mode & 0o1000:
        out |= _STICKY
    return out


def stat(engine, ref: str, path: str) -> dict:
    """Docker's PathStat of PATH (not following a final symlink, as dockerd's lstat)."""
    from hv.copy import guest_stat

    c = engine.container(ref)
    with engine._agent_for_copy(c) as agent:
        s = guest_stat(agent, path, follow=False)
    if s is None:
        raise NotFound(f"Could not find the file {path} in container {c.name}")
    name = posixpath.basename(path.rstrip("/")) or "/"
    return {"name": name, "size": s.size, "mode": go_mode(s.type, s.mode),
            "mtime": rfc3339(s.mtime_ns / 1e9), "linkTarget": s.link_target}


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
    c = engine.container(ref)

    def work() -> None:
        try:
            engine.copy(f"{c.id}:{path}", "-", stdout=_QueueWriter(q, gone))
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


def write(engine, ref: str, path: str, tar: bytes) -> None:
    """Extract TAR into the folder PATH of the container (running, or stopped)."""
    c = engine.container(ref)
    engine.copy("-", f"{c.id}:{path}", stdin=io.BytesIO(tar))
