"""Raw QEMU boot-to-poweroff of a `true` container: the floor `hv run` is compared against.

No libvirt: qemu-system-x86_64 with the devices of hv's domain contract (direct kernel boot,
virtio-blk root + seed + the shared read-only agent disk, virtio-serial hv.log / hv.status,
virtio-net on user networking, virtio-rng), TCG. The seed carries what an `hv run` seed carries
(a client authorized key and an ssh host key, a hostname), so the guest starts its sshd just
as it does under hv: the floor includes the agent's real work.

    python bench/rawboot.py [--repeats N]            # kernels x firmware x machine, medians
    python bench/rawboot.py --compress --rss         # + initramfs compressions, idle QEMU RSS
    python bench/rawboot.py --firmware               # cloud kernel: SeaBIOS vs qboot vs iPXE ROM

Each run reports two times: qemu start to `exited` on hv.status (the container is done), and
qemu start to qemu exit (power-off). On `-M microvm,acpi=off` the guest cannot power off (no
ACPI; the kernel halts), so there qemu is killed once `exited` is seen and only the first
time is meaningful.

The guest comes from guest-images/build.sh (HV_KERNEL=hv and =cloud), the root disk from the
busybox test image.
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
MICROVM = "microvm"
AGENT_IMG = "agent.img"
HV_TB_CACHE_MIB = 40  # hv's TCG translation cache (hv/engine.py `_domain_xml`)
PATH_ENV = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"


def seed_spec(name: str, argv: list[str]):
    """The GuestSpec an `hv run` would write (hv/engine.py `_write_seed`): with a fresh client
    key (authorized) and host key, so the guest starts its sshd as under hv."""
    sys.path.insert(0, str(REPO))
    from hv.guest import keys
    from hv.guest.seed import GuestSpec

    client, host = keys.generate(f"hv-{name}"), keys.generate(f"hv-{name}")
    return GuestSpec(name, argv, [PATH_ENV, f"HOSTNAME={name}"], hostname=name,
                     authorized_keys=client.public_line + "\n",
                     ssh_host_key=host.private_openssh)  # fmt: skip


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
    machine: str = "pc",
    agent_disk: Path | bool = True,
    rng: bool = True,
    tb_cache_mib: int | None = None,
    balloon: bool = True,
    memfd: bool = True,
) -> list[str]:
    """The qemu command line of hv's guest contract (TCG, 1 vCPU).

    `agent_disk`: the agent's read-only disk (sshd and its libraries, serial hv-agent);
    True (the default) takes `agent.img` next to `initrd` when the guest has one, False
    attaches none. `rng`: virtio-rng (hv's domains have one; sshd needs the entropy).
    `tb_cache_mib`: TCG's translation cache (None: QEMU's default, 1 GiB). `balloon`:
    virtio-balloon with free page reporting, and `memfd`: guest RAM in a shared memfd (no
    transparent huge pages), as hv's domains have under TCG.

    `machine` "pc" (the default: PCI virtio devices) or "microvm" (`-M microvm,acpi=off`:
    virtio-mmio devices, which QEMU announces on the kernel command line itself; no PCI, no
    ACPI, no i8042, so no power-off and no ctrl-alt-del), or "microvm,acpi=on" (devices in
    ACPI tables, ACPI power-off; needs a cmdline without acpi=noirq). `bios`: a firmware ROM
    (qboot) instead of SeaBIOS on pc; microvm always uses its own qboot build.
    """
    micro = machine.startswith(MICROVM)
    bus = "device" if micro else "pci"
    if agent_disk is True:
        agent_disk = Path(initrd).parent / AGENT_IMG
        agent_disk = agent_disk if agent_disk.exists() else False
    argv = [
        QEMU, "-M", "microvm,acpi=off" if machine == MICROVM else machine,
        "-accel", "tcg" + (f",tb-size={tb_cache_mib}" if tb_cache_mib else ""),
        "-m", str(memory_mb), "-smp", "1",
        *(["-object", f"memory-backend-memfd,id=ram0,size={memory_mb}M,share=on",
           "-machine", "memory-backend=ram0"] if memfd else []),
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline,
        "-serial", f"file:{console}",
        "-drive", f"if=none,id=root,file={root_disk},format=raw"
        + (",snapshot=on" if snapshot else ""),
        "-device", f"virtio-blk-{bus},drive=root,serial=hv-root",
        "-drive", f"if=none,id=seed,file={seed},format=raw,readonly=on",
        "-device", f"virtio-blk-{bus},drive=seed,serial=hv-seed",
    ]  # fmt: skip
    if agent_disk:
        argv += ["-drive", f"if=none,id=agent,file={agent_disk},format=raw,readonly=on",
                 "-device", f"virtio-blk-{bus},drive=agent,serial=hv-agent"]  # fmt: skip
    argv += [
        "-device", f"virtio-serial-{bus}",
        "-chardev", f"file,id=log,path={log}",
        "-device", "virtserialport,chardev=log,name=hv.log",
        "-chardev", f"file,id=status,path={status}",
        "-device", "virtserialport,chardev=status,name=hv.status",
    ]  # fmt: skip
    if micro:
        # Modern virtio-mmio (virtio 1.x), as virtio-fs needs; QEMU 7.2 defaults to legacy.
        argv += ["-global", "virtio-mmio.force-legacy=false"]
    if nic:
        # No option ROM: iPXE costs boot time and direct kernel boot never uses it.
        argv += [
            "-netdev",
            "user,id=net0",
            "-device",
            f"virtio-net-{bus},netdev=net0" + ("" if nic_rom or micro else ",romfile="),
        ]
    if rng:
        argv += ["-object", "rng-random,id=rng0,filename=/dev/urandom",
                 "-device", f"virtio-rng-{bus},rng=rng0"]  # fmt: skip
    if balloon:
        argv += ["-device", f"virtio-balloon-{bus},free-page-reporting=on"]
    if bios and not micro:
        argv += ["-bios", bios]
    if monitor:
        argv += ["-monitor", f"unix:{monitor},server=on,wait=off"]
    return argv


def run_qemu(argv: list[str], timeout: float = 60.0) -> tuple[int, float]:
    """Run qemu to completion (the guest powers off); kill it by PID on timeout.

    Returns (returncode, seconds). Raises TimeoutError after killing it.
    """
    rc, dt, _ = run_until_exited(argv, None, timeout)
    return rc, dt


def _exited(status: Path | None) -> bool:
    try:
        return status is not None and b"\nexited " in b"\n" + status.read_bytes()
    except OSError:
        return False


def run_until_exited(
    argv: list[str], status: Path | None, timeout: float = 60.0, kill_on_exited: bool = False
) -> tuple[int, float, float | None]:
    """Run qemu until it exits, watching `status` for the agent's `exited` line.

    Returns (returncode, seconds to qemu exit, seconds to `exited` or None). With
    `kill_on_exited` qemu is killed (by PID) as soon as `exited` appears (microvm cannot power
    off); the returncode is then 0. Raises TimeoutError, RuntimeError (qemu failed).
    """
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    t_exited = None
    killed = False
    try:
        while proc.poll() is None:
            if t_exited is None and _exited(status):
                t_exited = time.monotonic() - t0
                if kill_on_exited:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = True
                    break
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"qemu (pid {proc.pid}) still running after {timeout:.0f}s")
            time.sleep(0.005)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        err = proc.stderr.read() if proc.stderr else b""
        if proc.stderr:
            proc.stderr.close()
    dt = time.monotonic() - t0
    if t_exited is None and _exited(status):
        t_exited = dt
    if killed:
        return 0, dt, t_exited
    if proc.returncode != 0:
        raise RuntimeError(f"qemu exited {proc.returncode}: {err.decode(errors='replace')}")
    return proc.returncode, dt, t_exited


def raw_boot_seconds(
    kernel: Path,
    initrd: Path,
    cmdline: str,
    root_disk: Path,
    repeats: int,
    bios: str | None = None,
    nic_rom: bool = False,
    machine: str = "pc",
) -> list[float]:
    """Wall seconds of `repeats` boots of a `true` container, qemu start to qemu exit.

    `root_disk` (whole-disk ext4) is used through a throw-away overlay (snapshot=on), so it
    is never written.
    """
    return [t[1] for t in raw_boot_times(kernel, initrd, cmdline, root_disk, repeats, bios,
                                         nic_rom, machine)]  # fmt: skip


def raw_boot_times(
    kernel: Path,
    initrd: Path,
    cmdline: str,
    root_disk: Path,
    repeats: int,
    bios: str | None = None,
    nic_rom: bool = False,
    machine: str = "pc",
) -> list[tuple[float, float]]:
    """(seconds to `exited`, seconds to qemu exit) of `repeats` boots of a `true` container.

    On microvm qemu is killed at `exited`, so both times are (about) the same.
    """
    sys.path.insert(0, str(REPO))
    from hv.guest.logstream import read_status
    from hv.guest.seed import write_seed

    times = []
    with tempfile.TemporaryDirectory(prefix="hv-rawboot.") as tmp:
        d = Path(tmp)
        seed = d / "seed.iso"
        write_seed(seed, seed_spec("rawboot", ["true"]))
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
                machine=machine,
            )
            _, dt, t_exited = run_until_exited(argv, status, kill_on_exited=machine == MICROVM)
            st = read_status(status)
            if st.exit_code != 0 or t_exited is None:
                console = (d / "console.log").read_text(errors="replace")
                raise RuntimeError(f"guest did not report `exited 0`: {st}\n{console}")
            times.append((t_exited, dt))
    return times


def idle_rss_mb(
    kernel: Path,
    initrd: Path,
    cmdline: str,
    root_disk: Path,
    bios: str | None = None,
    machine: str = "pc",
    settle: float = 3.0,
    tb_cache_mib: int | None = None,
) -> float:
    """QEMU's VmRSS (MiB) with a container running `sleep 60`, `settle` s after it started."""
    sys.path.insert(0, str(REPO))
    from hv.guest.seed import write_seed

    with tempfile.TemporaryDirectory(prefix="hv-rawboot.") as tmp:
        d = Path(tmp)
        seed, status = d / "seed.iso", d / "status"
        write_seed(seed, seed_spec("idle", ["sleep", "60"]))
        argv = qemu_argv(kernel, initrd, cmdline, root_disk, seed, d / "log", status,
                         d / "console.log", bios=bios, snapshot=True, machine=machine,
                         tb_cache_mib=tb_cache_mib)  # fmt: skip
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 60
            while b"started" not in (status.read_bytes() if status.exists() else b""):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the idle container did not start:\n"
                        + (d / "console.log").read_text(errors="replace")
                    )
                time.sleep(0.05)
            time.sleep(settle)
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
            raise RuntimeError("no VmRSS")
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def build_guest(out: Path, kernel: str | None = None, compress: str | None = None) -> Path:
    """guest-images/build.sh into `out` (HV_KERNEL / HV_INITRD_COMPRESS when given)."""
    env = dict(os.environ)
    if kernel:
        env["HV_KERNEL"] = kernel
    if compress:
        env["HV_INITRD_COMPRESS"] = compress
    subprocess.run(
        [str(REPO / "guest-images/build.sh"), str(out)], check=True, stdout=subprocess.DEVNULL,
        env=env,
    )  # fmt: skip
    return out


