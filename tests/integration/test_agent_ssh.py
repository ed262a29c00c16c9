"""The guest agent's SSH side (exec, attach, cp, signal, top) in real VMs, raw qemu + paramiko.

Guests are booted by raw qemu (no libvirt) with a SLIRP host forward 127.0.0.1:PORT -> :22,
keys made here (ed25519, OpenSSH formats), the host key pinned (RejectPolicy). Three boots
serve every check: a long-running `sleep` container shared by the exec/cp/top checks, a
tty + stdin_open + wait_attach `sh` container, and a maintenance boot; a fourth runs a
pipe-mode attach session to its exit.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hv.guest import attach
from hv.guest.attach import FrameDecoder, StatResult, exec_command, session_command
from hv.guest.logstream import read_records, read_status
from hv.guest.seed import GuestSpec, write_seed

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("rawboot", REPO / "bench/rawboot.py")
assert _spec and _spec.loader
rawboot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rawboot)

BOOT_TIMEOUT = 90.0
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OCI = "OCI runtime exec failed: exec failed: unable to start container process: "


@dataclass
class Keys:
    host_private: str
    host_public: paramiko.PKey
    client_private: paramiko.PKey
    client_public_line: str


def make_keys() -> Keys:
    host = Ed25519PrivateKey.generate()
    client = Ed25519PrivateKey.generate()
    openssh = serialization.PrivateFormat.OpenSSH
    host_pem = host.private_bytes(
        serialization.Encoding.PEM, openssh, serialization.NoEncryption()
    ).decode()
    client_pem = client.private_bytes(
        serialization.Encoding.PEM, openssh, serialization.NoEncryption()
    ).decode()
    host_pub = paramiko.Ed25519Key.from_private_key(io.StringIO(host_pem))
    client_key = paramiko.Ed25519Key.from_private_key(io.StringIO(client_pem))
    line = f"ssh-ed25519 {client_key.get_base64()} hv-test"
    return Keys(host_pem, host_pub, client_key, line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Guest:
    """One raw-qemu VM with an SSH forward; `close()` kills qemu by PID."""

    def __init__(self, assets, tmp: Path, spec: GuestSpec, keys: Keys | None):
        kernel, initrd, cmdline, disk0 = assets
        self.tmp, self.keys = tmp, keys
        tmp.mkdir(parents=True, exist_ok=True)
        self.disk = tmp / "root.ext4"
        shutil.copyfile(disk0, self.disk)
        if keys:  # None: no sshd (for timing comparisons)
            spec.authorized_keys = keys.client_public_line
            spec.ssh_host_key = keys.host_private
        self.seed, self.log, self.status, self.console = (
            tmp / n for n in ("seed.iso", "log", "status", "console.log")
        )
        write_seed(self.seed, spec)
        self.port = free_port()
        argv = rawboot.qemu_argv(
            kernel, initrd, cmdline, self.disk, self.seed, self.log, self.status, self.console
        )
        i = argv.index("user,id=net0")
        argv[i] = f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.port}-:22"
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.client: paramiko.SSHClient | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def wait_status(self, word: str, timeout: float = BOOT_TIMEOUT) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.status.read_text() if self.status.exists() else ""
            if any(line.startswith(word) for line in text.splitlines()):
                return time.monotonic() - self.t0
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        pytest.fail(f"no `{word}` from the guest:\n{self.status_text()}\n{self.console_text()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        self.proc.wait(timeout=timeout)
        return self.proc.returncode

    def close(self) -> None:
        if self.client:
            self.client.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()

    def status_text(self) -> str:
        return self.status.read_text() if self.status.exists() else ""

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    # -- ssh ---------------------------------------------------------------------------
    def connect(self, timeout: float = 30.0) -> paramiko.SSHClient:
        c = paramiko.SSHClient()
        c.set_missing_host_key_policy(paramiko.RejectPolicy())
        c.get_host_keys().add(f"[127.0.0.1]:{self.port}", "ssh-ed25519", self.keys.host_public)
        deadline = time.monotonic() + timeout
        while True:
            try:
                c.connect(
                    "127.0.0.1",
                    port=self.port,
                    username="root",
                    pkey=self.keys.client_private,
                    look_for_keys=False,
                    allow_agent=False,
                    timeout=10,
                    banner_timeout=10,
                    auth_timeout=10,
                )
                return c
            except (paramiko.SSHException, OSError, EOFError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    @property
    def ssh(self) -> paramiko.SSHClient:
        if self.client is None:
            self.client = self.connect()
        return self.client

    def channel(self, command: str, pty: tuple[int, int] | None = None) -> paramiko.Channel:
        ch = self.ssh.get_transport().open_session()
        if pty:
            ch.get_pty(term="vt100", width=pty[1], height=pty[0])
        ch.exec_command(command)
        return ch

    def run(
        self, command: str, stdin: bytes = b"", timeout: float = 60.0
    ) -> tuple[int, bytes, bytes]:
        ch = self.channel(command)
        ch.settimeout(timeout)
        if stdin:
            ch.sendall(stdin)
        ch.shutdown_write()
        out, err = bytearray(), bytearray()
        # Until EOF, not until exit-status: sshd sends the status as soon as the process
        # is reaped, possibly before the last of its output.
        while True:
            if ch.recv_ready():
                out += ch.recv(1 << 16)
            elif ch.recv_stderr_ready():
                err += ch.recv_stderr(1 << 16)
            elif ch.eof_received:
                break
            else:
                time.sleep(0.002)
        while ch.recv_stderr_ready():
            err += ch.recv_stderr(1 << 16)
        code = ch.recv_exit_status()
        ch.close()
        return code, bytes(out), bytes(err)

    def exec(self, argv, env=(), workdir=None, user=None, stdin=b""):
        return self.run(exec_command(argv, env, workdir, user), stdin)


def recv_until(ch: paramiko.Channel, pred, timeout: float = 20.0) -> bytes:
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while not pred(bytes(buf)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; got {bytes(buf)!r}")
        if ch.recv_ready():
            buf += ch.recv(65536)
        elif ch.closed or ch.exit_status_ready() and not ch.recv_ready():
            raise AssertionError(f"channel closed; got {bytes(buf)!r}")
        else:
            time.sleep(0.01)
    return bytes(buf)


class AttachSession:
    """An `attach` channel: frames in both directions."""

    def __init__(self, guest: Guest):
        self.ch = guest.channel(session_command("attach"))
        self.dec = FrameDecoder()
        self.frames: list[attach.Frame] = []

    def send(self, data: bytes) -> None:
        self.ch.sendall(data)

    def read_until(self, pred, timeout: float = 30.0) -> list[attach.Frame]:
        deadline = time.monotonic() + timeout
        while not pred(self.frames):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; frames {self.frames!r}")
            if self.ch.recv_ready():
                self.frames += self.dec.feed(self.ch.recv(65536))
            elif self.ch.exit_status_ready() and not self.ch.recv_ready():
                raise AssertionError(f"attach ended; frames {self.frames!r}")
            else:
                time.sleep(0.01)
        return self.frames

    def output(self, type_: int = attach.STDOUT) -> bytes:
        return b"".join(f.data for f in self.frames if f.type == type_)


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is not installed: run 'make setup'")
    return rawboot.build_assets(tmp_path_factory.mktemp("guest"))


@pytest.fixture(scope="module")
def keys() -> Keys:
    return make_keys()


MAIN_SCRIPT = r"""
trap 'echo got-term; exit 42' TERM
mkdir -p /data /data/sub
echo hello >/data/file; chmod 640 /data/file; chown 1234:5678 /data/file
ln -s file /data/link; ln -s / /data/toroot; ln -s ../../.. /data/up
echo main-ready
sleep 600 & wait
"""


@pytest.fixture(scope="module")
def guest(assets, keys, tmp_path_factory):
    """The shared long-running container: `sh -c MAIN_SCRIPT` (a sleep that traps TERM)."""
    spec = GuestSpec(
        "sshmain",
        ["sh", "-c", MAIN_SCRIPT],
        [PATH, "FROM_MAIN=main value", "OVERRIDE=main"],
        workdir="/srv",
        hostname="sshbox",
    )
    g = Guest(assets, tmp_path_factory.mktemp("main"), spec, keys)
    try:
        g.started_s = g.wait_status("started")
        yield g
    finally:
        g.close()


# ---- exec -----------------------------------------------------------------------------------


def test_ready_and_timings(guest: Guest) -> None:
    # sshd listens by the time `started` is written: the first connect succeeds at once.
    t = time.monotonic()
    c = guest.connect(timeout=2)
    connect_s = time.monotonic() - t
    c.close()
    assert guest.run(session_command("ready")) == (0, b"ok\n", b"")
    t = time.monotonic()
    for _ in range(5):
        guest.run(session_command("ready"))
    rtt = (time.monotonic() - t) / 5
    print(
        f"\nboot->started {guest.started_s:.2f}s, connect+auth {connect_s * 1000:.0f} ms, "
        f"`ready` round trip {rtt * 1000:.0f} ms"
    )


def test_exec_argv_is_intact(guest: Guest) -> None:
    args = ["a  b", 'it\'s "q" $HOME \\', "line1\nline2", "", "ünï ✓"]
    code, out, err = guest.exec(
        ["sh", "-c", 'for a in "$@"; do printf "[%s]" "$a"; done', "x", *args]
    )
    assert (code, err) == (0, b"")
    assert out.decode() == "".join(f"[{a}]" for a in args)


@pytest.mark.parametrize(
    ("argv", "user", "workdir", "code", "message"),
    [
        (["sh", "-c", "exit 3"], None, None, 3, ""),
        (["nosuchcmd"], None, None, 127,
         OCI + 'exec: "nosuchcmd": executable file not found in $PATH: unknown'),
        (["/no/such"], None, None, 127,
         OCI + 'exec: "/no/such": stat /no/such: no such file or directory: unknown'),
        (["/etc/passwd"], None, None, 126, OCI + 'exec: "/etc/passwd": permission denied: unknown'),
        (["true"], "bob", None, 126, "unable to find user bob: no matching entries in passwd file"),
        (["true"], None, "/x", 126,
         OCI + 'chdir to cwd ("/x") set in config.json failed: no such file or directory: unknown'),
    ],
)  # fmt: skip
def test_exec_codes(guest: Guest, argv, user, workdir, code, message) -> None:
    got = guest.exec(argv, user=user, workdir=workdir)
    assert got == (code, b"", (message + "\n").encode() if message else b""), got


def test_exec_env_user_workdir(guest: Guest) -> None:
    script = 'echo "$FROM_MAIN|$OVERRIDE|$EXTRA|$HOME|$PWD|$(id -u):$(id -g)|${TERM-unset}"'
    code, out, _ = guest.exec(["sh", "-c", script], env=["OVERRIDE=exec", "EXTRA=x y"])
    assert code == 0 and out == b"main value|exec|x y|/root|/srv|0:0|unset\n"
    _, out, _ = guest.exec(["sh", "-c", script], user="nobody", workdir="/tmp")
    assert out == b"main value|main||/nonexistent|/tmp|65534:65534|unset\n"
    _, out, _ = guest.exec(["sh", "-c", "echo $(id -u):$(id -g) $HOME"], user="1234:5678")
    assert out == b"1234:5678 /\n"
    code, out, _ = guest.exec(["cat"], stdin=b"piped stdin\n")
    assert (code, out) == (0, b"piped stdin\n")


def test_exec_with_a_pty(guest: Guest) -> None:
    ch = guest.channel(exec_command(["sh", "-c", "tty; stty size; echo T=$TERM; cat"]), (30, 100))
    out = recv_until(ch, lambda b: b"T=" in b and b.endswith(b"\n"))
    lines = out.decode().replace("\r", "").split("\n")
    assert lines[0].startswith("/dev/pts/"), out
    assert lines[1] == "30 100" and lines[2] == "T=xterm", out
    ch.send(b"\x04")  # ^D: cat sees EOF
    assert ch.recv_exit_status() == 0
    ch.close()

    # resize changes the size; ^C interrupts quickly.
    ch = guest.channel(exec_command(["sh", "-c", "read x; stty size; exec sleep 60"]), (24, 80))
    time.sleep(0.5)
    ch.resize_pty(width=132, height=50)
    ch.send(b"go\n")
    recv_until(ch, lambda b: b"50 132" in b)
    time.sleep(0.3)
    t = time.monotonic()
    ch.send(b"\x03")
    code = ch.recv_exit_status()
    assert time.monotonic() - t < 3
    assert code == 130
    ch.close()


# ---- stat, tar-out, tar-in ---------------------------------------------------------------


def stat(guest: Guest, path: str, follow: bool = False) -> tuple[int, StatResult | bytes]:
    cmd = session_command("stat", *(["-L"] if follow else []), path)
    code, out, err = guest.run(cmd)
    return code, (StatResult.parse(out) if code == 0 else err)


def test_stat(guest: Guest) -> None:
    guest.wait_status("started")
    code, st = stat(guest, "/data/file")
    assert code == 0 and (st.type, st.mode, st.uid, st.gid, st.size) == ("f", 0o640, 1234, 5678, 6)
    assert abs(st.mtime_ns / 1e9 - time.time()) < 3600
    assert stat(guest, "/data")[1].type == "d"
    code, st = stat(guest, "/data/link")
    assert (st.type, st.link_target) == ("l", "file")
    code, st = stat(guest, "/data/link", follow=True)
    assert (st.type, st.size, st.link_target) == ("f", 6, "")
    assert stat(guest, "/nope") == (2, b"No such file or directory\n")
    # Never outside the container root: `..`, links to / and up, the agent's files.
    assert stat(guest, "/run/hv/authorized_keys")[0] == 2
    assert stat(guest, "../../run/hv/authorized_keys")[0] == 2
    assert stat(guest, "/data/toroot/run/hv/authorized_keys", follow=True)[0] == 2
    assert stat(guest, "/data/up/run/hv/authorized_keys", follow=True)[0] == 2
    assert stat(guest, "/proc/1/root/run/hv/authorized_keys", follow=True)[0] == 2
    assert stat(guest, "/data/up/data/file", follow=True)[1].size == 6


def tar_out(guest: Guest, path: str, follow: bool = False) -> tuple[int, bytes, bytes]:
    return guest.run(session_command("tar-out", "1" if follow else "0", path))


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: m for m in tf.getmembers()}


def test_tar_out_stays_inside(guest: Guest) -> None:
    code, data, err = tar_out(guest, "/data")
    assert code == 0, err
    m = members(data)
    assert m["data/file"].mode == 0o640 and (m["data/file"].uid, m["data/file"].gid) == (1234, 5678)
    assert m["data/toroot"].issym() and m["data/toroot"].linkname == "/"
    code, data, _ = tar_out(guest, "/data/link", follow=True)
    assert code == 0 and list(members(data)) == ["file"]
    for path in ("../../run/hv", "/data/toroot/run/hv", "/data/up/run/hv",
                 "/proc/1/root/run/hv"):  # fmt: skip
        code, data, err = tar_out(guest, path, follow=True)
        assert code != 0 and b"authorized_keys" not in data, (path, err)
    code, data, _ = tar_out(guest, "/data/toroot/etc/hostname", follow=True)
    assert code == 0 and list(members(data)) == ["hostname"]


def test_tar_in_round_trip(guest: Guest) -> None:
    big = os.urandom(3 << 20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:

        def add(name, data=b"", mode=0o644, uid=0, gid=0, type_=tarfile.REGTYPE, link=""):
            ti = tarfile.TarInfo(name)
            ti.mode, ti.uid, ti.gid, ti.type, ti.linkname = mode, uid, gid, type_, link
            ti.mtime = 1_600_000_000
            ti.size = len(data) if type_ == tarfile.REGTYPE else 0
            tf.addfile(ti, io.BytesIO(data) if type_ == tarfile.REGTYPE else None)

        add("in", mode=0o750, uid=7, gid=8, type_=tarfile.DIRTYPE)
        add("in/big.bin", big, mode=0o600, uid=1000, gid=1001)
        add("in/script.sh", b"#!/bin/sh\necho hi\n", mode=0o4755)
        add("in/link", type_=tarfile.SYMTYPE, link="script.sh")
        add("in/" + "long-name-" * 12, b"long")
    code, out, err = guest.run(session_command("tar-in", "/tmp"), stdin=buf.getvalue())
    assert (code, err) == (0, b""), err
    code, data, err = tar_out(guest, "/tmp/in")
    assert code == 0, err
    m = members(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert tf.extractfile("in/big.bin").read() == big
    assert (m["in"].mode, m["in"].uid, m["in"].gid) == (0o750, 7, 8)
    assert (m["in/big.bin"].mode, m["in/big.bin"].uid, m["in/big.bin"].gid) == (0o600, 1000, 1001)
    assert m["in/big.bin"].mtime == 1_600_000_000
    assert m["in/script.sh"].mode == 0o4755
    assert m["in/link"].issym() and m["in/link"].linkname == "script.sh"
    assert "in/" + "long-name-" * 12 in m
    assert guest.exec(["/tmp/in/link"])[1] == b"hi\n"
    # overwrite an existing file; a file as the target directory is an error
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo("in/script.sh")
        ti.size, ti.mode = 4, 0o644
        tf.addfile(ti, io.BytesIO(b"new\n"))
    assert guest.run(session_command("tar-in", "/tmp"), stdin=buf.getvalue())[0] == 0
    assert guest.exec(["cat", "/tmp/in/script.sh"])[1] == b"new\n"
    code, _, err = guest.run(session_command("tar-in", "/data/file"), stdin=buf.getvalue())
    assert code == 2 and b"Not a directory" in err


def test_top(guest: Guest) -> None:
    code, out, err = guest.run(session_command("top"))
    assert code == 0, err
    lines = out.decode().splitlines()
    assert lines[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert all(len(line.split(None, 7)) == 8 for line in lines), out
    cmds = [line.split(None, 7)[7] for line in lines[1:]]
    assert any(c.startswith("sh -c") for c in cmds) and "sleep 600" in cmds, out
    assert not any("sshd" in c or "hv-init" in c for c in cmds), out
    code, out, err = guest.run(session_command("top", ["-o", "pid,user,args"]))
    assert code == 0 and out.decode().split("\n")[0].split() == ["PID", "USER", "COMMAND"], err
    assert b"sleep 600" in out and b"sshd" not in out


def test_hosts_verb_rewrites_etc_hosts_in_place(guest: Guest) -> None:
    """hv networks: the host pushes a container's whole /etc/hosts when a peer joins or
    leaves (docs/networks.md); the bind mount keeps its inode, so the change is seen."""
    _, before, _ = guest.exec(["cat", "/etc/hosts"])
    new = b"127.0.0.1\tlocalhost\n172.18.0.3\tdb db-alias 0123456789ab\n"
    t = time.monotonic()
    assert guest.run(session_command("hosts"), stdin=new) == (0, b"", b"")
    took = time.monotonic() - t
    assert guest.exec(["cat", "/etc/hosts"])[1] == new
    code, out, _ = guest.exec(["ping", "-c", "1", "-W", "1", "db-alias"])
    assert b"172.18.0.3" in out  # resolved through the new file (the ping itself may fail)
    shorter = b"127.0.0.1\tlocalhost\n"
    assert guest.run(session_command("hosts"), stdin=shorter)[0] == 0
    assert guest.exec(["cat", "/etc/hosts"])[1] == shorter  # cut to length
    assert guest.run(session_command("hosts"), stdin=before)[0] == 0
    assert guest.run(session_command("hosts", "extra"))[0] == 125
    print(f"\n`hosts` update round trip {took * 1000:.0f} ms")


def test_unknown_verb(guest: Guest) -> None:
    code, _, err = guest.run("frobnicate")
    assert code == 125 and b"unknown verb" in err


def test_signal_last(guest: Guest) -> None:
    """Runs last in this module: SIGTERM ends the shared container (trap -> exit 42)."""
    a = AttachSession(guest)
    time.sleep(0.3)
    assert guest.run(session_command("signal", "15")) == (0, b"", b"")
    frames = a.read_until(lambda fs: any(f.type == attach.EXIT for f in fs))
    assert a.output() == b"got-term\n"
    assert attach.exit_code(frames[-1]) == 42
    assert guest.wait_exit() == 0
    assert read_status(guest.status).exit_code == 42
    assert b"got-term\n" in b"".join(r.data for r in read_records(guest.log)[0])


# ---- attach, tty, wait_attach, maintenance -------------------------------------------------


def test_attach_pipe_mode(assets, keys, tmp_path) -> None:
    script = "echo first; cat; echo after-eof >&2; exit 7"
    g = Guest(
        assets,
        tmp_path,
        GuestSpec("att", ["sh", "-c", script], [PATH], stdin_open=True, wait_attach=True),
        keys,
    )
    try:
        a = AttachSession(g)
        a.read_until(lambda fs: b"first\n" in a.output())
        a.send(attach.stdin_frame(b"to cat\n"))
        a.read_until(lambda fs: b"to cat\n" in a.output())
        a.send(attach.eof_frame())
        frames = a.read_until(lambda fs: any(f.type == attach.EXIT for f in fs))
        assert a.output() == b"first\nto cat\n"
        assert a.output(attach.STDERR) == b"after-eof\n"
        assert attach.exit_code(frames[-1]) == 7
        assert g.wait_exit() == 0
        assert read_status(g.status).exit_code == 7
    finally:
        g.close()


def test_tty_main_with_wait_attach(assets, keys, tmp_path) -> None:
    g = Guest(
        assets,
        tmp_path,
        GuestSpec("tty", ["sh"], [PATH, "TERM=xterm"], tty=True, stdin_open=True, wait_attach=True),
        keys,
    )
    try:
        a = AttachSession(g)
        a.send(attach.resize_frame(40, 120))
        g.wait_status("started")
        # the main process's first output (ash's banner and prompt) is not lost
        a.read_until(lambda fs: b"built-in shell" in a.output() and b"# " in a.output())
        a.send(attach.stdin_frame(b"tty; stty size\n"))
        a.read_until(lambda fs: b"40 120" in a.output())
        out = a.output().decode()
        assert "/dev/pts/" in out, out
        a.send(attach.resize_frame(33, 99))
        a.send(attach.stdin_frame(b"stty size\n"))
        a.read_until(lambda fs: b"33 99" in a.output())
        # a detached client (channel closed) leaves no relay behind
        b = AttachSession(g)
        time.sleep(0.3)
        b.ch.close()
        time.sleep(0.5)
        _, ps, _ = g.exec(["ps", "-o", "args"])
        assert ps.count(b"--session") == 2, ps  # this exec's and `a`'s
        # exec into the tty container sees the same /dev/pts
        code, out2, _ = g.exec(["sh", "-c", "ls /dev/pts"])
        assert code == 0 and b"ptmx" in out2
        a.send(attach.stdin_frame(b"exit 5\n"))
        frames = a.read_until(lambda fs: any(f.type == attach.EXIT for f in fs))
        assert attach.exit_code(frames[-1]) == 5
        assert g.wait_exit() == 0
        assert read_status(g.status).exit_code == 5
    finally:
        g.close()


def test_maintenance(assets, keys, tmp_path) -> None:
    g = Guest(
        assets,
        tmp_path,
        GuestSpec("mnt", ["sh", "-c", "echo should-not-run"], [PATH], maintenance=True),
        keys,
    )
    try:
        assert g.run(session_command("ready"))[:2] == (0, b"ok\n")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            ti = tarfile.TarInfo("copied.txt")
            ti.size = 5
            tf.addfile(ti, io.BytesIO(b"data\n"))
        assert g.run(session_command("tar-in", "/"), stdin=buf.getvalue())[0] == 0
        assert g.run(session_command("signal", "15"))[0] == 1
        assert g.run(session_command("attach"))[0] == 1
        assert g.status_text() == ""
        assert read_records(g.log)[0] == []
    finally:
        g.close()  # the host destroys a maintenance VM
    # The guest's sync() put the file in ext4's journal; the next mount replays it, debugfs
    # does not, so replay it as a mount would (e2fsck exits 1 when it replayed something).
    assert subprocess.run(["e2fsck", "-fy", str(g.disk)], capture_output=True).returncode in (0, 1)
    out = subprocess.run(
        ["debugfs", "-R", "cat /copied.txt", str(g.disk)], capture_output=True, check=True
    ).stdout
    assert out == b"data\n"
