"""The exec multiplexer with real guests: one per container, reused, replaced when killed,
gone after stop / kill / rm -f, idle or a guest that powered off."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import HV, REPO

pytestmark = pytest.mark.vm


def _cdir(root, cid):
    return root / "containers" / cid


def _mux_pids(root, cid) -> list[int]:
    """Live `python -m hv.guest.mux ROOT/containers/CID` processes (zombies have no cmdline)."""
    needle = b"\0hv.guest.mux\0" + str(_cdir(root, cid)).encode() + b"\0"
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if needle in f.read():
                    found.append(int(p))
        except OSError:
            pass
    return found


def _pidfile(root, cid) -> int:
    return int((_cdir(root, cid) / "mux.pid").read_text())


def _kill_muxes(hv, root, cid) -> None:
    for pid in _mux_pids(root, cid):
        os.kill(pid, signal.SIGKILL)
    hv.wait_for(lambda: not _mux_pids(root, cid), 10, 0.05)


def _cid(hv, name) -> str:
    return hv("inspect", "-f", "{{.Id}}", name, check=True).stdout.strip()


@contextlib.contextmanager
def _container(hv, name, image, *command):
    """A detached container `name` running `command`, removed (-f) afterwards; its id."""
    hv("rm", "-f", name)
    hv("run", "-d", "--name", name, image, *command, check=True)
    try:
        yield _cid(hv, name)
    finally:
        hv("rm", "-f", name)


@pytest.fixture(scope="module")
def box(hv, busybox):
    name = "hv-test-mux"
    with _container(hv, name, busybox, "sleep", "3600") as cid:
        yield name, cid


def test_execs_share_one_multiplexer_and_skip_paramiko(hv, hv_root, box):
    name, cid = box
    _kill_muxes(hv, hv_root, cid)
    hv("exec", name, "true", check=True)
    pid = _pidfile(hv_root, cid)
    assert _mux_pids(hv_root, cid) == [pid]
    for _ in range(3):
        hv("exec", name, "true", check=True)
    assert _pidfile(hv_root, cid) == pid and _mux_pids(hv_root, cid) == [pid]
    sock = _cdir(hv_root, cid) / "mux.sock"
    assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o600
    # an exec through a running multiplexer imports no paramiko and does no handshake
    p = subprocess.run([sys.executable, "-X", "importtime", *HV[1:], "exec", name, "echo", "hi"],
                       capture_output=True, text=True, env=hv.env(), cwd=REPO, timeout=120)
    assert p.returncode == 0 and p.stdout == "hi\n"
    assert "paramiko" not in p.stderr


def test_exit_codes_streams_and_stdin_over_the_multiplexer(hv, box):
    name, _ = box
    p = hv("exec", name, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (p.returncode, p.stdout, p.stderr) == (3, "out\n", "err\n")
    p = hv("exec", name, "no-such-thing")
    assert p.returncode == 127 and "executable file not found" in p.stderr
    assert hv("exec", name, "/etc/passwd").returncode == 126
    data = os.urandom(3 * 1024 * 1024 + 7)
    p = hv("exec", "-i", name, "md5sum", input=data)
    assert p.returncode == 0 and p.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()
    p = hv("exec", "-i", name, "sh", "-c", "cat; echo done", input="from stdin\n")
    assert p.stdout == "from stdin\ndone\n"
    p = hv("exec", name, "sh", "-c", "head -c 4000000 /dev/zero | tr '\\0' x")
    assert p.returncode == 0 and p.stdout == "x" * 4_000_000
    p = hv("top", name)
    assert p.returncode == 0 and "sleep 3600" in p.stdout


def test_exec_into_a_paused_container_errors(hv, box):
    name, _ = box
    hv("pause", name, check=True)
    try:
        p = hv("exec", name, "true", timeout=60)
        assert p.returncode == 1 and "is paused" in p.stderr
    finally:
        hv("unpause", name, check=True)
    hv("exec", name, "true", check=True)


def test_a_killed_multiplexer_is_replaced(hv, hv_root, box):
    name, cid = box
    hv("exec", name, "true", check=True)
    old = _pidfile(hv_root, cid)
    os.kill(old, signal.SIGKILL)
    hv.wait_for(lambda: not _mux_pids(hv_root, cid), 10, 0.05)
    assert (_cdir(hv_root, cid) / "mux.sock").exists()  # stale: nobody listens
    p = hv("exec", name, "echo", "again")
    assert p.returncode == 0 and p.stdout == "again\n", p.stderr
    new = _pidfile(hv_root, cid)
    assert new != old and _mux_pids(hv_root, cid) == [new]


def test_concurrent_first_execs_start_one_multiplexer(hv, hv_root, box):
    name, cid = box
    _kill_muxes(hv, hv_root, cid)
    procs = [hv.popen("exec", name, "echo", str(i), stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE) for i in range(4)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    assert sorted(o[0] for o in outs) == [b"0\n", b"1\n", b"2\n", b"3\n"]
    assert len(_mux_pids(hv_root, cid)) == 1


def test_an_idle_multiplexer_exits(hv, hv_root, box):
    name, cid = box
    _kill_muxes(hv, hv_root, cid)
    hv("exec", name, "true", env={"HV_MUX_IDLE": "1"}, check=True)
    assert _mux_pids(hv_root, cid)
    hv.wait_for(lambda: not _mux_pids(hv_root, cid), 15, 0.1)
    assert not (_cdir(hv_root, cid) / "mux.sock").exists()
    assert "exiting: no session" in (_cdir(hv_root, cid) / "mux.log").read_text()
    hv("exec", name, "true", check=True)  # and the next exec starts another


def test_stop_kill_and_rm_leave_no_multiplexer(hv, hv_root, busybox):
    name = "hv-test-mux-life"
    with _container(hv, name, busybox, "sleep", "3600") as cid:
        hv("exec", name, "true", check=True)
        assert _mux_pids(hv_root, cid)
        hv("stop", "-t", "1", name, check=True)
        assert _mux_pids(hv_root, cid) == []
        p = hv("exec", name, "true")
        assert p.returncode == 1 and "is not running" in p.stderr  # as Docker
        assert _mux_pids(hv_root, cid) == []

        hv("start", name, check=True)
        hv("exec", name, "true", check=True)
        assert _mux_pids(hv_root, cid)
        hv("kill", name, check=True)
        assert _mux_pids(hv_root, cid) == []

        hv("start", name, check=True)
        hv("exec", name, "true", check=True)
        pid = _pidfile(hv_root, cid)
        hv("rm", "-f", name, check=True)
        assert _mux_pids(hv_root, cid) == []
        assert not os.path.exists(f"/proc/{pid}/cmdline") or \
            b"hv.guest.mux" not in open(f"/proc/{pid}/cmdline", "rb").read()


def test_multiplexer_exits_with_its_guest(hv, hv_root, busybox):
    name = "hv-test-mux-short"
    with _container(hv, name, busybox, "sleep", "4") as cid:
        hv("exec", name, "true", check=True)
        assert _mux_pids(hv_root, cid)
        assert hv("wait", name).stdout.strip() == "0"
        hv.wait_for(lambda: not _mux_pids(hv_root, cid), 10, 0.1)
        log = (_cdir(hv_root, cid) / "mux.log").read_text()
        assert "exiting: the SSH connection to the guest closed" in log


def test_exec_of_a_container_killed_under_it_exits_137(hv, busybox):
    """The guest goes away while an exec runs: the exec ends, with Docker's 137."""
    name = "hv-test-mux-killed"
    with _container(hv, name, busybox, "sleep", "3600"):
        hv("exec", name, "true", check=True)  # the multiplexer is up
        p = hv.popen("exec", name, "sleep", "300", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
        hv.wait_for(lambda: "sleep 300" in hv("top", name).stdout, 30, 0.2)
        hv("kill", name, check=True)
        _out, err = p.communicate(timeout=60)
        assert p.returncode == 137, err
