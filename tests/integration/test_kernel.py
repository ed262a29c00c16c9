"""hv's own guest kernel (guest-images/kernel/) in a real VM, booted by raw qemu.

One boot on the guest contract's machine and firmware (pc + qboot, PVH vmlinux) checks what a
container needs from the kernel at once; one more boot checks -M microvm. The first run builds
the kernel (4-8 minutes on 2 cores, cached per machine). `make setup` installs everything the
build needs, so a guest that is not hv's kernel is a failure, never a skip (a skip here once
hid a missing install step: every newcomer's run took 4.6 s instead of 1.4 s); only
HV_KERNEL=cloud, asked for on purpose, skips these tests.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from hv.guest.logstream import read_records, read_status
from hv.guest.seed import GuestSpec, write_seed

REPO = Path(__file__).resolve().parents[2]
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

pytestmark = pytest.mark.vm

_spec = importlib.util.spec_from_file_location("rawboot", REPO / "bench/rawboot.py")
assert _spec and _spec.loader
rawboot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rawboot)


@dataclass
class Guest:
    dir: Path
    boot: dict[str, str]  # kernel, firmware, machine, release
    disk: Path  # pristine busybox root

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def cmdline(self) -> str:
        return (self.dir / "cmdline").read_text()


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Guest:
    if os.environ.get("HV_KERNEL") == "cloud":
        pytest.skip("HV_KERNEL=cloud: the cloud kernel was asked for")
    if not shutil.which("qemu-system-x86_64"):
        pytest.fail("qemu-system-x86_64 is not installed: run 'make setup'")
    work = tmp_path_factory.mktemp("kernel")
    g = rawboot.build_guest(work / "guest", "hv")
    info = rawboot.guest_boot(g)
    if info["kernel"] != "hv":
        pytest.fail("hv's kernel could not be built here: run 'make setup' (it installs "
                    "linux-source-6.1 and the build packages)")
    return Guest(g, info, rawboot.build_disk(work))


def boot(guest: Guest, tmp: Path, script: str, machine: str | None = None):
    """Run `sh -c script` as the container's main process; returns (status, stdout, console)."""
    disk = tmp / "root.ext4"
    shutil.copyfile(guest.disk, disk)
    seed, log, status, console = (tmp / n for n in ("seed.iso", "log", "status", "console.log"))
    write_seed(seed, GuestSpec("k", ["sh", "-c", script], [PATH]))
    machine = machine or guest.boot["machine"]
    argv = rawboot.qemu_argv(
        guest.kernel, guest.initrd, guest.cmdline, disk, seed, log, status, console,
        bios=guest.boot["firmware"] or None, machine=machine,
    )  # fmt: skip
    try:
        rc, _, exited = rawboot.run_until_exited(
            argv, status, timeout=60, kill_on_exited=machine == rawboot.MICROVM
        )
    except TimeoutError:
        pytest.fail("guest did not finish in 60 s:\n" + console.read_text(errors="replace"))
    text = console.read_text(errors="replace")
    assert rc == 0 and exited is not None, text
    out = b"".join(r.data for r in read_records(log)[0] if r.stream == 1).decode()
    return read_status(status), out, text, disk


def test_initramfs_has_no_modules(guest: Guest) -> None:
    assert guest.boot["firmware"] in ("", rawboot.QBOOT)
    assert guest.boot["machine"] == "pc"
    assert guest.boot["release"].endswith("-hv")
    # An uncompressed ELF (PVH entry) rather than a bzImage.
    assert guest.kernel.read_bytes()[:4] == b"\x7fELF"
    cat = {b"\x02\x21\x4c\x18": ["lz4", "-dc"], b"\x1f\x8b": ["gzip", "-dc"],
           b"\x28\xb5\x2f\xfd": ["zstd", "-dc"]}  # fmt: skip
    head = guest.initrd.read_bytes()[:4]
    dec = next((v for k, v in cat.items() if head.startswith(k)), ["cat"])
    with guest.initrd.open("rb") as f:
        listing = subprocess.run(
            f"{' '.join(dec)} | cpio -t --quiet", shell=True, stdin=f, capture_output=True,
            check=True,
        ).stdout.decode()  # fmt: skip
    names = listing.split()
    assert "init" in names and "sbin/hv-init" in names
    assert not [n for n in names if n.startswith("lib/modules")], names
    # sshd and its libraries are on the agent disk (the guest's read-only /usr), not in RAM.
    assert not [n for n in names if n.startswith("usr/") or n.endswith(".so.6")], names
    agent = guest.dir / "agent.img"
    for path in ("/sbin/sshd", "/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6"):
        stat = subprocess.run(["debugfs", "-R", f"stat {path}", str(agent)], capture_output=True,
                              text=True, check=True).stdout  # fmt: skip
        assert "Type: regular" in stat, (path, stat)


