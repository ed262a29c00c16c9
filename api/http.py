"""HTTP/1.1 on one client socket, with h11, and the responses handlers return.

Why h11: Docker's attach and exec-start take the connection over (`Connection: Upgrade`,
`Upgrade: tcp` → `101 UPGRADED`, then raw bytes both ways, where a client's half-close of
its side means "stdin ended" while output keeps flowing). h11 is a small, well-kept HTTP/1.1
state machine that does no I/O of its own: it has a SWITCHED_PROTOCOL state and hands back
the bytes it read past the request (`trailing_data`), so after the 101 the socket is ours,
untouched. aiohttp closes the transport on a half-close and buffers upgraded bytes, and
http.server parses headers itself with no notion of a protocol switch; with h11 and one
thread per connection, a hijacked stream is a plain blocking socket loop.
"""

from __future__ import annotations

import io
import json
import select
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

import h11

MAX_BODY = 64 * 1024 * 1024  # a create body or a tar for an archive PUT
MAX_HEADERS = 256 * 1024  # X-Registry-Auth and X-Registry-Config can be long


class HttpError(Exception):
    """An error answered with Docker's JSON shape: {"message": ...}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    target: str
    path: str  # without the /vX.Y prefix
    version: tuple[int, int] | None  # the prefix's, None when absent
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    sock: socket.socket
    # the body as a stream, for the routes that take one (an image tarball to load): then
    # `body` is empty and nothing limits the size
    reader: io.RawIOBase | None = None

    @classmethod
    def make(cls, method: str, target: str, headers: dict[str, str], body: bytes,
             sock: socket.socket, reader: io.RawIOBase | None = None) -> Request:
        parts = urlsplit(target)
        return cls(method, target, unquote(parts.path), None,
                   parse_qs(parts.query, keep_blank_values=True), headers, body, sock, reader)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str, default: bool = False) -> bool:
        """Docker's boolean query values: 1/true/True/yes; an empty value counts as false."""
        value = self.arg(name)
        if value is None:
            return default
        return value.strip().lower() in ("1", "true", "yes", "on")

    def integer(self, name: str, default: int | None = None) -> int | None:
        value = self.arg(name)
        if value in (None, ""):
            return default
        try:
            return int(value)
        except ValueError:
            raise HttpError(400, f"invalid value for {name}: {value!r}: not an integer") from None

    def json(self, default: object = None) -> object:
        """The JSON body (`default` when there is none); malformed JSON is a 400."""
        if not self.body.strip():
            return default
        try:
            return json.loads(self.body)
        except ValueError as e:
            raise HttpError(400, f"invalid JSON in the request body: {e}") from None

    def json_object(self) -> dict:
        data = self.json({})
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise HttpError(400, "the request body must be a JSON object")
        return data

    def filters(self) -> dict[str, list[str]]:
        """Docker's `filters` query: {"key": ["v", ...]} or the older {"key": {"v": true}}."""
        text = self.arg("filters")
        if not text:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            raise HttpError(400, f"invalid filter: {text!r} is not JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "invalid filter: not a JSON object")
        out: dict[str, list[str]] = {}
        for key, values in data.items():
            if isinstance(values, dict):
                values = [k for k, v in values.items() if v]
            elif isinstance(values, str):
                values = [values]
            if not isinstance(values, list):
                raise HttpError(400, f"invalid filter {key!r}")
            out[str(key)] = [str(v) for v in values]
        return out

    @property
    def wants_upgrade(self) -> bool:
        return "upgrade" in self.headers.get("connection", "").lower() \
            and self.headers.get("upgrade", "").lower() == "tcp"

    def client_gone(self) -> bool:
        """Has the client closed its side (nothing more will come)? For long waits."""
        try:
            if isinstance(self.sock, ssl.SSLSocket):
                # no MSG_PEEK through TLS: a readable socket with no request pending on it
                # (these are long answers to one request) is a close, or a close_notify
                return bool(select.select([self.sock], [], [], 0)[0]) and \
                    not self.sock.pending() and _tls_closed(self.sock)
            ready, _, _ = select.select([self.sock], [], [], 0)
            if not ready:
                return False
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


def _tls_closed(sock: ssl.SSLSocket) -> bool:
    """Read what a TLS client sent during a long answer without blocking: its end (b"") or
    a close_notify means gone; bytes of a next request cannot come (no pipelining here)."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return sock.recv(4096) == b""
    except (ssl.SSLWantReadError, BlockingIOError):
        return False
    except (ssl.SSLError, OSError):
        return True
    finally:
        sock.settimeout(timeout)


@dataclass
class Response:
    """A handler's answer: a body, a chunked stream of byte chunks, or a hijack."""

    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: Iterator[bytes] | None = None
    # after `101 UPGRADED` (or 200 to a client that did not ask to upgrade): the socket and
    # the bytes the client sent past the request
    hijack: Callable[[socket.socket, bytes], None] | None = None


def json_response(obj: object, status: int = 200,
                  headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(obj).encode() + b"\n", "application/json",
                    list(headers or []))


def error_response(status: int, message: str) -> Response:
    return json_response({"message": message}, status)


class _BodyReader(io.RawIOBase):
    """A request's body read as the handler asks for it (h11's Data events)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.pending = b""
        self.done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while not self.pending and not self.done:
            ev = self.conn._next()
            if isinstance(ev, h11.Data):
                self.pending = bytes(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                self.done = True
            else:
                raise ConnectionError("the client's request body ended early")
        n = min(len(buf), len(self.pending))
        buf[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def drain(self) -> None:
        """Read to the end what the handler left, so the answer can go out."""
        while not self.done:
            self.pending = b""
            self.readinto(bytearray(65536))


class Conn:
    """One client connection: read requests, hand them to `handle`, write the answers.

    `streamed(method, target)`: whether that request's body goes to its handler as a
    stream (`Request.reader`) instead of being read first, under MAX_BODY."""

    def __init__(self, sock: socket.socket, handle: Callable[[Request], Response],
                 on_error: Callable[[Request | None, BaseException], Response],
                 log: Callable[[Request, int], None],
                 streamed: Callable[[str, str], bool] | None = None) -> None:
        self.sock = sock
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADERS)
        self.handle, self.on_error, self.log = handle, on_error, log
        self.streamed = streamed

    def _next(self):
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            self.h11.receive_data(data)

    def _send(self, event) -> None:
        data = self.h11.send(event)
        if data:
            self.sock.sendall(data)

    def serve(self) -> None:
        try:
            while self._one():
                self.h11.start_next_cycle()
        except (OSError, h11.LocalProtocolError):
            pass  # the client went away, or the exchange cannot go on
        finally:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

    def _one(self) -> bool:
        """Serve one request; whether the connection can take another."""
        try:
            event = self._next()
        except h11.RemoteProtocolError as e:
            self._raw_error(400, f"bad request: {e}")
            return False
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return False
        if not isinstance(event, h11.Request):
            return False
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        body = bytearray()
        req = None
        method, target = event.method.decode(), event.target.decode("latin-1")
        if self.streamed is not None and self.streamed(method, target):
            return self._one_streamed(method, target, headers)
        try:
            while True:
                ev = self._next()
                if isinstance(ev, h11.Data):
                    body += ev.data
                    if len(body) > MAX_BODY:
                        raise HttpError(413, f"request body larger than {MAX_BODY} bytes")
                elif isinstance(ev, h11.EndOfMessage):
                    break
                else:
                    return False
            req = Request.make(event.method.decode(), event.target.decode("latin-1"),
                               headers, bytes(body), self.sock)
            try:
                resp = self.handle(req)
            except BaseException as e:  # noqa: BLE001 - every failure is an answer
                if isinstance(e, KeyboardInterrupt | SystemExit):
                    raise
                resp = self.on_error(req, e)
        except HttpError as e:  # a body too large: answered, then the connection closes
            resp = error_response(e.status, e.message)
            self.log(req or Request.make(event.method.decode(), event.target.decode(
                "latin-1"), headers, b"", self.sock), resp.status)
            self._write(resp, head=False)
            return False
        except h11.RemoteProtocolError as e:
            self._raw_error(400, f"bad request: {e}")
            return False
        self.log(req, 101 if resp.hijack is not None and req.wants_upgrade else resp.status)
        if resp.hijack is not None:
            self._hijack(req, resp)
            return False
        self._write(resp, head=req.method == "HEAD")
        return self.h11.our_state is h11.IDLE or self.h11.our_state is h11.DONE

    def _one_streamed(self, method: str, target: str, headers: dict[str, str]) -> bool:
        reader = _BodyReader(self)
        req = Request.make(method, target, headers, b"", self.sock, reader)
        try:
            resp = self.handle(req)
        except BaseException as e:  # noqa: BLE001 - every failure is an answer
            if isinstance(e, KeyboardInterrupt | SystemExit):
                raise
            resp = self.on_error(req, e)
        try:
            reader.drain()
        except h11.RemoteProtocolError:
            return False
        self.log(req, resp.status)
        self._write(resp, head=False)
        return self.h11.our_state is h11.IDLE or self.h11.our_state is h11.DONE

    def _write(self, resp: Response, head: bool) -> None:
        headers = [("Api-Version", "1.50"), ("Docker-Experimental", "false"),
                   ("Ostype", "linux"), ("Server", "hv")] + resp.headers
        if resp.content_type:
            headers.append(("Content-Type", resp.content_type))
        if resp.stream is None:
            headers.append(("Content-Length", str(len(resp.body))))
        self._send(h11.Response(status_code=resp.status, headers=headers,
                                reason=_reason(resp.status)))
        if resp.stream is not None and not head:
            try:
                for chunk in resp.stream:
                    if chunk:
                        self._send(h11.Data(data=chunk))
            finally:
                close = getattr(resp.stream, "close", None)
                if close is not None:
                    close()
        elif resp.body and not head:
            self._send(h11.Data(data=resp.body))
        self._send(h11.EndOfMessage())

    def _hijack(self, req: Request, resp: Response) -> None:
        ctype = resp.content_type or "application/vnd.docker.raw-stream"
        if req.wants_upgrade:
            self._send(h11.InformationalResponse(status_code=101, reason=b"UPGRADED", headers=[
                ("Content-Type", ctype), ("Connection", "Upgrade"), ("Upgrade", "tcp"),
                ("Api-Version", "1.50")]))
            leftover = self.h11.trailing_data[0]
        else:  # an old client: dockerd answers 200 and takes the connection all the same
            self.sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n"
                              "Api-Version: 1.50\r\n\r\n".encode())
            leftover = b""
        resp.hijack(self.sock, leftover)

    def _raw_error(self, status: int, message: str) -> None:
        body = json.dumps({"message": message}).encode()
        try:
            self.sock.sendall(f"HTTP/1.1 {status} {_reason(status).decode()}\r\nContent-Type: "
                              f"application/json\r\nContent-Length: {len(body)}\r\n"
                              "Connection: close\r\n\r\n".encode() + body)
        except OSError:
            pass


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""
