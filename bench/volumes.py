"""Volume throughput: 100 MB written sequentially (then fsync) and read back, inside a guest,
on a virtiofs volume, on a 9p volume and on the container's own disk, against the same on
the host, measured in the same run.

- host:      Python writes 100 MB in 1 MiB blocks into a file in the state root, fsync, then
             reads it back (host page cache warm, as it is for the guests' reads below)
- guest:     busybox `dd bs=1M count=100 conv=fsync` into the mount, then the guest's caches
             dropped (`echo 3 > /proc/sys/vm/drop_caches`) and `dd` reads it back; times from
             the guest's monotonic clock (/proc/timer_list, ns). virtiofs runs with
             virtiofsd `cache=none` (hv's default: coherent with the host) unless
             HV_VIRTIOFS_CACHE says otherwise.
- disk:      the same in the container's /tmp (its qcow2 overlay on the image's ext4 disk)

Medians of HV_BENCH_REPEATS (default 3) rounds in one boot per transport. Prints MB/s and
ratios guest/host. `python bench/volumes.py [--mb 100]`.
"""

from __future__ import annotations

import argparse
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

REPEATS = int(os.environ.get("HV_BENCH_REPEATS", "3"))

GUEST_SCRIPT = r"""
t() { set -- $(grep -m1 'now at' /proc/timer_list); echo $3; }  # monotonic ns
for i in $(seq 1 {repeats}); do
  for d in {dirs}; do
    s=$(t); dd if=/dev/zero of=$d/bench.bin bs=1M count={mb} conv=fsync 2>/dev/null; e=$(t)
    echo "write $d $s $e"
    sync; echo 3 >/proc/sys/vm/drop_caches
    s=$(t); dd if=$d/bench.bin of=/dev/null bs=1M 2>/dev/null; e=$(t)
    echo "read $d $s $e"
    rm -f $d/bench.bin
  done
done
"""


def host_rates(folder: Path, mb: int, repeats: int) -> tuple[float, float]:
    block = b"\0" * (1 << 20)
    writes, reads = [], []
    path = folder / "host-bench.bin"
    for _ in range(repeats):
        t = time.monotonic()
        with open(path, "wb") as f:
            for _ in range(mb):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        writes.append(mb / (time.monotonic() - t))
        t = time.monotonic()
        with open(path, "rb", buffering=0) as f:
            while f.read(1 << 20):
                pass
        reads.append(mb / (time.monotonic() - t))
        path.unlink()
    return statistics.median(writes), statistics.median(reads)


def guest_rates(hv, env: dict, mounts: list[str], dirs: list[str], mb: int, repeats: int
                ) -> dict[str, tuple[float, float]]:
    script = GUEST_SCRIPT.replace("{repeats}", str(repeats)).replace(
        "{dirs}", " ".join(dirs)).replace("{mb}", str(mb))
    args = [*hv, "run", "--rm", "-m", "1g"]
    for m in mounts:
        args += ["-v", m]
    p = subprocess.run([*args, "busybox", "sh", "-c", script], capture_output=True, text=True,
                       env=env, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"guest run failed ({p.returncode}): {p.stderr.strip()}")
    rates: dict[str, dict[str, list[float]]] = {}
    for line in p.stdout.splitlines():
        op, d, s, e = line.split()
        rates.setdefault(d, {"write": [], "read": []})[op].append(
            mb / max((int(e) - int(s)) / 1e9, 1e-6))
    return {d: (statistics.median(r["write"]), statistics.median(r["read"]))
            for d, r in rates.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=100)
    args = ap.parse_args()
    guest = os.environ.get("HV_GUEST_DIR") or str(Path("/var/cache/hv/guest/current"))
    images = Path(os.environ.get("HV_TEST_IMAGES", "/var/cache/hv/images/out"))
    work = Path(tempfile.mkdtemp(prefix="hvv-", dir="/tmp"))
    env = dict(os.environ, HV_ROOT=str(work / "root"), HV_GUEST_DIR=guest,
               PYTHONPATH=str(REPO))
    env.pop("HV_VOLUME_DRIVER", None)
    hv = [sys.executable, "-m", "cli"]
    try:
        subprocess.run([*hv, "load", "-i", str(images / "busybox.oci.tar")], env=env,
                       check=True, capture_output=True)
        share = work / "root" / "share"
        share.mkdir(parents=True)
        results = {}
        w, r = host_rates(share, args.mb, REPEATS)
        results["host (same filesystem)"] = (w, r)
        got = guest_rates(hv, dict(env, HV_VOLUME_DRIVER="virtiofs"), [f"{share}:/vfs"],
                          ["/vfs", "/tmp"], args.mb, REPEATS)
        results["guest virtiofs volume"] = got["/vfs"]
        results["guest own disk (qcow2)"] = got["/tmp"]
        got = guest_rates(hv, dict(env, HV_VOLUME_DRIVER="9p"), [f"{share}:/9p"], ["/9p"],
                          args.mb, REPEATS)
        results["guest 9p volume"] = got["/9p"]
    finally:
        subprocess.run([*hv, "rm", "-f", *subprocess.run(
            [*hv, "ps", "-aq"], env=env, capture_output=True, text=True).stdout.split()],
            env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    cache = os.environ.get("HV_VIRTIOFS_CACHE", "none")
    print(f"volumes: {args.mb} MB sequential, medians of {REPEATS}; {platform.node()}, "
          f"{os.cpu_count()} CPUs, {platform.machine()}; virtiofs cache={cache}")
    hw, hr = results["host (same filesystem)"]
    print(f"{'where':28} {'write+fsync':>12} {'read':>10} {'write/host':>11} {'read/host':>10}")
    for name, (w, r) in results.items():
        print(f"{name:28} {w:9.0f} MB/s {r:5.0f} MB/s {w / hw:11.2f} {r / hr:10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