CHECKS = r"""
echo "RELEASE=$(uname -r)"
echo "MODULES=$(cat /proc/modules 2>/dev/null | wc -l)"
[ -e /proc/modules ] || echo "NO_PROC_MODULES"
zcat /proc/config.gz | grep -E '^(# )?CONFIG_(MODULES|PVH|VIRTIO_FS|OVERLAY_FS)[= ]'
mount | grep -q ' /dev/pts type devpts ' && echo "DEVPTS=ok"
ls -ld /dev/shm | cut -c1-10; echo shm > /dev/shm/x && cat /dev/shm/x
grep -q ' / ' /proc/self/mountinfo && echo "MOUNTINFO=ok"
echo "ext4 data" > /written; sync; echo "SYNC=$?"
ip link show eth0 | grep -q "[<,]UP,LOWER_UP[,>]" && echo "ETH0=up"
[ -d /sys/fs/cgroup ] && echo "CGROUPFS=present"
mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg && echo "V2=$(cat /tmp/cg/cgroup.controllers)"
mkdir -p /tmp/cpu && mount -t cgroup -o cpu,cpuacct none /tmp/cpu && echo "V1=ok"
echo "NS=$(ls /proc/self/ns | sort | tr '\n' ' ')"
echo "FS=$(grep -oE '\b(ext4|iso9660|overlay|tmpfs|9p|fuse|virtiofs|devpts|mqueue|cgroup2)$' \
    /proc/filesystems | sort | tr '\n' ' ')"
mkdir -p /tmp/l /tmp/u /tmp/w /tmp/o
mount -t overlay -o lowerdir=/tmp/l,upperdir=/tmp/u,workdir=/tmp/w none /tmp/o && echo "OVERLAY=ok"
ps | grep -q '[s]h -c' && echo "PS=ok"
ls /sys/bus/virtio/drivers | sort | tr '\n' ' '; echo
"""


def test_container_kernel(guest: Guest, tmp_path: Path) -> None:
    st, out, console, disk = boot(guest, tmp_path, CHECKS)
    assert st.exit_code == 0, (st, out, console)
    lines = out.splitlines()
    assert f"RELEASE={guest.boot['release']}" in lines, out
    assert "MODULES=0" in lines and "NO_PROC_MODULES" in lines, out
    assert "# CONFIG_MODULES is not set" in lines, out
    for sym in ("PVH", "VIRTIO_FS", "OVERLAY_FS"):
        assert f"CONFIG_{sym}=y" in lines, out
    for want in ("DEVPTS=ok", "drwxrwxrwt", "shm", "MOUNTINFO=ok", "SYNC=0", "ETH0=up",
                 "CGROUPFS=present", "V1=ok", "OVERLAY=ok", "PS=ok"):  # fmt: skip
        assert want in lines, (want, out, console)
    v2 = next(x for x in lines if x.startswith("V2=")).split("=", 1)[1].split()
    assert {"cpuset", "cpu", "io", "memory", "pids"} <= set(v2), out
    ns = set(next(x for x in lines if x.startswith("NS=")).split("=", 1)[1].split())
    assert {"ipc", "mnt", "net", "pid", "user", "uts", "cgroup"} <= ns, out
    fs = set(next(x for x in lines if x.startswith("FS=")).split("=", 1)[1].split())
    assert {"ext4", "iso9660", "overlay", "tmpfs", "9p", "fuse", "virtiofs", "devpts"} <= fs, out
    drivers = set(lines[-1].split())
    assert {"virtio_blk", "virtio_net", "virtio_console", "virtio_rng"} <= drivers, out
    # The ext4 write reached the disk; the agent unmounted it cleanly before power-off.
    got = subprocess.run(
        ["debugfs", "-R", "cat /written", str(disk)], check=True, capture_output=True
    ).stdout
    assert got == b"ext4 data\n"
    assert subprocess.run(["e2fsck", "-fn", str(disk)], capture_output=True).returncode == 0
    assert "hv-agent" not in console, console


def test_microvm(guest: Guest, tmp_path: Path) -> None:
    # No PCI, no ACPI: virtio-mmio devices; the guest cannot power off (qemu is killed at
    # `exited`), so only the agent's own report counts here.
    st, out, console, _ = boot(
        guest, tmp_path, "uname -r; ip -4 addr show eth0 | grep -o 'inet [0-9./]*'",
        machine=rawboot.MICROVM,
    )  # fmt: skip
    assert st.exit_code == 0, (st, out, console)
    assert out == f"{guest.boot['release']}\ninet 10.0.2.15/24\n", (out, console)


def test_kernel_build_is_cached(guest: Guest, tmp_path: Path) -> None:
    # A second build.sh is a cache hit: no compiler runs, the same files are linked.
    env = dict(os.environ, HV_KERNEL="hv")
    proc = subprocess.run(
        [str(REPO / "guest-images/kernel/build.sh"), str(tmp_path / "k")],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "building" not in proc.stderr
    assert (tmp_path / "k/vmlinux").read_bytes() == guest.kernel.read_bytes()
    assert (tmp_path / "k/release").read_text().strip() == guest.boot["release"]
    config = (tmp_path / "k/config").read_text().splitlines()
    assert "# CONFIG_MODULES is not set" in config
    assert not [x for x in config if x.endswith("=m")]


def test_the_suites_guest_is_hvs_kernel():
    """The guest every other test boots (HV_GUEST_DIR, from `make setup`) is hv's kernel."""
    if os.environ.get("HV_KERNEL") == "cloud":
        pytest.skip("HV_KERNEL=cloud: the cloud kernel was asked for")
    guest_dir = Path(os.environ["HV_GUEST_DIR"]) if "HV_GUEST_DIR" in os.environ else None
    assert guest_dir is not None, "run the suite through 'make test' (it sets HV_GUEST_DIR)"
    kind = (guest_dir / "kernel").read_text().strip()
    release = (guest_dir / "release").read_text().strip()
    assert kind == "hv" and release.endswith("-hv"), (
        f"the suite's guest in {guest_dir} boots the {kind} kernel {release}: run 'make setup'")
