"""The listening socket and its accept loop: one thread per connection, a clean stop.

A connection is served by a thread of its own because most of Docker's requests block for
as long as something happens in a VM (wait, logs -f, attach, a pull): a thread per
connection keeps each of them a plain blocking loop, and the engine's libvirt calls run in
forked children anyway. Addresses: `unix:///path` (0600, or 0660 with group `hv` when
that group exists) or `tcp://HOST:PORT`. An unauthenticated Docker socket on a network is
root on the host for anyone, so TCP is loopback only unless the service has TLS with client
certificates (mutual TLS, dockerd's `--tlsverify`): a certificate and key plus the CA whose
client certificates are accepted. A certificate and key alone (encryption, no client
authentication) are for loopback too. The TLS handshake runs on the connection's thread,
so a slow or silent client never holds up accept.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import logging
import os
import select
import socket
import ssl
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
    tls: bool = False

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.kind == "unix" else f"tcp://{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate (chain) and key; the CA of accepted clients."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @property
    def any(self) -> bool:
        return any((self.cert, self.key, self.ca))

    @property
    def mutual(self) -> bool:
        return all((self.cert, self.key, self.ca))


def parse_address(text: str, tls: TlsFiles | None = None) -> Address:
    """`unix:///path`, `/path`, or `tcp://HOST:PORT`: loopback, or any host with mutual
    TLS (`tls`: all three files)."""
    tls = tls or TlsFiles()
    addr = _parse(text)
    if tls.any:
        if addr.kind != "tcp":
            raise UsageError(f"--tls-cert, --tls-key and --tls-ca are for tcp:// addresses, "
                             f"not {addr}",
                             hint="listen on tcp://HOST:PORT, or drop the TLS flags for a "
                                  "unix socket (its file mode is its access control)")
        if not (tls.cert and tls.key):
            raise UsageError("TLS needs both --tls-cert and --tls-key",
                             hint="give the server's certificate and its private key (PEM)")
        addr.tls = True
    if addr.kind == "tcp" and not addr.loopback and not tls.mutual:
        have = "TLS without client certificates" if tls.any else "no TLS"
        raise UsageError(
            f"refusing to listen on {addr.host} with {have}: an unauthenticated Docker API on "
            "a network gives anyone who reaches it the host",
            hint="give --tls-cert, --tls-key and --tls-ca (the CA of the clients' "
                 "certificates: mutual TLS), or listen on tcp://127.0.0.1:PORT or a unix socket")
    return addr


def tls_context(tls: TlsFiles) -> ssl.SSLContext:
    """The server's context: TLS 1.2 or newer; client certificates required when a CA is
    given. A file that cannot be read or does not match is a UsageError, before listening."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    assert tls.cert is not None and tls.key is not None
    try:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    except FileNotFoundError as e:
        raise UsageError(f"cannot read {e.filename or tls.cert}: no such file",
                         hint="check the --tls-cert and --tls-key paths") from None
    except (ssl.SSLError, OSError) as e:
        raise UsageError(f"cannot use --tls-cert {tls.cert} with --tls-key {tls.key}: "
                         f"{getattr(e, 'reason', None) or e}",
                         hint="give a PEM certificate and the PEM private key that matches it") \
            from None
    if tls.ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(tls.ca))
        except (ssl.SSLError, OSError) as e:
            raise UsageError(f"cannot read --tls-ca {tls.ca}: "
                             f"{getattr(e, 'reason', None) or e.strerror or e}",
                             hint="give the PEM certificate of the CA that signed the clients' "
                                  "certificates") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _parse(text: str) -> Address:
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
        return Address("tcp", host=host, port=int(port))  # a name is not loopback
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

    HANDSHAKE_TIMEOUT = 30.0

    def __init__(self, addr: Address, handle: Callable[[Request], Response],
                 on_error: Callable[[Request | None, BaseException], Response],
                 streamed: Callable[[str, str], bool] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        """`streamed`: which requests' bodies go to their handler as a stream (api.http.Conn);
        `tls`: a server context (`tls_context`) every connection is wrapped in."""
        self.addr = addr
        self.handle, self.on_error, self.streamed = handle, on_error, streamed
        self.tls = tls
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
            if self.tls is not None:
                wrapped = self._handshake(sock)
                if wrapped is None:
                    return
                with self._lock:
                    self._conns.discard(sock)
                    self._conns.add(wrapped)
                sock = wrapped
            Conn(sock, self.handle, self.on_error, _log_request, self.streamed).serve()
        finally:
            with self._lock:
                self._conns.discard(sock)

    def _handshake(self, sock: socket.socket) -> ssl.SSLSocket | None:
        """The TLS handshake, on this connection's thread; None (and the socket closed) when
        it fails: no certificate, one from another CA, not TLS at all, too slow."""
        assert self.tls is not None
        peer = _peer(sock)
        sock.settimeout(self.HANDSHAKE_TIMEOUT)
        try:
            wrapped = self.tls.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            LOG.warning("TLS handshake with %s failed: %s", peer,
                        getattr(e, "reason", None) or e)
            with contextlib.suppress(OSError):
                sock.close()
            return None
        wrapped.settimeout(None)
        return wrapped

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


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except (OSError, ValueError):
        return "a client"
    return f"{host}:{port}"


def _log_request(req: Request, status: int) -> None:
    LOG.info("%s %s -> %d", req.method, req.target, status)
    if req.body and LOG.isEnabledFor(logging.DEBUG):
        LOG.debug("  body: %s", req.body[:4096].decode(errors="replace"))
