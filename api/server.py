"""The listening socket and its accept loop: one thread per connection, a clean stop.

A connection is served by a thread of its own because most of Docker's requests block for
as long as something happens in a VM (wait, logs -f, attach, a pull): a thread per
connection keeps each of them a plain blocking loop, and the engine's libvirt calls run in
forked children anyway. Addresses: `unix:///path` (0600, or 0660 with group `hv` when
that group exists) or `tcp://127.0.0.1:PORT` (loopback only: there is no TLS yet, and an
unauthenticated Docker socket on a network is root on the host for anyone).
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import logging
import os
import select
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from api.http import Conn, Request, Response
from hv.errors import UsageError

LOG = logging.getLogger("hv.api")


@dataclass
class Address:
    kind: str  # "unix" | "tcp"
    path: Path | None = None
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.kind == "unix" else f"tcp://{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """`unix:///path`, `/path`, or `tcp://127.0.0.1:PORT` (loopback only)."""
    if text.startswith("unix://"):
        path = text[len("unix://"):]
        if not path.startswith("/"):
            raise UsageError(f"invalid address {text!r}: a unix socket needs an absolute path",
                             hint="use unix:///path/to/hv.sock")
        return Address("unix", Path(path))
    if text.startswith("/"):
        return Address("unix", Path(text))
    if text.startswith("tcp://"):
        rest = text[len("tcp://"):].rstrip("/")
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise UsageError(f"invalid address {text!r}: want tcp://127.0.0.1:PORT",
                             hint="give the port, e.g. tcp://127.0.0.1:2375")
        host = host.strip("[]") or "127.0.0.1"
        if host == "localhost":
            host = "127.0.0.1"
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise UsageError(
                f"refusing to listen on {host}: the Engine API has no TLS yet, and an "
                "unauthenticated Docker API on a network gives anyone who reaches it the host",
                hint="listen on tcp://127.0.0.1:PORT or a unix socket (ssh -L to reach it "
                     "from elsewhere)")
        return Address("tcp", host=host, port=int(port))
    raise UsageError(f"unsupported address {text!r}",
                     hint="use unix:///path/to/hv.sock or tcp://127.0.0.1:PORT")


def _hv_group() -> int | None:
    try:
        return grp.getgrnam("hv").gr_gid
    except KeyError:
        return None


def listen(addr: Address) -> socket.socket:
    """Bind and listen. A unix socket left by a dead server is replaced; one that answers
    means another server is running there."""
    if addr.kind == "tcp":
        family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr.host, addr.port))
        except OSError as e:
            s.close()
            raise UsageError(f"cannot listen on {addr}: {e.strerror}",
                             hint="pick another port") from None
        addr.port = s.getsockname()[1]
        s.listen(128)
        return s
    assert addr.path is not None
    path = addr.path
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise UsageError(f"{path} exists and is not a socket", hint="choose another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise UsageError(f"another server is listening on {path}",
                             hint="stop it first, or give another ADDRESS")
        except OSError:
            path.unlink()  # left by a server that died
        finally:
            probe.close()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    gid = _hv_group()
    # never reachable by others, not even between bind and chmod
    old = os.umask(0o117 if gid is not None else 0o177)
    try:
        s.bind(str(path))
    except OSError as e:
        s.close()
        raise UsageError(f"cannot listen on {path}: {e.strerror}",
                         hint="check the folder's permissions") from None
    finally:
        os.umask(old)
    if gid is not None:
        with contextlib.suppress(OSError):
            os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    else:
        os.chmod(path, 0o600)
    s.listen(128)
    return s


class Server:
    """Accepts connections until `stop()`; each one is served on a thread of its own."""

    def __init__(self, addr: Address, handle: Callable[[Request], Response],
                 on_error: Callable[[Request | None, BaseException], Response]) -> None:
        self.addr = addr
        self.handle, self.on_error = handle, on_error
        self.sock = listen(addr)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def stop(self) -> None:
        """Safe from a signal handler: wakes the accept loop, which ends."""
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")

    def serve_forever(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self.sock, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                try:
                    conn, _ = self.sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                 name="hv-api-conn").start()
        finally:
            self.close()

    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.add(sock)
        try:
            Conn(sock, self.handle, self.on_error, _log_request).serve()
        finally:
            with self._lock:
                self._conns.discard(sock)

    def close(self) -> None:
        """Stop listening, remove the socket file, drop open connections (the containers
        they were about are VMs of their own and keep running)."""
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.addr.kind == "unix" and self.addr.path is not None:
            with contextlib.suppress(OSError):
                self.addr.path.unlink()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _log_request(req: Request, status: int) -> None:
    LOG.info("%s %s -> %d", req.method, req.target, status)
    if req.body and LOG.isEnabledFor(logging.DEBUG):
        LOG.debug("  body: %s", req.body[:4096].decode(errors="replace"))
