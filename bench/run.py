"""`make bench`: hv's speed as ratios against baselines measured in the same run.

- hv:       `hv run --rm busybox true`, the whole CLI, wall time
- raw qemu: qemu-system-x86_64 booting the same kernel + initramfs + disk to power-off
            (hv's floor: what is left is libvirt, disk/seed preparation and Python)
- crun/runc: the same busybox rootfs as a namespace container (`crun run`, `runc run`)

Medians of N runs (HV_BENCH_REPEATS, default 7) after one warm-up each; the machine and the
accelerator are printed with the numbers, since TCG and KVM differ by an order of magnitude.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

REPEATS = int(os.environ.get("HV_BENCH_REPEATS", "7"))


def timed(argv: list[str], env: dict | None = None, **kw) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env, **kw)
    return time.perf_counter() - t


def series(fn, repeats: int = REPEATS) -> list[float]:
    fn()  # warm-up: page cache, libvirt's capability cache
    return [fn() for _ in range(repeats)]


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} " \
           f"{platform.release()}"


def oci_bundle(images: Path, work: Path) -> Path:
    bundle = work / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{images}/busybox:latest", str(bundle)],
                   check=True, capture_output=True)
    cfg_path = bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["process"]["args"] = ["true"]
    cfg["process"]["terminal"] = False
    cfg_path.write_text(json.dumps(cfg))
    return bundle


def main() -> int:
    from bench.rawboot import raw_boot_seconds
    from hv import paths
    from hv.runtime.accel import detect

    images = Path(os.environ.get("HV_TEST_IMAGES", paths.cache_root() / "images" / "out"))
    work = Path(tempfile.mkdtemp(prefix="hvb-", dir="/tmp"))
    env = dict(os.environ, HV_ROOT=str(work / "root"), PYTHONPATH=str(REPO))
    hv = [sys.executable, "-m", "cli.main"]
    results: dict[str, list[float]] = {}
    try:
        subprocess.run([*hv, "load", "-i", str(images / "busybox.oci.tar")], env=env,
                       check=True, capture_output=True)
        os.environ["HV_ROOT"] = env["HV_ROOT"]
        accel = detect()
        results["hv run --rm busybox true"] = series(
            lambda: timed([*hv, "run", "--rm", "busybox", "true"], env=env, cwd=REPO))

        from hv.images.store import ImageStore

        image = ImageStore(paths.images_root()).get("busybox")
        disk = paths.base_disk(image.id)
        kernel, initrd = paths.guest_kernel(), paths.guest_initrd()
        cmdline = paths.guest_cmdline().read_text().strip()
        results["raw qemu boot to power-off"] = raw_boot_seconds(
            kernel, initrd, cmdline, disk, REPEATS + 1)[1:]

        bundle = oci_bundle(images, work)
        if shutil.which("crun"):
            results["crun run (namespaces)"] = series(lambda: timed(
                ["unshare", "-m", "--propagation", "private", "sh", "-c",
                 f"umount /sys/fs/cgroup/unified 2>/dev/null; crun run -b {bundle} hvb-crun"]))
        if shutil.which("runc"):
            results["runc run (namespaces)"] = series(
                lambda: timed(["runc", "run", "-b", str(bundle), "hvb-runc"]))
    finally:
        subprocess.run([*hv, "ps", "-aq"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"machine: {machine()}")
    print(f"accelerator: {accel.name} ({accel.reason})")
    print(f"repeats: {REPEATS} (median, min-max)")
    print()
    for k, v in results.items():
        print(f"  {k:32s} {med[k]*1000:8.0f} ms   ({min(v)*1000:.0f}-{max(v)*1000:.0f})")
    print()
    hv_t = med["hv run --rm busybox true"]
    raw = med["raw qemu boot to power-off"]
    print(f"  hv / raw qemu: {hv_t / raw:.2f}   (target <= 1.10)")
    for k in ("crun run (namespaces)", "runc run (namespaces)"):
        if k in med:
            print(f"  hv / {k.split()[0]}: {hv_t / med[k]:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
