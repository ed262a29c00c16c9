"""Into the guest: exec, run -it, attach, cp, lifecycle, ports, top/stats — real VMs.

One long-running container is shared by the read-only exec/cp checks; PTYs are driven with
Python's pty module so raw mode, window size and Ctrl-C are exercised for real.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import re
import select
import socket
import struct
import subprocess
import termios
import time
import urllib.request

import pytest

from tests.conftest import HV, REPO

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def shared(hv, busybox):
    name = "hv-test-shared"
    hv("rm", "-f", name)
    hv("run", "-d", "--name", name, "-e", "FROM_RUN=yes", "-w", "/srv", busybox,
       "sleep", "3600", check=True)
    yield name
    hv("rm", "-f", name)


class Tty:
    """An hv command on a real pseudo-terminal of a given size."""

    def __init__(self, hv, *args: str, rows: int = 30, cols: int = 100):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen([*HV, *args], stdin=slave, stdout=slave, stderr=slave,
                                     env=hv.env(), cwd=REPO, start_new_session=True)
        os.close(slave)
        self.buf = b""

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, pattern: bytes, timeout: float = 60) -> bytes:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.buf):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen; got {self.buf[-500:]!r}")
            r, _, _ = select.select([self.master], [], [], left)
            if r:
                try:
                    self.buf += os.read(self.master, 65536)
                except OSError:
                    time.sleep(0.05)
        return self.buf

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.killpg(self.proc.pid, 28)  # SIGWINCH, as the terminal would

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            try:
                while select.select([self.master], [], [], 0)[0]:
                    self.buf += os.read(self.master, 65536)
            except OSError:
                pass

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


# --- exec --------------------------------------------------------------------------------------


def test_exec_argv_env_user_workdir(hv, shared):
    p = hv("exec", shared, "printf", "[%s]\\n", "a b", "c'd", "line\nbreak", "")
    assert p.returncode == 0 and p.stdout == "[a b]\n[c'd]\n[line\nbreak]\n[]\n", p.stderr
    p = hv("exec", "-e", "EXTRA=1", shared, "sh", "-c", 'echo "$FROM_RUN $EXTRA $(pwd)"')
    assert p.stdout == "yes 1 /srv\n", p.stderr
    p = hv("exec", "-u", "nobody", "-w", "/tmp", shared, "sh", "-c", "id -u; pwd")
    assert p.stdout == "65534\n/tmp\n", p.stderr
    p = hv("exec", "-u", "1234:5678", shared, "id")
    assert "uid=1234" in p.stdout and "gid=5678" in p.stdout


def test_exec_exit_codes(hv, shared):
    assert hv("exec", shared, "sh", "-c", "exit 3").returncode == 3
    p = hv("exec", shared, "no-such-thing")
    assert p.returncode == 127 and "executable file not found" in p.stderr
    p = hv("exec", shared, "/etc/passwd")
    assert p.returncode == 126
    p = hv("exec", "hv-no-such-container", "true")
    assert p.returncode == 1 and "No such container" in p.stderr


def test_exec_detached_keeps_running(hv, shared):
    assert hv("exec", "-d", shared, "sh", "-c", "sleep 1; touch /tmp/exec-d").returncode == 0
    hv.wait_for(lambda: hv("exec", shared, "test", "-e", "/tmp/exec-d").returncode == 0, 30)


def test_exec_stdin_is_streamed(hv, shared):
    data = "".join(f"line {i}\n" for i in range(2000))
    p = hv("exec", "-i", shared, "sh", "-c", "wc -l; md5sum", input=data)
    lines = p.stdout.split()
    assert lines[0] == "2000", p.stderr
    p = hv("exec", "-i", shared, "md5sum", input=data)
    assert p.stdout.split()[0] == hashlib.md5(data.encode()).hexdigest()


def test_exec_tty_size_resize_and_ctrl_c(hv, shared):
    t = Tty(hv, "exec", "-it", shared, "sh", rows=33, cols=111)
    try:
        t.expect(rb"[#$] ")
        t.send(b"tty; stty size\r")
        t.expect(rb"/dev/pts/\d+\r?\n33 111")
        t.resize(40, 120)
        time.sleep(0.5)
        t.send(b"stty size\r")
        t.expect(rb"40 120")
        t.send(b"sleep 60\r")
        time.sleep(1.5)
        start = time.monotonic()
        t.send(b"\x03")
        t.expect(rb"\^C")
        t.send(b"echo after-$?\r")
        t.expect(rb"after-130")
        assert time.monotonic() - start < 10
        t.send(b"exit 4\r")
        assert t.wait() == 4
    finally:
        t.close()
    # the terminal settings of the host side are restored: nothing else to check here


# --- run -it / attach -------------------------------------------------------------------------


def test_run_it_interactive_shell(hv, busybox):
    t = Tty(hv, "run", "-it", "--rm", busybox, "sh")
    try:
        t.expect(rb"[#$] ")
        t.send(b"echo hi-$((1+2)); tty\r")
        t.expect(rb"hi-3\r?\n/dev/pts/\d+")
        t.send(b"exit 7\r")
        assert t.wait() == 7
    finally:
        t.close()


def test_run_dit_then_attach_and_detach(hv, busybox):
    name = "hv-test-attach"
    hv("run", "-dit", "--name", name, busybox, "sh", check=True)
    try:
        t = Tty(hv, "attach", name)
        try:
            time.sleep(1)
            t.send(b"\r")  # the prompt was printed before we attached; ask for a new one
            t.expect(rb"# ")
            t.send(b"echo attached-$((6*7))\r")
            t.expect(rb"attached-42")
            t.send(b"\x10\x11")  # ctrl-p ctrl-q
            assert t.wait(timeout=30) == 0
        finally:
            t.close()
        assert "Up " in hv("ps", "-f", f"name={name}", "--format", "{{.Status}}").stdout
    finally:
        hv("rm", "-f", name)


def test_run_i_pipes_stdin_and_eof(hv, busybox):
    p = hv("run", "-i", "--rm", busybox, "sh", "-c", "cat; echo done", input="from stdin\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "from stdin\ndone\n"


# --- cp ----------------------------------------------------------------------------------------


def _tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "sub" / "exec.sh", 0o750)
    (root / "private").write_text("secret")
    os.chmod(root / "private", 0o600)
    (root / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 17))
    os.symlink("sub/exec.sh", root / "link")


def _digest(root) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            s = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("dir", oct(s.st_mode & 0o777))
            else:
                out[rel] = ("file", oct(s.st_mode & 0o777),
                            hashlib.sha256(open(p, "rb").read()).hexdigest())
    return out


def test_cp_round_trip(hv, shared, tmp_path):
    src = tmp_path / "tree"
    _tree(src)
    hv("cp", str(src), f"{shared}:/tmp/", check=True)
    p = hv("exec", shared, "sh", "-c", "stat -c '%a %U' /tmp/tree/private; readlink /tmp/tree/link")
    assert p.stdout == "600 root\nsub/exec.sh\n", p.stderr
    back = tmp_path / "back"
    hv("cp", f"{shared}:/tmp/tree", str(back), check=True)
    assert _digest(back) == _digest(src)
    # content of a directory with /. and a single file to a new name
    hv("cp", f"{shared}:/tmp/tree/.", str(tmp_path / "content"), check=True)
    assert sorted(os.listdir(tmp_path / "content")) == ["big.bin", "link", "private", "sub"]
    hv("cp", f"{shared}:/tmp/tree/private", str(tmp_path / "renamed"), check=True)
    assert (tmp_path / "renamed").read_text() == "secret"
    # -L follows the link
    hv("cp", "-L", f"{shared}:/tmp/tree/link", str(tmp_path / "followed"), check=True)
    assert (tmp_path / "followed").read_text() == "#!/bin/sh\necho hi\n"


def test_cp_archive_keeps_owner_and_stdout_tar(hv, shared, tmp_path):
    f = tmp_path / "owned"
    f.write_text("x")
    os.chown(f, 1234, 5678)
    hv("cp", "-a", str(f), f"{shared}:/tmp/owned-a", check=True)
    hv("cp", str(f), f"{shared}:/tmp/owned-plain", check=True)
    p = hv("exec", shared, "stat", "-c", "%u:%g", "/tmp/owned-a", "/tmp/owned-plain")
    assert p.stdout.split() == ["1234:5678", "0:0"]
    raw = subprocess.run([*HV, "cp", f"{shared}:/etc/passwd", "-"], capture_output=True,
                         env=hv.env(), cwd=REPO, timeout=120)
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(raw.stdout)) as tar:
        assert tar.getnames() == ["passwd"]


def test_cp_errors_and_escapes(hv, shared, tmp_path):
    p = hv("cp", str(tmp_path), f"{shared}:/no/such/dir/")
    assert p.returncode == 1 and "hint:" in p.stderr
    p = hv("cp", f"{shared}:/no/such/file", str(tmp_path / "x"))
    assert p.returncode == 1 and "Could not find the file" in p.stderr
    hv("exec", shared, "ln", "-sf", "/", "/tmp/root-link", check=True)
    hv("exec", shared, "ln", "-sf", "../../../../..", "/tmp/up-link", check=True)
    for path in ("/tmp/root-link/run/hv/authorized_keys", "/tmp/up-link/run/hv/authorized_keys",
                 "/../../../run/hv/authorized_keys", "/proc/1/root/run/hv/authorized_keys"):
        p = hv("cp", f"{shared}:{path}", str(tmp_path / "stolen"))
        assert p.returncode != 0, path
        assert not (tmp_path / "stolen").exists()
    # `..` resolves inside the container root: this is the container's own passwd
    hv("cp", f"{shared}:/../../etc/passwd", str(tmp_path / "pw"), check=True)
    assert "nobody" in (tmp_path / "pw").read_text()


def test_cp_into_a_stopped_container(hv, busybox, tmp_path):
    name = "hv-test-cp-stopped"
    hv("run", "--name", name, busybox, "true", check=True)
    try:
        (tmp_path / "f").write_text("while stopped\n")
        hv("cp", str(tmp_path / "f"), f"{name}:/f", check=True)
        hv("cp", f"{name}:/etc/hostname", str(tmp_path / "h"), check=True)
        assert "Exited (0)" in hv("ps", "-a", "-f", f"name={name}").stdout
        hv("start", name, check=True)
        hv("wait", name, check=True)
        out = hv("run", "--rm", busybox, "true")
        assert out.returncode == 0
    finally:
        hv("rm", "-f", name)


# --- lifecycle ----------------------------------------------------------------------------------


def test_stop_start_restart_keep_the_disk(hv, busybox):
    name = "hv-test-life"
    hv("run", "-d", "--name", name, busybox, "sh", "-c",
       "trap 'exit 42' TERM; while :; do sleep 1; done", check=True)
    try:
        hv("exec", name, "sh", "-c", "echo kept > /data.txt", check=True)
        assert hv("stop", name, check=True).stdout == f"{name}\n"
        assert "Exited (42)" in hv("ps", "-a", "-f", f"name={name}").stdout
        assert hv("start", name, check=True).stdout == f"{name}\n"
        assert hv("exec", name, "cat", "/data.txt", check=True).stdout == "kept\n"
        hv("restart", "-t", "5", name, check=True)
        assert hv("exec", name, "cat", "/data.txt", check=True).stdout == "kept\n"
        assert "Up " in hv("ps", "-f", f"name={name}").stdout
    finally:
        hv("rm", "-f", name)


def test_stop_escalates_when_sigterm_is_ignored(hv, busybox):
    name = "hv-test-stubborn"
    hv("run", "-d", "--name", name, busybox, "sh", "-c", "trap '' TERM; sleep 1000",
       check=True)
    try:
        start = time.monotonic()
        hv("stop", "-t", "2", name, check=True)
        assert time.monotonic() - start < 30
        assert "Exited (137)" in hv("ps", "-a", "-f", f"name={name}").stdout
    finally:
        hv("rm", "-f", name)


def test_kill_and_pause(hv, busybox):
    name = "hv-test-kill"
    hv("run", "-d", "--name", name, busybox, "sleep", "1000", check=True)
    try:
        hv("pause", name, check=True)
        assert "(Paused)" in hv("ps", "-f", f"name={name}").stdout
        hv("unpause", name, check=True)
        assert "(Paused)" not in hv("ps", "-f", f"name={name}").stdout
        hv("kill", name, check=True)
        hv.wait_for(lambda: "Exited (137)" in hv("ps", "-a", "-f", f"name={name}").stdout, 60)
        p = hv("kill", name)
        assert p.returncode == 1 and "is not running" in p.stderr
        p = hv("exec", name, "true")
        assert p.returncode == 1 and "is not running" in p.stderr
    finally:
        hv("rm", "-f", name)


# --- ports, top, stats -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_publish_reaches_httpd_and_is_released(hv, busybox):
    name = "hv-test-web"
    port = _free_port()
    hv("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:80", busybox, "sh", "-c",
       "mkdir -p /www && echo served-by-vm > /www/index.html && httpd -f -p 80 -h /www",
       check=True)
    try:
        def fetch():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3).read()
            except OSError:
                return None

        assert hv.wait_for(fetch, timeout=60) == b"served-by-vm\n"
        assert hv("port", name, check=True).stdout == f"80/tcp -> 127.0.0.1:{port}\n"
        assert f"127.0.0.1:{port}->80/tcp" in hv("ps", "-f", f"name={name}").stdout
        # a second container cannot take the same host port
        p = hv("run", "-d", "-p", f"127.0.0.1:{port}:80", busybox, "sleep", "5")
        assert p.returncode == 125 and "already allocated" in p.stderr
        top = hv("top", name, check=True).stdout
        assert "httpd" in top and "PID" in top.splitlines()[0]
        st = hv("stats", "--no-stream", name, check=True).stdout.splitlines()
        assert st[0].split()[:3] == ["CONTAINER", "ID", "NAME"]
        assert re.search(rf"{name}\s+\d+\.\d+%\s+[\d.]+MiB / 512MiB", st[1])
        hv("stop", "-t", "1", name, check=True)
        with socket.socket() as s:  # released: the port can be bound again
            s.bind(("127.0.0.1", port))
    finally:
        hv("rm", "-f", name)


def test_start_failure_is_reported_and_cleaned(hv, busybox):
    """The agent cannot start the main process: one error line, a hint, nothing left."""
    before = set(os.listdir(hv.root / "containers"))
    p = hv("run", "--rm", "-u", "no-such-user", busybox, "true")
    assert p.returncode == 125
    assert "unable to find user no-such-user" in p.stderr and "hint:" in p.stderr
    assert set(os.listdir(hv.root / "containers")) == before


def test_restart_policies(hv, busybox):
    a, b = "hv-test-onfail", "hv-test-always"
    hv("run", "-d", "--name", a, "--restart", "on-failure:1", busybox, "sh", "-c", "exit 3",
       check=True)
    hv("run", "-d", "--name", b, "--restart", "always", busybox, "sleep", "1000", check=True)
    try:
        def restarted_once_then_exited():
            doc = json.loads(hv("inspect", a).stdout)[0]
            return doc["RestartCount"] == 1 and doc["State"]["Status"] == "exited"

        hv.wait_for(restarted_once_then_exited, timeout=120, interval=1)
        assert json.loads(hv("inspect", a).stdout)[0]["State"]["ExitCode"] == 3
        hv("stop", "-t", "1", b, check=True)
        time.sleep(3)  # a watcher that ignored the user's stop would have restarted it by now
        assert "Exited" in hv("ps", "-a", "-f", f"name={b}").stdout
        p = hv("run", "--rm", "--restart", "always", busybox, "true")
        assert p.returncode == 125 and "Conflicting options" in p.stderr
    finally:
        hv("rm", "-f", a, b)
