"""The guest agent in a real VM, booted by raw qemu (no libvirt), against a busybox root.

Each boot takes a few seconds under TCG, so every boot checks several things at once.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from hv.guest.logstream import Record, Status, read_records, read_status
from hv.guest.seed import GuestSpec, write_seed

REPO = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = 60.0

pytestmark = pytest.mark.vm

_spec = importlib.util.spec_from_file_location("rawboot", REPO / "bench/rawboot.py")
assert _spec and _spec.loader
rawboot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rawboot)

IMAGE_HOSTS = b"# the image's own /etc/hosts\n"
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Assets:
    kernel: Path
    initrd: Path
    cmdline: str
    disk: Path  # pristine busybox root (never booted)
    bios: str | None = None  # the guest contract's firmware (qboot for hv's kernel)
    machine: str = "pc"


@dataclass
class Result:
    status: Status
    status_text: str
    records: list[Record]
    console: str
    disk: Path

    def out(self, stream: int = 1) -> str:
        return b"".join(r.data for r in self.records if r.stream == stream).decode()


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is not installed: run 'make setup'")
    work = tmp_path_factory.mktemp("guest")
    kernel, initrd, cmdline, disk = rawboot.build_assets(work)  # HV_KERNEL picks the kernel
    contract = rawboot.guest_boot(kernel.parent)
    # Give the image an /etc/hosts of its own, to prove the agent never writes it.
    (work / "hosts").write_bytes(IMAGE_HOSTS)
    subprocess.run(
        ["debugfs", "-w", "-R", f"write {work / 'hosts'} /etc/hosts", str(disk)],
        check=True,
        capture_output=True,
    )
    return Assets(kernel, initrd, cmdline, disk, contract["firmware"] or None, contract["machine"])


def boot(assets: Assets, tmp: Path, spec: GuestSpec, on_output=None) -> Result:
    """Boot one container to power-off. `on_output(records, monitor)` may act mid-run."""
    disk = tmp / "root.ext4"
    shutil.copyfile(assets.disk, disk)
    seed, log, status, console = (tmp / n for n in ("seed.iso", "log", "status", "console.log"))
    monitor = tmp / "mon.sock"
    write_seed(seed, spec)
    argv = rawboot.qemu_argv(
        assets.kernel,
        assets.initrd,
        assets.cmdline,
        disk,
        seed,
        log,
        status,
        console,
        monitor=monitor,
        bios=assets.bios,
        machine=assets.machine,
    )
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        acted = on_output is None
        while proc.poll() is None and time.monotonic() < deadline:
            if not acted and on_output(read_records(log)[0], monitor):
                acted = True
            time.sleep(0.1)
        if proc.poll() is None:
            pytest.fail(
                f"guest did not power off within {BOOT_TIMEOUT:.0f}s:\n"
                + console.read_text(errors="replace")
            )
        assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    text = status.read_text() if status.exists() else ""
    return Result(
        read_status(status), text, read_records(log)[0], console.read_text(errors="replace"), disk
    )


def debugfs_cat(disk: Path, path: str) -> bytes:
    return subprocess.run(
        ["debugfs", "-R", f"cat {path}", str(disk)], check=True, capture_output=True
    ).stdout


SCRIPT = r"""
printf '[%s]\n' "$0" "$@"
echo to-stderr >&2
echo "X=$X"; echo "MULTI=$MULTI"; echo "HOME=$HOME"; echo "PATH=$PATH"
echo "PWD=$(pwd)"; stat -c 'WD=%u %a' .
echo "UID=$(id -u)"
echo "HOSTNAME=$(hostname)"
cat /etc/hosts /etc/resolv.conf
(sleep 0 &)
sleep 1
echo "ZOMBIES=$(cat /proc/[0-9]*/stat | awk '$3 == "Z"' | wc -l)"
echo "PID1=$(cat /proc/1/comm)"
ip -4 addr show eth0 | grep -o 'inet [0-9./]*'
head -c 100000 /dev/zero | tr '\0' x; echo
exit 3
"""


def test_main_process(assets: Assets, tmp_path: Path) -> None:
    args = ["a  b", "line1\nline2", "ünï 'q' \"d\" $HOME \\"]
    spec = GuestSpec(
        container_id="0123456789abcdef" * 4,
        argv=["sh", "-c", SCRIPT, "zero", *args],
        env=[PATH, "X=it's x", "MULTI=m1\nm2", "HOSTNAME=web1"],
        workdir="/new/work dir",
        hostname="web1",
    )
    r = boot(assets, tmp_path, spec)
    out = r.out(1)
    assert r.status.exit_code == 3, (r.status_text, r.console, out, r.out(2))
    assert r.status.started_ns and r.status.finished_ns >= r.status.started_ns
    assert r.status.error is None
    assert r.out(2) == "to-stderr\n"
    assert out.startswith("[zero]\n" + "".join(f"[{a}]\n" for a in args))
    assert "X=it's x\nMULTI=m1\nm2\nHOME=/root\n" in out
    assert f"\n{PATH}\n" in out
    assert "PWD=/new/work dir\nWD=0 755\n" in out
    assert "UID=0\n" in out
    assert "HOSTNAME=web1\n" in out
    assert "127.0.0.1\tlocalhost\n" in out and "10.0.2.15\tweb1\n" in out
    assert "nameserver 10.0.2.3\n" in out
    assert "ZOMBIES=0\n" in out
    assert "inet 10.0.2.15/24" in out
    assert "x" * 100000 + "\n" in out
    assert all(r.stream in (1, 2) and r.ts_ns > 0 for r in r.records)
    assert max(len(r.data) for r in r.records) <= 32768 - 16
    # After power-off: the image's /etc files are untouched, the filesystem is clean.
    assert debugfs_cat(r.disk, "/etc/hosts") == IMAGE_HOSTS
    assert debugfs_cat(r.disk, "/etc/hostname") == b""  # absent in the image: empty target
    assert debugfs_cat(r.disk, "/etc/resolv.conf") == b""
    assert subprocess.run(["e2fsck", "-fn", str(r.disk)], capture_output=True).returncode == 0


@pytest.mark.parametrize(
    ("user", "expect"),
    [
        ("nobody", "65534 65534 /nonexistent 65534"),
        ("1234:5678", "1234 5678 / 5678"),
    ],
)
def test_user(assets: Assets, tmp_path: Path, user: str, expect: str) -> None:
    spec = GuestSpec("u", ["sh", "-c", "echo $(id -u) $(id -g) $HOME $(id -G)"], [PATH], user=user)
    r = boot(assets, tmp_path, spec)
    assert r.status.exit_code == 0, (r.status_text, r.console)
    assert r.out(1) == expect + "\n"


@pytest.mark.parametrize(
    ("argv", "user", "code", "message"),
    [
        (["nosuchcmd"], "", 127, 'exec: "nosuchcmd": executable file not found in $PATH'),
        (["/no/such"], "", 127, 'exec: "/no/such": stat /no/such: no such file or directory'),
        (["/etc/passwd"], "", 126, 'exec: "/etc/passwd": permission denied'),
        (["true"], "bob", 125, "unable to find user bob: no matching entries in passwd file"),
    ],
)
def test_exec_errors(assets: Assets, tmp_path: Path, argv, user, code, message) -> None:
    r = boot(assets, tmp_path, GuestSpec("e", argv, [PATH], user=user))
    assert r.status == Status(None, code, r.status.finished_ns, message, code), r.status_text
    assert r.status_text.startswith(f"error {code} ")
    assert f"hv-agent: {message}" in r.console


def test_true_is_fast_and_quiet(assets: Assets, tmp_path: Path) -> None:
    r = boot(assets, tmp_path, GuestSpec("t", ["true"], [PATH]))
    assert r.status.exit_code == 0 and r.status.started_ns
    assert r.records == []
    assert "hv-agent" not in r.console


def _sendkey_when_ready(records: list[Record], monitor: Path) -> bool:
    if b"ready" not in b"".join(r.data for r in records):
        return False
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(monitor))
        s.sendall(b"sendkey ctrl-alt-delete\n")
        time.sleep(0.2)
    return True


def test_ctrl_alt_del_is_sigterm(assets: Assets, tmp_path: Path) -> None:
    script = 'trap "echo got-term; exit 42" TERM; echo ready; sleep 30 & wait'
    r = boot(
        assets,
        tmp_path,
        GuestSpec("s", ["sh", "-c", script], [PATH]),
        on_output=_sendkey_when_ready,
    )
    assert r.out(1) == "ready\ngot-term\n", (r.status_text, r.console)
    assert r.status.exit_code == 42


def test_early_failure_powers_off(assets: Assets, tmp_path: Path) -> None:
    # A root disk that is not ext4: the init script must report and power off.
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "junk.img").write_bytes(b"\0" * (4 << 20))
    broken = replace(assets, disk=bad / "junk.img")
    r = boot(broken, tmp_path, GuestSpec("b", ["true"], [PATH]))
    assert r.status.error_code == 125 and r.status.exit_code == 125, r.status_text
    assert "cannot mount the container root disk" in r.status.error
    assert "hv-agent: cannot mount the container root disk" in r.console
