"""Issue 13's last Engine API pieces without a VM: image history rows (the engine's and the
CLI's), the service's TLS rules and its TLS server, streamed request bodies, and the chunk
pipe a save streams through."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import socket
import ssl
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from api.app import Service
from api.http import Conn, Request, Response, json_response
from api.images import _Chunks
from api.server import Server, TlsFiles, parse_address, tls_context
from cli.image_cmds import _human_flag, history_rows
from hv.errors import HvError, UsageError
from hv.images.history import MISSING, HistoryRow, history
from hv.images.model import Image
from tests.fixtures.pki import Pki, https_get

# --- history ------------------------------------------------------------------------------------


def _store(tmp_path: Path, layers: dict[str, bytes]):
    for digest, data in layers.items():
        (tmp_path / digest).write_bytes(data)
    return SimpleNamespace(root=tmp_path,
                           blobs=SimpleNamespace(path=lambda digest: tmp_path / digest))


def _image(history_entries: list[dict], layers: list[str], tags: list[str]) -> Image:
    config = {"history": history_entries,
              "rootfs": {"type": "layers", "diff_ids": [f"sha256:d{i}" for i in layers]}}
    return Image(id="sha256:" + "ab" * 32, repo_tags=tags, repo_digests=[], config=config,
                 created=None, size=0, manifest_digest="", layers=layers)


def test_history_is_newest_first_with_missing_ids_and_unpacked_sizes(tmp_path):
    store = _store(tmp_path, {"l1": gzip.compress(b"x" * 5000), "l2": b"y" * 700})
    image = _image([
        {"created": "2024-01-01T00:00:00Z", "created_by": "ADD rootfs.tar /"},
        {"created": "2024-01-02T00:00:00.123456789Z", "created_by": "ENV A=1",
         "empty_layer": True},
        {"created": "2024-01-03T00:00:00Z", "created_by": "RUN make", "comment": "buildkit"},
    ], ["l1", "l2"], ["x:latest", "x:1"])
    rows = history(store, image)
    assert [r.created_by for r in rows] == ["RUN make", "ENV A=1", "ADD rootfs.tar /"]
    assert [r.size for r in rows] == [700, 0, 5000]  # gzip's layer: its unpacked size
    assert rows[0].id == image.id and rows[0].tags == ["x:latest", "x:1"]
    assert all(r.id == MISSING and r.tags is None for r in rows[1:])
    assert rows[1].created == int(datetime(2024, 1, 2, tzinfo=UTC).timestamp())
    assert rows[0].to_api() == {"Id": image.id, "Created": rows[0].created,
                                "CreatedBy": "RUN make", "Tags": ["x:latest", "x:1"],
                                "Size": 700, "Comment": "buildkit"}
    # the sizes are kept: a second history does not read the layers
    assert json.loads((tmp_path / "layer-sizes.json").read_text()) == {"l1": 5000, "l2": 700}
    (tmp_path / "l1").unlink()
    assert [r.size for r in history(store, image)] == [700, 0, 5000]


def test_history_edge_cases(tmp_path):
    store = _store(tmp_path, {"l1": b"z"})
    untagged = history(store, _image([{"created_by": "one"}], ["l1"], []))
    assert untagged[0].tags is None and untagged[0].created == 0
    assert history(store, _image([], ["l1"], ["x:latest"])) == []
    with pytest.raises(HvError, match="too many non-empty layers"):
        history(store, _image([{"created_by": "a"}, {"created_by": "b"}], ["l1"], []))


def test_cli_history_rows_as_docker_cli():
    now = datetime(2024, 1, 3, 1, 0, tzinfo=UTC)
    long = "/bin/sh -c #(nop) \tCMD [\"sh\" \"-c\" \"a very long command line here\"]"
    rows = [HistoryRow("sha256:" + "ab" * 32, int(datetime(2024, 1, 3, tzinfo=UTC).timestamp()),
                       long, ["x:latest"], 4_270_000, "c"),
            HistoryRow(MISSING, int(datetime(2024, 1, 1, tzinfo=UTC).timestamp()), "ADD x", None,
                       0, "")]
    short = history_rows(rows, human=True, no_trunc=False, now=now)
    assert short[0]["ID"] == "ab" * 6 and short[1]["ID"] == MISSING
    assert short[0]["CreatedBy"] == long.replace("\t", " ")[:44] + "…"
    assert len(short[0]["CreatedBy"]) == 45
    assert short[0]["CreatedSince"] == "About an hour ago"
    assert short[0]["Size"] == "4.27MB" and short[1]["Size"] == "0B"
    full = history_rows(rows, human=False, no_trunc=True, now=now)
    assert full[0]["ID"] == "sha256:" + "ab" * 32 and full[0]["CreatedBy"] == long.replace(
        "\t", " ")
    assert full[0]["Size"] == "4270000" and full[0]["CreatedSince"] == full[0]["CreatedAt"]


@pytest.mark.parametrize("args, human", [
    (["img"], True), (["-H", "img"], True), (["img", "-H=false"], False),
    (["--human=0", "img"], False), (["--human=true", "img"], True)])
def test_the_human_flag_is_a_go_bool(args, human):
    assert _human_flag(args) == (human, ["img"])


@pytest.mark.parametrize("args", [["-H=maybe", "img"], [], ["a", "b"], ["--bogus", "img"]])
def test_bad_history_arguments(args):
    with pytest.raises(UsageError):
        _human_flag(args)


# --- the TLS rules ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _files(pki: Pki, which: str) -> TlsFiles:
    return TlsFiles(pki.server_cert if "c" in which else None,
                    pki.server_key if "k" in which else None, pki.ca if "a" in which else None)


@pytest.mark.parametrize("address, which, ok", [
    ("tcp://127.0.0.1:2376", "", True),
    ("tcp://127.0.0.1:2376", "ck", True),
    ("tcp://127.0.0.1:2376", "cka", True),
    ("tcp://[::1]:2376", "ck", True),
    ("tcp://0.0.0.0:2376", "cka", True),
    ("tcp://10.1.2.3:2376", "cka", True),
    ("tcp://0.0.0.0:2376", "", False),
    ("tcp://0.0.0.0:2376", "ck", False),  # encrypted, but anyone may connect
    ("tcp://example.com:2376", "ck", False),
    ("tcp://127.0.0.1:2376", "a", False),
    ("tcp://127.0.0.1:2376", "c", False),
    ("tcp://0.0.0.0:2376", "ca", False),
    ("unix:///run/hv.sock", "cka", False),
])
def test_tls_rules(pki, address, which, ok):
    if ok:
        addr = parse_address(address, _files(pki, which))
        assert addr.tls == bool(which)
    else:
        with pytest.raises(UsageError) as e:
            parse_address(address, _files(pki, which))
        assert e.value.hint


def test_tls_context(pki, tmp_path):
    ctx = tls_context(_files(pki, "cka"))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert tls_context(_files(pki, "ck")).verify_mode == ssl.CERT_NONE
    with pytest.raises(UsageError, match="cannot use --tls-cert"):
        tls_context(TlsFiles(pki.server_cert, pki.rogue_key, None))
    with pytest.raises(UsageError, match="no such file"):
        tls_context(TlsFiles(tmp_path / "nope.pem", pki.server_key, None))
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    with pytest.raises(UsageError, match="--tls-ca"):
        tls_context(TlsFiles(pki.server_cert, pki.server_key, tmp_path / "bad.pem"))


@pytest.fixture
def tls_server(pki):
    """A Server with mutual TLS on a free loopback port, answering /_ping (no engine)."""
    def handle(req: Request) -> Response:
        if req.path == "/slow":
            assert not req.client_gone()
            return json_response({"gone": False})
        return Response(200, b"OK", "text/plain")

    addr = parse_address("tcp://127.0.0.1:0", _files(pki, "cka"))
    server = Server(addr, handle, lambda _req, e: json_response({"message": str(e)}, 500),
                    tls=tls_context(_files(pki, "cka")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stop()
    thread.join(10)
    assert not thread.is_alive()


def _ping(port: int, ctx: ssl.SSLContext, path: str = "/_ping") -> tuple[int, bytes]:
    return https_get(port, ctx, path, timeout=10)


def test_mutual_tls_server(tls_server, pki):
    port = tls_server.addr.port
    good = pki.context(pki.client_cert, pki.client_key)
    assert _ping(port, good) == (200, b"OK")
    assert _ping(port, good, "/slow")[0] == 200  # client_gone through TLS: still there
    for ctx in (pki.context(), pki.context(pki.rogue_cert, pki.rogue_key)):
        with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.HTTPException)):
            _ping(port, ctx)
    # a client that connects and says nothing holds up nobody
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        t0 = time.monotonic()
        assert _ping(port, good) == (200, b"OK")
        assert time.monotonic() - t0 < 5
    assert _ping(port, good) == (200, b"OK")


# --- streamed bodies, the save pipe -------------------------------------------------------------


def test_streamed_routes():
    svc = Service(SimpleNamespace())
    assert svc.streamed("POST", "/v1.50/images/load?quiet=1")
    assert svc.streamed("POST", "/images/load")
    assert not svc.streamed("GET", "/images/load")
    assert not svc.streamed("POST", "/v1.50/containers/create")


def _serve_one(handle, streamed) -> tuple[socket.socket, threading.Thread]:
    a, b = socket.socketpair()
    conn = Conn(b, handle, lambda _r, e: json_response({"message": str(e)}, 500),
                lambda _r, _s: None, streamed)
    thread = threading.Thread(target=conn.serve, daemon=True)
    thread.start()
    return a, thread


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    sock.sendall(request)
    data = b""
    while b"\r\n0\r\n\r\n" not in data and b"\r\n\r\n{" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if b"Content-Length" in data and data.endswith(b"}\n"):
            break
    return data


def test_a_streamed_body_reaches_its_handler_as_a_stream():
    seen: list = []

    def handle(req: Request) -> Response:
        if req.path == "/load":
            seen.append((req.body, req.reader.read()))
        return json_response({"ok": True})

    sock, thread = _serve_one(handle, lambda method, target: target.startswith("/load"))
    try:
        chunks = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n"
                          for c in (b"a" * 70000, b"b" * 10)) + b"0\r\n\r\n"
        out = _exchange(sock, b"POST /load HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                              b"\r\n\r\n" + chunks)
        assert out.startswith(b"HTTP/1.1 200") and seen == [(b"", b"a" * 70000 + b"b" * 10)]
        # a handler that leaves the body: it is drained, the connection serves the next one
        out = _exchange(sock, b"POST /load-ignored HTTP/1.1\r\nHost: x\r\nContent-Length: 5"
                              b"\r\n\r\nhello")
        assert out.startswith(b"HTTP/1.1 200")
        out = _exchange(sock, b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200")
    finally:
        sock.close()
        thread.join(5)


def test_the_save_pipe():
    pipe = _Chunks()
    data = io.BytesIO()
    for _ in range(3):
        pipe.write(b"x" * (_Chunks.CHUNK // 2))
    pipe.finish()
    while (item := pipe.q.get()) is not _Chunks.DONE:
        data.write(item)
    assert data.getvalue() == b"x" * (3 * _Chunks.CHUNK // 2)
    # the reader goes away: a writer blocked on a full queue fails instead of hanging
    pipe = _Chunks()
    errors: list = []

    def write() -> None:
        try:
            while True:
                pipe.write(b"y" * _Chunks.CHUNK)
        except BrokenPipeError as e:
            errors.append(e)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    time.sleep(0.3)
    pipe.cancel()
    writer.join(5)
    assert not writer.is_alive() and errors
