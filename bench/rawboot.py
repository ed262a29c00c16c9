"""Raw QEMU boot-to-poweroff of a `true` container: the floor `hv run` is compared against.

No libvirt: qemu-system-x86_64 with the devices of hv's domain contract (direct kernel boot,
virtio-blk root + seed, virtio-serial hv.log / hv.status, virtio-net on user networking), TCG.

    python bench/rawboot.py [--repeats N]   # medians for SeaBIOS vs qboot

The guest comes from guest-images/build.sh, the root disk from the busybox test image.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QEMU = "qemu-system-x86_64"
QBOOT = "/usr/share/qemu/qboot.rom"


def qemu_argv(
    kernel: Path,
    initrd: Path,
    cmdline: str,
    root_disk: Path,
    seed: Path,
    log: Path,
    status: Path,
    console: Path,
    *,
    bios: str | None = None,
    memory_mb: int = 512,
    snapshot: bool = False,
    nic: bool = True,
    nic_rom: bool = False,
    monitor: Path | None = None,
) -> list[str]:
    """The qemu command line of hv's guest contract (machine pc, TCG, 1 vCPU)."""
    argv = [
        QEMU, "-M", "pc", "-accel", "tcg", "-m", str(memory_mb), "-smp", "1",
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
        "-serial", f"file:{console}",
        "-drive", f"if=none,id=root,file={root_disk},format=raw"
        + (",snapshot=on" if snapshot else ""),
        "-device", "virtio-blk-pci,drive=root,serial=hv-root",
        "-drive", f"if=none,id=seed,file={seed},format=raw,readonly=on",
        "-device", "virtio-blk-pci,drive=seed,serial=hv-seed",
        "-device", "virtio-serial-pci",
        "-chardev", f"file,id=log,path={log}",
        "-device", "virtserialport,chardev=log,name=hv.log",
        "-chardev", f"file,id=status,path={status}",
        "-device", "virtserialport,chardev=status,name=hv.status",
    ]  # fmt: skip
    if nic:
        # No option ROM: iPXE costs boot time and direct kernel boot never uses it.
        argv += [
            "-netdev",
            "user,id=net0",
            "-device",
            "virtio-net-pci,netdev=net0" + ("" if nic_rom else ",romfile="),
        ]
    if bios:
        argv += ["-bios", bios]
    if monitor:
        argv += ["-monitor", f"unix:{monitor},server=on,wait=off"]
    return argv


def run_qemu(argv: list[str], timeout: float = 60.0) -> tuple[int, float]:
    """Run qemu to completion (the guest powers off); kill it by PID on timeout.

    Returns (returncode, seconds). Raises TimeoutError after killing it.
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        proc.kill()
        proc.wait()
        raise TimeoutError(f"qemu (pid {proc.pid}) still running after {timeout:.0f}s") from e
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    dt = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"qemu exited {proc.returncode}: {err.decode(errors='replace')}")
    return proc.returncode, dt


def raw_boot_seconds(
    kernel: Path,
    initrd: Path,
    cmdline: str,
    root_disk: Path,
    repeats: int,
    bios: str | None = None,
    nic_rom: bool = False,
) -> list[float]:
    """Wall seconds of `repeats` boots of a `true` container, qemu start to qemu exit.

    `root_disk` (whole-disk ext4) is used through a throw-away overlay (snapshot=on), so it
    is never written.
    """
    sys.path.insert(0, str(REPO))
    from hv.guest.logstream import read_status
    from hv.guest.seed import GuestSpec, write_seed

    times = []
    with tempfile.TemporaryDirectory(prefix="hv-rawboot.") as tmp:
        d = Path(tmp)
        seed = d / "seed.iso"
        write_seed(seed, GuestSpec("rawboot", ["true"], ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]))
        for _ in range(repeats):
            status = d / "status"
            status.unlink(missing_ok=True)
            argv = qemu_argv(
                kernel,
                initrd,
                cmdline,
                root_disk,
                seed,
                d / "log",
                status,
                d / "console.log",
                bios=bios,
                snapshot=True,
                nic_rom=nic_rom,
            )
            _, dt = run_qemu(argv)
            st = read_status(status)
            if st.exit_code != 0:
                console = (d / "console.log").read_text(errors="replace")
                raise RuntimeError(f"guest did not report `exited 0`: {st}\n{console}")
            times.append(dt)
    return times


def build_assets(work: Path) -> tuple[Path, Path, str, Path]:
    """The guest (guest-images/build.sh) and a busybox root disk, built into `work`."""
    subprocess.run(
        [str(REPO / "guest-images/build.sh"), str(work / "guest")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [str(REPO / "guest-images/images/busybox.sh"), str(work / "images")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    disk = work / "busybox.ext4"
    subprocess.run(
        [str(REPO / "guest-images/images/rootfs-ext4.sh"), str(work / "images/busybox"), str(disk)],
        check=True,
    )
    g = work / "guest"
    return g / "vmlinuz", g / "initrd.img", (g / "cmdline").read_text(), disk


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not shutil.which(QEMU):
        print(f"{QEMU} not found", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="hv-rawboot-assets.") as tmp:
        kernel, initrd, cmdline, disk = build_assets(Path(tmp))
        mb = initrd.stat().st_size / 1e6, kernel.stat().st_size / 1e6
        print(
            f"initrd {mb[0]:.1f} MB, kernel {mb[1]:.1f} MB; TCG, -M pc, 1 vCPU, 512 MiB;",
            f"{args.repeats} boots each",
        )
        for label, bios, rom in (
            ("SeaBIOS", None, False),
            ("qboot", QBOOT, False),
            ("SeaBIOS + virtio-net iPXE ROM", None, True),
        ):
            t = raw_boot_seconds(
                kernel, initrd, cmdline, disk, args.repeats, bios=bios, nic_rom=rom
            )
            print(
                f"{label:30s} median {statistics.median(t):.2f}s  "
                f"(min {min(t):.2f}s, max {max(t):.2f}s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
