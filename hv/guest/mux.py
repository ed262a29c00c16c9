"""The exec multiplexer: one authenticated SSH transport per container, shared by every
`hv exec`, `hv attach`, `hv top`, `hv cp` (its `stat` and small copies; big ones go over
`ssh`, hv.guest.bulk) and signal, through a UNIX socket in the container's folder.

Why
---
`hv exec c true` took ~500 ms on a 2-core TCG host. About 100 ms of it was `import paramiko`
and 100-220 ms the SSH key exchange and public-key auth with the guest's sshd (the guest's
half of the cryptography runs on an emulated CPU); the command itself, over a transport that
is already authenticated, takes 15-25 ms. A small process per container that keeps the
transport lets every later exec skip both: the client speaks the frame protocol below over
a UNIX socket and never imports paramiko (`import hv.guest.mux` pulls in no paramiko; the
server half imports it lazily).

Process
-------
`python -m hv.guest.mux CONTAINER_DIR TIMEOUT` is started by the first client that finds no
multiplexer (`connect`), under an flock on mux.lock so that concurrent clients start one.
It forks at once and the process the client started exits (a long-lived caller keeps no
child, and no zombie). The survivor - in its own session, cwd /, umask 077, stdin and stdout
on /dev/null, stderr appended to mux.log - connects with `hv.guest.agent.Agent.connect` (the
pinned host key and the readiness checks live there, once), binds the socket, writes mux.pid
and only then answers on the pipe the client waits on: `ok PID`, or `error JSON` carrying the
HvError the connect raised (class, message, hint, exit code), which the client raises as it
is, so "the guest never became ready: ..." and its hint reach the user unchanged.

Its argv names the container's folder, so a multiplexer is found by its command line: `stop`
(called when hv stops, kills or removes the container) SIGKILLs every one of the container's
multiplexers found in /proc - pid reuse cannot make it kill a stranger, and one still
connecting (no pidfile yet) is found as well - and the test suite's leak check finds those of
its state root the same way.

It exits by itself when the transport dies (the guest powered off: QEMU's user-net forward
closes the TCP connection), when the container's folder is removed (even while it is still
connecting), on SIGTERM, and after HV_MUX_IDLE seconds (default 300) without a session. On
an idle exit it unlinks the socket first and then still serves the connections already
queued, so a client that connected at that moment is served, never dropped; a client that
finds the socket missing or refusing starts a new multiplexer. A multiplexer costs one
Python process (~40 MB RSS, most of it paramiko and OpenSSL) per container that saw an exec
in the last HV_MUX_IDLE seconds. HV_MUX=0 makes hv connect directly, as before (see
`hv.guestops.connect_agent`).

Socket
------
UNIX socket paths stop at 107 bytes and a state root can be long, so the socket is bound and
dialled as /proc/self/fd/DIRFD/mux.sock, DIRFD an O_PATH descriptor of the container folder.
It is bound under a temporary name, chmod 0600, listening, then renamed over mux.sock: the name
never points at a socket that refuses, and a stale socket of a killed multiplexer is replaced
atomically. The peer's uid (SO_PEERCRED) must be ours or root's, so the socket does not rely
on the folder's mode (the folder holds the container's private keys, each 0600).

Wire
----
Frames have the 16-byte header of hv.log and the attach protocol (type, length, a timestamp
left 0), so `hv.guest.attach`'s encoder and decoder are reused. One connection is one session:

    client -> mux  OPEN (10) JSON {"command": STR, "pty": [TERM, COLS, ROWS] | null}, first;
                   then STDIN (0) bytes, STDIN_EOF (4), RESIZE (5) b"ROWS COLS"
    mux -> client  OPENED (11) or ERROR (12) JSON {"class", "message", "hint", "exit_code"},
                   first; then STDOUT (1), STDERR (2), and EXIT (3) b"CODE" last, sent once
                   the guest's stdout and stderr both ended (-1: the guest went away without
                   a status, as paramiko reports it)

Closing the connection closes the channel: `exec -d` closes right after STDIN_EOF and the
command keeps running, as it did with a transport of its own.

In the multiplexer a thread per session moves the client's frames into the channel, and two
more read the channel's stdout and stderr with paramiko's blocking calls (no polling: the
select pipe of a paramiko channel never reports the exit status); the stderr one then waits
for the exit status and sends EXIT. Back-pressure is the sockets' and the SSH window's.

`MuxChannel` is the part of paramiko's Channel that cli.streams and `Agent.call` use. Its
`fileno()` is an epoll descriptor watching the socket and a self-pipe that is kept readable
while decoded output is buffered (or the end was reached), so `select` on it behaves as on a
paramiko channel - ready while `recv_ready()` - even after `recv_stderr_ready()` pulled
stdout frames off the socket. A frame sent from a signal handler (SIGWINCH's resize) while
another send is under way is queued behind it, never interleaved.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import sys
import time
from pathlib import Path

from hv import errors
from hv.config import Config
from hv.errors import HvError, RuntimeFailure
from hv.guest.agent import AgentUnreachable
from hv.guest.attach import FrameDecoder, encode_frame

STDIN, STDOUT, STDERR, EXIT, STDIN_EOF, RESIZE = 0, 1, 2, 3, 4, 5
OPEN, OPENED, ERROR = 10, 11, 12
CHUNK = 64 * 1024
MAX_FRAME = 1 << 20  # a larger frame from a client ends its session
IDLE_DEFAULT = 300.0
MODULE = "hv.guest.mux"
_DROPPED_HINT = "is the container still running? 'hv ps -a'"


def _cdir(config: Config, cid: str) -> str:
    return os.path.abspath(config.paths.container_dir(cid))


@contextlib.contextmanager
def _short(directory: str):
    """`directory` as /proc/self/fd/N: a name short enough for bind() and connect()."""
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _dial(config: Config, cid: str) -> socket.socket | None:
    """A connection to the running multiplexer, or None (none, or a stale socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _short(_cdir(config, cid)) as d:
            sock.connect(f"{d}/{config.paths.container_mux_socket(cid).name}")
    except OSError:
        sock.close()
        return None
    return sock


# --- errors across the process boundary --------------------------------------------------

def _error_json(e: HvError) -> str:
    return json.dumps({"class": type(e).__name__, "message": e.message, "hint": e.hint,
                       "exit_code": e.exit_code})


def _error_classes() -> dict[str, type[HvError]]:
    found = {n: c for n, c in vars(errors).items()
             if isinstance(c, type) and issubclass(c, HvError)}
    found[AgentUnreachable.__name__] = AgentUnreachable
    return found


def _error_from(text: str) -> HvError:
    try:
        d = json.loads(text)
        cls = _error_classes().get(d.get("class"), HvError)
        return cls(str(d["message"]), hint=d.get("hint"), exit_code=int(d.get("exit_code", 125)))
    except (ValueError, KeyError, TypeError, AttributeError):
        return RuntimeFailure(f"the container's exec multiplexer failed: {text.strip()}")


# --- client --------------------------------------------------------------------------------

def connect(config: Config, cid: str, timeout: float = 90.0, spawn: bool = True) -> MuxAgent | None:
    """An agent whose sessions go through the container's multiplexer.

    With `spawn`, a missing multiplexer is started (it connects to the guest, waiting up to
    `timeout` s for it to be ready, and its error is raised here); without, None.
    """
    sock = _dial(config, cid)
    if sock is None:
        if not spawn:
            return None
        sock = _start(config, cid, timeout)
    return MuxAgent(config, cid, sock, timeout)


def _start(config: Config, cid: str, timeout: float) -> socket.socket:
    import fcntl

    try:
        fd = os.open(config.paths.container_mux_lock(cid),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        raise AgentUnreachable("the container's folder is gone", hint=_DROPPED_HINT) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        sock = _dial(config, cid)  # started by another client while we waited for the lock
        if sock is None:
            _spawn(config, cid, timeout)
            sock = _dial(config, cid)
        if sock is None:
            raise RuntimeFailure("the container's exec multiplexer started but does not answer",
                                 hint=f"read {config.paths.container_mux_log(cid)}")
        return sock
    finally:
        os.close(fd)


def _spawn(config: Config, cid: str, timeout: float) -> None:
    """Start the multiplexer and wait for its `ok` (or its error, raised)."""
    import subprocess

    env = config.child_environ()  # it builds the same Config (absolute roots: it runs in /)
    here = str(Path(__file__).resolve().parents[2])  # so that `-m hv.guest.mux` imports this hv
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    log = config.paths.container_mux_log(cid)
    try:
        err = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        err = subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", MODULE, _cdir(config, cid), f"{timeout:g}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, cwd="/", env=env,
            start_new_session=True)
    finally:
        if err != subprocess.DEVNULL:
            os.close(err)
    line = b""
    deadline = time.monotonic() + timeout + 30
    try:
        fd = proc.stdout.fileno()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            line += chunk
    finally:
        proc.stdout.close()
        try:
            proc.wait(timeout=10)  # it forked and exited at once
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    word, _, rest = line.decode(errors="replace").strip().partition(" ")
    if word == "ok":
        return
    if word == "error":
        raise _error_from(rest)
    stop(config, cid)  # whatever is left of it
    raise RuntimeFailure("the container's exec multiplexer did not start",
                         hint=f"read {log}")


class MuxAgent:
    """`hv.guest.agent.Agent`'s interface (open, call, close) over the multiplexer."""

    def __init__(self, config: Config, cid: str, sock: socket.socket,
                 timeout: float = 90.0) -> None:
        self.config = config
        self.paths = config.paths  # hv.guest.bulk finds the container's keys through it
        self.cid = cid
        self._spare: socket.socket | None = sock  # the connection that proved it alive
        self._timeout = timeout
        self._channels: list[MuxChannel] = []

    def open(self, command: str, pty: tuple[str, int, int] | None = None) -> MuxChannel:
        """A session running `command` (optionally on a PTY of (TERM, cols, rows))."""
        sock, self._spare = self._spare, None
        if sock is None:
            sock = _dial(self.config, self.cid) or _start(self.config, self.cid, self._timeout)
        ch = MuxChannel(sock)
        self._channels.append(ch)
        ch._request(command, pty)
        return ch

    def call(self, command: str, stdin: bytes | None = None,
             timeout: float = 120.0) -> tuple[int, bytes, bytes]:
        """Run to completion; (exit code, stdout, stderr). -1 when the guest went away."""
        ch = self.open(command)
        try:
            if stdin:
                ch.sendall(stdin)
            ch.shutdown_write()
            deadline = time.monotonic() + timeout
            while ch._status is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AgentUnreachable(f"the agent did not answer within {timeout:.0f} s",
                                           hint="is the guest overloaded? see 'hv stats'")
                ch._fill(left)
            return ch._status, bytes(ch._out), bytes(ch._err)
        finally:
            ch.close()

    def close(self) -> None:
        if self._spare is not None:
            self._spare.close()
            self._spare = None
        for ch in self._channels:
            ch.close()
        self._channels = []


class MuxChannel:
    """One session: the subset of paramiko's Channel hv uses (see the module docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._decoder = FrameDecoder()
        self._out = bytearray()
        self._err = bytearray()
        self._status: int | None = None
        self._reply: HvError | bool | None = None  # OPENED: True; ERROR: the error
        self._sock_eof = False
        self._broken = False
        self._eof_sent = False
        self._sending = False
        self._queued: list[bytes] = []
        self.eof_received = False
        self.closed = False
        self._poll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._woken = False
        self._poll.register(sock.fileno(), select.EPOLLIN)
        self._poll.register(self._wake_r, select.EPOLLIN)

    # -- the protocol --

    def _request(self, command: str, pty: tuple[str, int, int] | None) -> None:
        self._send(OPEN, json.dumps({"command": command,
                                     "pty": list(pty) if pty else None}).encode())
        while self._reply is None and not self._sock_eof:  # a reply already sent is read
            self._fill(None)
        if self._reply is True:
            return
        self.close()
        if isinstance(self._reply, HvError):
            raise self._reply
        raise AgentUnreachable("the agent dropped the session: the container's exec "
                               "multiplexer closed the connection", hint=_DROPPED_HINT)

    def _send(self, type: int, payload: bytes = b"") -> None:
        if self._broken or self.closed:
            return  # as Docker: input after the session ended is dropped
        frame = encode_frame(type, payload, 0)
        if self._sending:  # a signal handler (SIGWINCH) interrupted a send: no interleaving
            self._queued.append(frame)
            return
        self._sending = True
        try:
            self._sock.sendall(frame)
            while self._queued:
                self._sock.sendall(self._queued.pop(0))
        except OSError:
            self._broken = True
        finally:
            self._sending = False

    def _fill(self, timeout: float | None) -> None:
        """Decode what the socket holds, waiting up to `timeout` s (None: until data/EOF)."""
        if self._sock_eof or self.closed:
            return
        if timeout is None or timeout > 0:
            poller = select.poll()  # not select(): the caller may hold fds past FD_SETSIZE
            poller.register(self._sock, select.POLLIN)
            if not poller.poll(None if timeout is None else timeout * 1000):
                return
        try:
            data = self._sock.recv(1 << 18, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            for f in self._decoder.feed(data):
                self._frame(f.type, f.data)
            if self._decoder.pending > MAX_FRAME + CHUNK:
                data = b""  # not a multiplexer speaking
        if not data:
            self._sock_eof = True
            self.eof_received = True
            if self._status is None:
                self._status = -1  # gone without a status, as a closed paramiko channel
        self._sync()

    def _frame(self, type: int, data: bytes) -> None:
        if type == STDOUT:
            self._out += data
        elif type == STDERR:
            self._err += data
        elif type == EXIT:
            try:
                self._status = int(data)
            except ValueError:
                self._status = -1
            self.eof_received = True
        elif type == OPENED:
            self._reply = True
        elif type == ERROR:
            self._reply = _error_from(data.decode(errors="replace"))
            self.eof_received = True
            if self._status is None:
                self._status = -1

    def _sync(self) -> None:
        """Keep the self-pipe readable exactly while something waits to be read."""
        if self.closed:
            return
        want = bool(self._out or self._err or self.eof_received)
        if want and not self._woken:
            os.write(self._wake_w, b"x")
            self._woken = True
        elif not want and self._woken:
            os.read(self._wake_r, 1)
            self._woken = False

    # -- paramiko's Channel --

    def fileno(self) -> int:
        return self._poll.fileno()

    def recv_ready(self) -> bool:
        if not self._out and not self.eof_received:
            self._fill(0)
        return bool(self._out)

    def recv_stderr_ready(self) -> bool:
        if not self._err and not self.eof_received:
            self._fill(0)
        return bool(self._err)

    def recv(self, nbytes: int) -> bytes:
        """Stdout bytes; waits for some; b"" at the end."""
        return self._take(self._out, nbytes)

    def recv_stderr(self, nbytes: int) -> bytes:
        return self._take(self._err, nbytes)

    def _take(self, buf: bytearray, nbytes: int) -> bytes:
        while not buf and not self.eof_received:
            self._fill(None)
        data = bytes(buf[:nbytes])
        del buf[:nbytes]
        self._sync()
        return data

    def exit_status_ready(self) -> bool:
        if self._status is None:
            self._fill(0)
        return self._status is not None

    def recv_exit_status(self) -> int:
        while self._status is None:
            self._fill(None)
        return self._status

    def send(self, data: bytes) -> int:
        data = bytes(data[:CHUNK])
        self._send(STDIN, data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        for i in range(0, len(view), CHUNK):
            self._send(STDIN, bytes(view[i:i + CHUNK]))

    def shutdown_write(self) -> None:
        if not self._eof_sent:
            self._eof_sent = True
            self._send(STDIN_EOF)

    def resize_pty(self, width: int = 80, height: int = 24, width_pixels: int = 0,
                   height_pixels: int = 0) -> None:
        self._send(RESIZE, f"{int(height)} {int(width)}".encode())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.eof_received = True
        if self._status is None:
            self._status = -1
        self._sock.close()
        self._poll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


# --- finding and stopping multiplexers ---------------------------------------------------

def _needle(config: Config, cid: str) -> bytes:
    return b"\0-m\0" + MODULE.encode() + b"\0" + os.fsencode(_cdir(config, cid)) + b"\0"


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""  # gone (a zombie's is empty too)


def pids(config: Config, cid: str) -> list[int]:
    """The container's multiplexer processes (normally one; none when idle or stopped)."""
    needle = _needle(config, cid)
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and needle in _cmdline(int(name)):
            found.append(int(name))
    return found


def running_pid(config: Config, cid: str) -> int | None:
    """The pid in mux.pid if that process is the container's multiplexer."""
    try:
        pid = int(config.paths.container_mux_pid(cid).read_text())
    except (OSError, ValueError):
        return None
    return pid if _needle(config, cid) in _cmdline(pid) else None


def stop(config: Config, cid: str) -> None:
    """Kill the container's multiplexers (it was stopped, killed or removed); quick no-op
    when none was ever started. Their sessions end as if the guest went away."""
    import signal

    if not config.paths.container_mux_lock(cid).exists():
        return
    needle = _needle(config, cid)
    victims = pids(config, cid)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2
    while victims and time.monotonic() < deadline:
        victims = [p for p in victims if needle in _cmdline(p)]
        if victims:
            time.sleep(0.01)
    for p in (config.paths.container_mux_socket(cid), config.paths.container_mux_pid(cid)):
        with contextlib.suppress(OSError):
            p.unlink()


# --- server --------------------------------------------------------------------------------

def _idle_timeout(config: Config) -> float:
    return IDLE_DEFAULT if config.mux_idle is None else config.mux_idle


def _log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with contextlib.suppress(OSError):
        os.write(2, f"{stamp} mux[{os.getpid()}] {text}\n".encode(errors="replace"))


# run by the multiplexer when a virtiofsd of its container died: any look-up stops such a
# container (hv.engine.Engine._stop_broken), in a process of its own (this one has threads)
_STOP_BROKEN = ("import sys; from hv.config import Config; from hv.engine import Engine; "
                "Engine(Config.from_environ()).container(sys.argv[1])")


def _share_watch(config: Config, cid: str):
    """A callable telling whether a virtiofsd of the container died, or None (no virtiofs)."""
    from hv.runtime.connection import Libvirt
    from hv.runtime.domains import dead_shares, list_domains

    lv = Libvirt(config.paths, config.host)
    if not lv.embedded:
        return None  # libvirtd's virtiofsd are not ours to look at (nor its files)
    info = next((i for i in list_domains(lv) if i.active and i.record.get("id") == cid), None)
    if info is None or not info.shares:
        return None
    return lambda: bool(dead_shares(lv, info))


class _Server:
    def __init__(self, config: Config, cid: str, agent) -> None:
        import threading

        self.config = config
        self.cid = cid
        self.agent = agent
        self.watch = None  # see _share_watch
        self.stopper = None  # the process stopping a container that lost a share
        self.lock = threading.Lock()
        self.sessions = 0
        self.last_active = time.monotonic()
        self.stopping = False
        self.dirfd = os.open(_cdir(config, cid), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.listener: socket.socket | None = None
        self.sock_ino: int | None = None

    def _at(self, p: Path) -> str:
        return f"/proc/self/fd/{self.dirfd}/{p.name}"

    def bind(self) -> None:
        final = self._at(self.config.paths.container_mux_socket(self.cid))
        tmp = f"{final}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.bind(tmp)
        os.chmod(tmp, 0o600)  # umask 077 made it so already; connect() needs write access
        s.listen(64)
        s.setblocking(False)
        os.rename(tmp, final)
        self.sock_ino = os.stat(final).st_ino
        self.listener = s
        pidfile = self._at(self.config.paths.container_mux_pid(self.cid))
        with open(pidfile + ".tmp", "w") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(pidfile + ".tmp", pidfile)

    def retire_socket(self) -> None:
        """Unlink the socket if it is still ours: from now on clients start a new one."""
        with self.lock:
            if self.sock_ino is None:
                return
            final = self._at(self.config.paths.container_mux_socket(self.cid))
            with contextlib.suppress(OSError):
                if os.stat(final).st_ino == self.sock_ino:
                    os.unlink(final)
            self.sock_ino = None

    def cleanup(self) -> None:
        self.retire_socket()
        pidfile = self._at(self.config.paths.container_mux_pid(self.cid))
        with contextlib.suppress(OSError, ValueError):
            with open(pidfile) as f:
                if int(f.read()) == os.getpid():
                    os.unlink(pidfile)

    def serve(self) -> str:
        """Accept sessions until the transport dies, SIGTERM, or the idle timeout; why."""
        idle = _idle_timeout(self.config)
        transport = self.agent.transport
        while True:
            if select.select([self.listener], [], [], 0.5)[0]:
                while self._accept():
                    pass
            if self.stopping:
                reason = "stopped (SIGTERM)"
                break
            if not transport.is_active():
                reason = "the SSH connection to the guest closed"
                break
            self._check_shares()
            with self.lock:
                if not self.sessions and time.monotonic() - self.last_active > idle:
                    reason = f"no session for {idle:g} s"
                    break
        self.retire_socket()
        waiting = None
        if reason.startswith("no session"):
            while self._accept():  # connected before the unlink: served, not dropped
                pass
        else:
            waiting = time.monotonic() + 2  # their channels are closed: EXIT -1 is on its way
        self.listener.close()
        while self.sessions and (waiting is None or time.monotonic() < waiting):
            time.sleep(0.05)
        return reason

    def _check_shares(self) -> None:
        """A session reading a share whose virtiofsd died would wait forever: have the
        container stopped (its sessions then end as the guest goes away, 137)."""
        if self.stopper is not None:
            self.stopper.poll()  # reaped once done
            return
        if self.watch is None or not self.watch():
            return
        import subprocess

        _log("a virtiofsd of the container exited: stopping the container")
        try:
            self.stopper = subprocess.Popen(
                [sys.executable, "-c", _STOP_BROKEN, self.cid], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=2, cwd="/", start_new_session=True)
        except OSError as e:
            _log(f"cannot stop it: {e}")
            self.watch = None

    def _accept(self) -> bool:
        import threading

        try:
            conn, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        conn.setblocking(True)
        cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", cred)
        if uid not in (os.getuid(), 0):
            conn.close()
            return True
        with self.lock:
            self.sessions += 1
        threading.Thread(target=self._session, args=(conn,), daemon=True).start()
        return True

    def _session(self, conn: socket.socket) -> None:
        try:
            _Session(self, conn).run()
        except Exception as e:  # noqa: BLE001 - one session's failure is not the server's
            _log(f"session failed: {type(e).__name__}: {e}")
        finally:
            conn.close()
            with self.lock:
                self.sessions -= 1
                self.last_active = time.monotonic()


class _Session:
    def __init__(self, server: _Server, conn: socket.socket) -> None:
        import threading

        self.server = server
        self.conn = conn
        self.send_lock = threading.Lock()

    def _send(self, type: int, payload: bytes = b"") -> bool:
        try:
            with self.send_lock:
                self.conn.sendall(encode_frame(type, payload, 0))
            return True
        except OSError:
            return False

    def _frames(self):
        decoder = FrameDecoder()
        while True:
            try:
                data = self.conn.recv(1 << 18)
            except OSError:
                return
            if not data:
                return
            yield from decoder.feed(data)
            if decoder.pending > MAX_FRAME + 16:
                return

    def run(self) -> None:
        import threading

        frames = self._frames()
        first = next(frames, None)
        if first is None or first.type != OPEN:
            return
        try:
            req = json.loads(first.data)
            command = str(req["command"])
            pty = req.get("pty")
            pty = (str(pty[0]), int(pty[1]), int(pty[2])) if pty else None
        except (ValueError, KeyError, TypeError, IndexError):
            self._send(ERROR, _error_json(RuntimeFailure("bad request to the exec multiplexer"))
                       .encode())
            return
        try:
            ch = self.server.agent.open(command, pty=pty)
        except HvError as e:
            if not self.server.agent.transport.is_active():
                self.server.retire_socket()
            self._send(ERROR, _error_json(e).encode())
            return
        self._send(OPENED)
        out = threading.Thread(target=self._pump, args=(ch.recv, STDOUT), daemon=True)
        fin = threading.Thread(target=self._finish, args=(ch, out), daemon=True)
        out.start()
        fin.start()
        try:
            for f in frames:
                try:
                    if f.type == STDIN:
                        ch.sendall(f.data)
                    elif f.type == STDIN_EOF:
                        ch.shutdown_write()
                    elif f.type == RESIZE:
                        rows, cols = (int(x) for x in f.data.split())
                        ch.resize_pty(width=cols, height=rows)
                except Exception:  # noqa: BLE001 - the channel closed: drop the input
                    pass
        finally:
            ch.close()  # the client left (or `exec -d`): end the channel, not the command
            fin.join()

    def _pump(self, read, type: int) -> None:
        while True:
            try:
                data = read(CHUNK)
            except Exception:  # noqa: BLE001 - the channel or transport went away
                return
            if not data or not self._send(type, data):
                return

    def _finish(self, ch, out) -> None:
        self._pump(ch.recv_stderr, STDERR)
        out.join()
        code = ch.recv_exit_status()  # -1 when the channel closed without one
        self._send(EXIT, str(code).encode())


def _watch_folder(cdir: str) -> None:
    """Exit once the container's folder is gone (`rm` raced a first exec): connecting to a
    guest that is no more would otherwise retry for the whole connect timeout."""
    import threading

    def watch() -> None:
        while os.path.isdir(cdir):
            time.sleep(0.5)
        _log("exiting: the container's folder was removed")
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write(f"usage: python -m {MODULE} CONTAINER_DIR [CONNECT_TIMEOUT]\n")
        return 2
    cdir = os.path.abspath(argv[0])
    timeout = float(argv[1]) if len(argv) > 1 else 90.0
    cid = os.path.basename(cdir)
    config = Config.from_environ()  # the client's, through child_environ()
    if os.fork():
        os._exit(0)  # the client waits for this one; the child serves, adopted by init
    import signal

    os.chdir("/")
    os.umask(0o077)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    report = os.dup(1)
    os.set_inheritable(report, False)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)

    def answer(line: str) -> None:
        with contextlib.suppress(OSError):  # the client gave up waiting: serve anyway
            os.write(report, (line + "\n").encode())
        os.close(report)

    _log(f"starting (connect timeout {timeout:g} s)")
    _watch_folder(cdir)
    try:
        if _cdir(config, cid) != cdir:
            raise RuntimeFailure(
                f"{cdir} is not a container folder of {config.paths.state_root()}")
        from hv.guest.agent import Agent, endpoint

        server = _Server(config, cid, Agent.connect(endpoint(config.paths, cid),
                                                    timeout=timeout))
        server.bind()
        server.watch = _share_watch(config, cid)
    except HvError as e:
        _log(f"not ready: {e.message}")
        answer("error " + _error_json(e))
        return 1
    except Exception as e:  # noqa: BLE001 - reported to the client, traced in the log
        import traceback

        traceback.print_exc()
        answer("error " + _error_json(RuntimeFailure(
            f"the container's exec multiplexer failed: {e}",
            hint=f"read {config.paths.container_mux_log(cid)}")))
        return 1
    _log("ready")
    answer(f"ok {os.getpid()}")

    def on_term(_signum, _frame) -> None:
        server.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    reason = server.serve()
    server.cleanup()
    _log(f"exiting: {reason}")
    with contextlib.suppress(Exception):
        server.agent.close()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)  # paramiko's transport thread must not hold up the exit
