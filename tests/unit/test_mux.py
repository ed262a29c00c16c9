"""The exec multiplexer without a VM: the socket alias, the client channel against scripted
frames, and the real server relaying sessions to local processes through a fake agent."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hv.config import Config
from hv.errors import CommandNotFound
from hv.guest import mux
from hv.guest.agent import AgentUnreachable
from hv.guest.attach import FrameDecoder, encode_frame

REPO = Path(__file__).resolve().parents[2]


def test_client_import_has_no_paramiko():
    code = "import sys, hv.guest.mux, hv.guestops; print('paramiko' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.strip() == "False"


def test_socket_alias_binds_and_connects_past_the_path_limit(tmp_path):
    d = tmp_path / ("d" * 100) / ("e" * 100)
    d.mkdir(parents=True)
    assert len(str(d / "mux.sock")) > 108
    srv = socket.socket(socket.AF_UNIX)
    with mux._short(str(d)) as short:
        srv.bind(f"{short}/mux.sock")
        srv.listen()
    assert (d / "mux.sock").is_socket()
    cli = socket.socket(socket.AF_UNIX)
    with mux._short(str(d)) as short:
        cli.connect(f"{short}/mux.sock")
    conn, _ = srv.accept()
    cli.sendall(b"hi")
    assert conn.recv(2) == b"hi"
    for s in (srv, cli, conn):
        s.close()


# --- the client channel against scripted frames ---------------------------------------------


def _pair(frames: list[tuple[int, bytes]], close: bool = True):
    """A MuxChannel whose peer has already sent `frames` (then closes, if `close`)."""
    a, b = socket.socketpair()
    for t, payload in frames:
        b.sendall(encode_frame(t, payload, 0))
    if close:
        b.close()
    return mux.MuxChannel(a), b


def test_channel_streams_exit_and_readiness():
    ch, _ = _pair([(mux.OPENED, b""), (mux.STDOUT, b"out1"), (mux.STDERR, b"err"),
                   (mux.STDOUT, b"out2"), (mux.EXIT, b"3")])
    ch._request("ignored", None)
    # a stderr check pulls everything off the socket: select must still see the stdout
    assert ch.recv_stderr_ready()
    assert select.select([ch], [], [], 0)[0] == [ch]
    assert ch.recv_ready() and ch.recv(3) == b"out"
    assert ch.recv(100) == b"1out2"
    assert ch.recv_stderr(100) == b"err"
    assert ch.eof_received and ch.exit_status_ready() and ch.recv_exit_status() == 3
    assert ch.recv(10) == b""  # the end, as a paramiko channel
    ch.close()
    assert ch.closed


def test_channel_select_waits_then_wakes():
    ch, peer = _pair([(mux.OPENED, b"")], close=False)
    ch._request("x", None)
    assert select.select([ch], [], [], 0.05)[0] == []
    assert not ch.recv_ready() and not ch.exit_status_ready()
    peer.sendall(encode_frame(mux.STDOUT, b"late", 0))
    assert select.select([ch], [], [], 5)[0] == [ch]
    assert ch.recv(10) == b"late"
    assert select.select([ch], [], [], 0)[0] == []  # drained: no longer ready
    peer.close()
    assert ch.recv(10) == b""
    assert ch.recv_exit_status() == -1  # gone without a status


def test_channel_sends_frames():
    ch, peer = _pair([(mux.OPENED, b"")], close=False)
    ch._request("cmd", ("xterm", 100, 30))
    ch.sendall(b"x" * (mux.CHUNK + 5))
    ch.resize_pty(width=120, height=40)
    ch.shutdown_write()
    ch.shutdown_write()  # once
    ch.close()
    data = b""
    while chunk := peer.recv(1 << 20):
        data += chunk
    frames = FrameDecoder().feed(data)
    assert [f.type for f in frames] == [mux.OPEN, mux.STDIN, mux.STDIN, mux.RESIZE,
                                        mux.STDIN_EOF]
    assert json.loads(frames[0].data) == {"command": "cmd", "pty": ["xterm", 100, 30]}
    assert frames[1].data + frames[2].data == b"x" * (mux.CHUNK + 5)
    assert frames[3].data == b"40 120"


def test_a_send_interrupted_by_a_signal_handler_is_not_interleaved():
    ch, peer = _pair([(mux.OPENED, b"")], close=False)
    ch._request("cmd", None)
    ch._sending = True  # as if SIGWINCH arrived inside sendall
    ch.resize_pty(width=1, height=2)
    ch._sending = False
    ch.sendall(b"data")
    ch.close()
    data = b""
    while chunk := peer.recv(1 << 20):
        data += chunk
    frames = FrameDecoder().feed(data)
    assert [(f.type, f.data) for f in frames[1:]] == [(mux.STDIN, b"data"), (mux.RESIZE, b"2 1")]


def test_open_error_is_raised_as_sent():
    err = CommandNotFound("no such thing", hint="look again")
    ch, _ = _pair([(mux.ERROR, mux._error_json(err).encode())])
    with pytest.raises(CommandNotFound) as e:
        ch._request("x", None)
    assert e.value.message == "no such thing" and e.value.hint == "look again"
    assert e.value.exit_code == 127
    ch, _ = _pair([(mux.ERROR, mux._error_json(AgentUnreachable("gone", hint="h")).encode())])
    with pytest.raises(AgentUnreachable):
        ch._request("x", None)
    ch, _ = _pair([])  # the multiplexer closed before answering
    with pytest.raises(AgentUnreachable, match="dropped the session"):
        ch._request("x", None)


# --- the server, relaying to local processes ---------------------------------------------------


class _LocalChannel:
    """What the server needs of a paramiko channel, backed by `sh -c COMMAND` here."""

    def __init__(self, command: str) -> None:
        self.p = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  start_new_session=True)

    def recv(self, n):
        return self.p.stdout.read1(n)

    def recv_stderr(self, n):
        return self.p.stderr.read1(n)

    def recv_exit_status(self):
        return self.p.wait()

    def sendall(self, data):
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def shutdown_write(self):
        self.p.stdin.close()

    def resize_pty(self, width, height):
        pass

    def close(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, 9)  # sh and what it started: the pipes close


class _FakeTransport:
    active = True

    def is_active(self):
        return self.active


class _FakeAgent:
    def __init__(self):
        self.transport = _FakeTransport()
        self.opened = []

    def open(self, command, pty=None):
        if command.startswith("fail"):
            raise AgentUnreachable("the agent dropped the session: test", hint="h")
        self.opened.append(command)
        return _LocalChannel(command)

    def close(self):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("HV_ROOT", str(tmp_path))
    monkeypatch.setenv("HV_MUX_IDLE", "2")
    cid = "c" * 64
    (tmp_path / "containers" / cid).mkdir(parents=True)
    (tmp_path / "containers" / cid / "mux.lock").touch()
    srv = mux._Server(Config.from_environ(), cid, _FakeAgent())
    srv.bind()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("why", srv.serve()), daemon=True)
    t.start()
    yield cid, srv, t, result
    srv.stopping = True
    t.join(5)
    srv.cleanup()


def test_server_relays_sessions(server):
    cid, srv, _t, _ = server
    # the pidfile names us, but we are not `-m hv.guest.mux`
    assert mux.running_pid(Config.from_environ(), cid) is None
    agent = mux.connect(Config.from_environ(), cid, spawn=False)
    assert agent is not None
    assert agent.call("echo out; echo err >&2; exit 3") == (3, b"out\n", b"err\n")
    data = os.urandom(300_000)
    code, out, _ = agent.call("cat", stdin=data)
    assert code == 0 and out == data
    code, out, _ = agent.call("head -c 3000000 /dev/zero")
    assert code == 0 and len(out) == 3_000_000
    with pytest.raises(AgentUnreachable, match="test"):
        agent.open("fail")
    agent.close()


def test_server_runs_sessions_concurrently(server):
    cid, *_ = server
    results = []

    def one(i):
        a = mux.connect(Config.from_environ(), cid, spawn=False)
        results.append(a.call(f"sleep 0.5; echo {i}"))
        a.close()

    start = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r[1] for r in results) == [f"{i}\n".encode() for i in range(6)]
    assert time.monotonic() - start < 3


def test_server_closing_client_closes_channel_not_waits(server):
    cid, srv, *_ = server
    agent = mux.connect(Config.from_environ(), cid, spawn=False)
    ch = agent.open("sleep 30")
    ch.shutdown_write()
    agent.close()  # `exec -d`: the server ends the session at once
    deadline = time.monotonic() + 5
    while srv.sessions and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.sessions == 0


def test_server_idle_exit_removes_socket(server):
    cid, _srv, t, result = server
    t.join(5)
    assert result.get("why", "").startswith("no session")
    assert not (Path(os.environ["HV_ROOT"]) / "containers" / cid / "mux.sock").exists()
    assert mux.connect(Config.from_environ(), cid, spawn=False) is None


def test_server_exits_when_transport_dies(server):
    cid, srv, t, result = server
    agent = mux.connect(Config.from_environ(), cid, spawn=False)
    ch = agent.open("sleep 30")
    srv.agent.transport.active = False
    t.join(5)
    assert "closed" in result["why"]
    ch.close()
    agent.close()


def test_spawned_multiplexer_reports_the_connect_error(tmp_path, monkeypatch):
    """A real `python -m hv.guest.mux`: no SSH endpoint -> the client gets the agent's error."""
    monkeypatch.setenv("HV_ROOT", str(tmp_path))
    cid = "d" * 64
    (tmp_path / "containers" / cid).mkdir(parents=True)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    with pytest.raises(AgentUnreachable) as e:
        mux.connect(Config.from_environ(), cid, timeout=5)
    assert "no SSH endpoint" in e.value.message and "hv restart" in e.value.hint
    assert "not ready" in (tmp_path / "containers" / cid / "mux.log").read_text()
    time.sleep(0.2)
    assert mux.pids(Config.from_environ(), cid) == []


def test_stop_is_a_no_op_without_a_multiplexer(tmp_path, monkeypatch):
    monkeypatch.setenv("HV_ROOT", str(tmp_path))
    mux.stop(Config.from_environ(), "e" * 64)  # no folder, no lock: nothing to do, no error


def test_needle_matches_the_spawned_command_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HV_ROOT", str(tmp_path))
    cid = "f" * 64
    (tmp_path / "containers" / cid).mkdir(parents=True)
    argv = [sys.executable, "-m", mux.MODULE, mux._cdir(Config.from_environ(), cid), "90"]
    assert mux._needle(Config.from_environ(), cid) in ("\0".join(argv) + "\0").encode()