def guest_boot(guest: Path) -> dict[str, str]:
    """The guest's boot contract files: kernel (hv|cloud), firmware ('' = SeaBIOS), machine."""
    info = {}
    for name, default in (("kernel", "cloud"), ("firmware", ""), ("machine", "pc"),
                          ("release", "")):  # fmt: skip
        try:
            info[name] = (guest / name).read_text().strip()
        except FileNotFoundError:
            info[name] = default
    return info


def build_disk(work: Path) -> Path:
    """The busybox test image as a whole-disk ext4 root."""
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
    return disk


def build_assets(work: Path, kernel: str | None = None) -> tuple[Path, Path, str, Path]:
    """The guest (guest-images/build.sh) and a busybox root disk, built into `work`.

    `kernel`: HV_KERNEL for the guest (None: the environment's, else build.sh's default).
    The boot contract (firmware, machine) is in `guest_boot(<kernel>.parent)`.
    """
    g = build_guest(work / "guest", kernel)
    disk = build_disk(work)
    return g / "vmlinuz", g / "initrd.img", (g / "cmdline").read_text(), disk


def _line(label: str, times: list[tuple[float, float]], micro: bool = False) -> str:
    ex = [t[0] for t in times]
    off = [t[1] for t in times]
    s = f"{label:34s} exited {statistics.median(ex):.2f}s (min {min(ex):.2f}, max {max(ex):.2f})"
    if micro:
        return s + "  power-off: n/a (no ACPI; killed)"
    return s + f"  power-off {statistics.median(off):.2f}s (min {min(off):.2f}, max {max(off):.2f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--firmware", action="store_true", help="cloud kernel: firmware variants")
    ap.add_argument("--compress", action="store_true", help="hv kernel: initramfs compressions")
    ap.add_argument("--rss", action="store_true", help="QEMU RSS of an idle container")
    ap.add_argument("--no-microvm", action="store_true")
    args = ap.parse_args()
    if not shutil.which(QEMU):
        print(f"{QEMU} not found", file=sys.stderr)
        return 1
    n = args.repeats
    with tempfile.TemporaryDirectory(prefix="hv-rawboot-assets.") as tmp:
        work = Path(tmp)
        disk = build_disk(work)
        guests = {}
        for kind in ("cloud", "hv"):
            g = build_guest(work / f"guest-{kind}", kind)
            info = guest_boot(g)
            if info["kernel"] != kind:
                print(f"{kind} kernel unavailable (got {info['kernel']}); skipped")
                continue
            guests[kind] = (g, info)
            kmb = (g / "vmlinuz").stat().st_size / 1e6
            imb = (g / "initrd.img").stat().st_size / 1e6
            fw = info["firmware"] or "SeaBIOS"
            print(f"{kind}: kernel {info['release']} {kmb:.1f} MB, initrd {imb:.1f} MB;",
                  f"firmware {fw}, machine {info['machine']}")  # fmt: skip
        print(f"TCG, 1 vCPU, 512 MiB, `true` container; {n} boots each, medians")

        def boot(kind: str, label: str, bios=None, machine="pc", nic_rom=False, g=None):
            g = g or guests[kind][0]
            t = raw_boot_times(g / "vmlinuz", g / "initrd.img", (g / "cmdline").read_text(),
                               disk, n, bios=bios, nic_rom=nic_rom, machine=machine)  # fmt: skip
            print(_line(label, t, machine == MICROVM), flush=True)

        if "cloud" in guests:
            boot("cloud", "cloud bzImage, SeaBIOS, pc")
            if args.firmware:
                boot("cloud", "cloud bzImage, qboot, pc", bios=QBOOT)
                boot("cloud", "cloud bzImage, SeaBIOS + iPXE ROM", nic_rom=True)
        if "hv" in guests:
            boot("hv", "hv vmlinux (PVH), qboot, pc", bios=QBOOT)
            boot("hv", "hv vmlinux (PVH), SeaBIOS, pc")
            if not args.no_microvm:
                boot("hv", "hv vmlinux (PVH), microvm,acpi=off", machine=MICROVM)
                # Not "microvm,acpi=on": it powers off, but under TCG it sometimes hangs at
                # boot ("tsc: Unable to calibrate against PIT"; microvm has no HPET).
            if args.compress:
                for comp in ("none", "gzip", "lz4", "zstd"):
                    g = build_guest(work / f"guest-hv-{comp}", "hv", comp)
                    mb = (g / "initrd.img").stat().st_size / 1e6
                    boot("hv", f"hv, qboot, initrd {comp} ({mb:.1f} MB)", bios=QBOOT, g=g)
        if args.rss:
            for kind, (g, info) in guests.items():
                for machine in ("pc", MICROVM) if kind == "hv" and not args.no_microvm else ("pc",):
                    for tb in (None, HV_TB_CACHE_MIB):
                        rss = [idle_rss_mb(g / "vmlinuz", g / "initrd.img",
                                           (g / "cmdline").read_text(), disk,
                                           bios=info["firmware"] or None, machine=machine,
                                           tb_cache_mib=tb)
                               for _ in range(3)]  # fmt: skip
                        each = ", ".join(f"{r:.0f}" for r in rss)
                        print(f"idle RSS ({kind}, {machine}, `sleep 60`, 512 MiB, TB cache "
                              f"{f'{tb} MiB' if tb else 'default'}): "
                              f"median {statistics.median(rss):.0f} MiB ({each})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
