"""`make bench`: hv's speed and memory as ratios against baselines measured in the same run.

Boot (issues 2 and 6)
- hv:          `hv run --rm busybox true`, the whole CLI, wall time
- raw qemu:    qemu-system-x86_64 booting the same kernel + initramfs + disk to power-off
               (hv's floor: what is left is libvirt, disk/seed preparation and Python),
               run alternately with hv's; also its time to the agent's `exited` line
- libvirt:     the same domain started by a warm process through libvirt, createXML to
               QEMU's exit (bench/libvirt_floor.py): libvirt's share without hv's
- stock:       the same raw boot with Debian's cloud kernel (the kernel hv had before)
- crun/runc:   the same busybox rootfs as a namespace container (`crun run`, `runc run`)
Guest seam (issue 3)
- `hv exec c true` against `crun exec` / `runc exec` into a container of the same rootfs
- `hv cp` of 100 MB into a running container against OpenSSH (`ssh … 'cat > f' < file`)
  into the same guest's sshd
Memory (issue 6)
- QEMU RSS of an idle container; N idle containers at once (HV_BENCH_IDLE, default 20)
Then `make bench` runs bench/api.py (the Engine API service driven by the docker CLI and
docker-py) and bench/network.py (container networks against namespace containers on veth).

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
IDLE = int(os.environ.get("HV_BENCH_IDLE", "20"))
CP_MB = int(os.environ.get("HV_BENCH_CP_MB", "100"))


def timed(argv: list[str], env: dict | None = None, **kw) -> float:
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdin=kw.pop("stdin", subprocess.DEVNULL),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, **kw)
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


def oci_bundle(images: Path, work: Path, args: list[str]) -> Path:
    bundle = work / f"bundle-{args[0]}"
    if bundle.exists():
        return bundle
    subprocess.run(["umoci", "unpack", "--image", f"{images}/busybox:latest", str(bundle)],
                   check=True, capture_output=True)
    cfg_path = bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["process"]["args"] = args
    cfg["process"]["terminal"] = False
    cfg_path.write_text(json.dumps(cfg))
    return bundle


CRUN_PREFIX = ["unshare", "-m", "--propagation", "private", "sh", "-c",
               "umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$0\" \"$@\""]


def runtime_cmd(runtime: str, *args: str) -> list[str]:
    """crun needs the private mount namespace trick of DESIGN.md on these hosts."""
    return [*CRUN_PREFIX, runtime, *args] if runtime == "crun" else [runtime, *args]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Bench:
    def __init__(self) -> None:
        from hv.config import Config

        self.images = Path(os.environ.get("HV_TEST_IMAGES",
                                          Config.from_environ().cache / "images" / "out"))
        self.work = Path(tempfile.mkdtemp(prefix="hvb-", dir="/tmp"))
        self.env = dict(os.environ, HV_ROOT=str(self.work / "root"), PYTHONPATH=str(REPO))
        os.environ["HV_ROOT"] = self.env["HV_ROOT"]
        self.hv = [sys.executable, "-m", "cli"]
        self.results: dict[str, list[float]] = {}
        self.notes: list[str] = []

    def run_hv(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*self.hv, *args], env=self.env, cwd=REPO, check=True,
                              capture_output=True, text=True, **kw)

    def boot(self) -> None:
        from bench.rawboot import build_guest, guest_boot, raw_boot_seconds, raw_boot_times
        from hv.config import Config
        from hv.engine import Engine

        self.run_hv("load", "-i", str(self.images / "busybox.oci.tar"))
        config = Config.from_environ()
        paths = config.paths
        disk = paths.base_disk(Engine(config).images.get("busybox").id)
        g = paths.guest_dir()
        info = guest_boot(g)
        cmdline = paths.guest_cmdline().read_text().strip()
        self.raw_key = f"raw qemu, {info['kernel']} kernel"
        self.floor_key = "libvirt floor (createXML to exit)"

        def hv_run() -> float:
            return timed([*self.hv, "run", "--rm", "busybox", "true"], env=self.env, cwd=REPO)

        def raw() -> tuple[float, float]:
            return raw_boot_times(g / "vmlinuz", g / "initrd.img", cmdline, disk, 1,
                                  bios=info["firmware"] or None, machine=info["machine"])[0]

        # the libvirt floor boots copies of a stopped container's domain
        src = "hvb-floor-src"
        self.run_hv("run", "--name", src, "busybox", "true")
        src_xml = paths.libvirt_root_dir() / "etc" / "qemu" / f"{src}.xml"

        def floor() -> float:
            out = subprocess.run(
                [sys.executable, str(REPO / "bench" / "libvirt_floor.py"),
                 str(paths.libvirt_root()), str(src_xml), str(paths.base_overlay(disk))],
                env=self.env, check=True, capture_output=True, text=True).stdout
            return float(out.split()[-1])

        # hv and its floors alternate, so that a slow minute of this shared machine weighs
        # on every side of the ratios alike
        hv_run(), raw(), floor()  # warm-up: page cache, libvirt's capability cache
        hv_t, raw_t, raw_exited, floor_t = [], [], [], []
        for _ in range(REPEATS):
            hv_t.append(hv_run())
            exited, off = raw()
            raw_t.append(off)
            raw_exited.append(exited)
            floor_t.append(floor())
        self.run_hv("rm", src)
        self.results["hv run --rm busybox true"] = hv_t
        self.results[self.raw_key] = raw_t
        self.results[f"{self.raw_key}, to `exited`"] = raw_exited
        self.results[self.floor_key] = floor_t
        if info["kernel"] != "cloud":
            stock = build_guest(self.work / "stock-guest", kernel="cloud")
            sinfo = guest_boot(stock)
            self.results["raw qemu, stock cloud kernel"] = raw_boot_seconds(
                stock / "vmlinuz", stock / "initrd.img", (stock / "cmdline").read_text(), disk,
                REPEATS + 1, bios=sinfo["firmware"] or None, machine=sinfo["machine"])[1:]
        for rt in ("crun", "runc"):
            if shutil.which(rt):
                bundle = oci_bundle(self.images, self.work, ["true"])
                self.results[f"{rt} run (namespaces)"] = series(
                    lambda rt=rt, b=bundle: timed(runtime_cmd(rt, "run", "-b", str(b),
                                                              f"hvb-{rt}")))

    def warm(self) -> None:
        """`hv run --rm busybox true` claiming a ready pooled VM (HV_POOL=1), alternating
        with raw cold boots of the same guest; and an idle pooled VM's RSS."""
        from bench.rawboot import guest_boot, raw_boot_times
        from hv.config import Config
        from hv.engine import Engine
        from hv.runtime.domains import qemu_pid

        env = dict(self.env, HV_POOL="1")
        config = Config.from_environ(env)
        engine = Engine(config)
        paths = config.paths
        disk = paths.base_disk(engine.images.get("busybox").id)
        g = paths.guest_dir()
        info = guest_boot(g)
        cmdline = paths.guest_cmdline().read_text().strip()

        def ready() -> dict:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                for e in engine.pool_entries():
                    if e["ready"] and e["alive"]:
                        return e
                time.sleep(0.05)
            raise RuntimeError("the pool never filled")

        subprocess.run([*self.hv, "run", "--rm", "busybox", "true"], env=env, cwd=REPO,
                       check=True, capture_output=True)  # cold: starts the refill
        warm_t, raw_t, rss = [], [], []
        try:
            for _ in range(REPEATS):
                e = ready()
                time.sleep(1.0)  # the refiller's own boot done: measure a quiet machine
                pid = qemu_pid(engine.libvirt, f"hv-{e['id'][:12]}")
                if pid:
                    rss.append(rss_mb(pid))
                warm_t.append(timed([*self.hv, "run", "--rm", "busybox", "true"], env=env,
                                    cwd=REPO))
                ready()
                time.sleep(1.0)
                raw_t.append(raw_boot_times(g / "vmlinuz", g / "initrd.img", cmdline, disk, 1,
                                            bios=info["firmware"] or None,
                                            machine=info["machine"])[0][1])
        finally:
            engine.drain_pool()
        self.results["hv run --rm, warm (HV_POOL=1)"] = warm_t
        self.results["raw qemu, warm loop"] = raw_t
        if rss:
            self.results["pooled idle VM RSS (MB)"] = rss

    def checkpoint(self) -> None:
        """`hv start --checkpoint` of a container holding 64 MB of touched memory (a tmpfs
        file in the guest's RAM) against a cold `hv start` of the same container, alternated;
        and the checkpoint's size."""
        loop = ("head -c 67108864 /dev/urandom >/dev/shm/ballast; i=0; "
                "while :; do i=$((i+1)); sleep 1; done")
        self.run_hv("run", "-d", "--name", "bench-ck", "busybox", "sh", "-c", loop)
        try:
            deadline = time.monotonic() + 120
            while "ballast" not in self.run_hv("exec", "bench-ck", "ls", "-l",
                                               "/dev/shm").stdout:
                if time.monotonic() > deadline:
                    raise RuntimeError("the ballast never appeared")
                time.sleep(0.5)
            time.sleep(2)  # written in full
            self.run_hv("checkpoint", "create", "bench-ck", "b1")
            size = self.run_hv("checkpoint", "ls", "bench-ck").stdout.splitlines()[1].split()[-1]
            self.notes.append(f"checkpoint of a container with 64 MB touched: {size}")
            restored, cold = [], []
            for _ in range(REPEATS):
                restored.append(timed([*self.hv, "start", "--checkpoint", "b1", "bench-ck"],
                                      env=self.env, cwd=REPO))
                self.run_hv("kill", "bench-ck")
                cold.append(timed([*self.hv, "start", "bench-ck"], env=self.env, cwd=REPO))
                self.run_hv("kill", "bench-ck")
        finally:
            subprocess.run([*self.hv, "rm", "-f", "bench-ck"], env=self.env, cwd=REPO,
                           capture_output=True)
        self.results["hv start --checkpoint (64 MB)"] = restored
        self.results["hv start, cold (same container)"] = cold

    def seam(self) -> None:
        """exec latency and cp throughput, each against its baseline."""
        from hv.config import Config
        from hv.guest.attach import exec_command

        paths = Config.from_environ().paths

        self.run_hv("run", "-d", "--name", "hvb-seam", "busybox", "sleep", "3600")
        self.results["hv exec c true"] = series(
            lambda: timed([*self.hv, "exec", "hvb-seam", "true"], env=self.env, cwd=REPO))
        for rt in ("crun", "runc"):
            if not shutil.which(rt):
                continue
            bundle = oci_bundle(self.images, self.work, ["sleep", "3600"])
            cid = f"hvb-exec-{rt}"
            subprocess.run(runtime_cmd(rt, "run", "-d", "-b", str(bundle), cid), check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)  # the container keeps its stdio
            try:
                self.results[f"{rt} exec c true"] = series(
                    lambda rt=rt, cid=cid: timed(runtime_cmd(rt, "exec", cid, "true")))
            finally:
                subprocess.run(runtime_cmd(rt, "delete", "-f", cid), capture_output=True)

        blob = self.work / "blob"
        with open(blob, "wb") as f:
            f.write(os.urandom(CP_MB * 1024 * 1024))
        self.results[f"hv cp {CP_MB} MB into c"] = series(
            lambda: timed([*self.hv, "cp", str(blob), "hvb-seam:/tmp/blob"], env=self.env,
                          cwd=REPO), repeats=max(3, REPEATS // 2))
        cid = self.run_hv("inspect", "-f", "{{.Id}}", "hvb-seam").stdout.strip()
        known = self.work / "known_hosts"
        port = paths.container_ssh_port(cid).read_text().strip()
        known.write_text(f"[127.0.0.1]:{port} {paths.container_host_key(cid).read_text()}")
        ssh = ["ssh", "-q", "-i", str(paths.container_client_key(cid)), "-p", port,
               "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
               "-o", "BatchMode=yes", "root@127.0.0.1",
               exec_command(["sh", "-c", "cat > /tmp/blob-ssh"])]

        def openssh() -> float:
            with open(blob, "rb") as f:
                return timed(ssh, stdin=f)

        self.results[f"OpenSSH cat > f, {CP_MB} MB"] = series(openssh,
                                                              repeats=max(3, REPEATS // 2))
        self.run_hv("rm", "-f", "hvb-seam")

    def memory(self) -> None:
        from hv.config import Config

        paths = Config.from_environ().paths

        names = [f"hvb-idle-{i}" for i in range(IDLE)]
        started = 0
        try:
            for n in names:
                self.run_hv("run", "-d", "--name", n, "busybox", "sleep", "3600")
                started += 1
            time.sleep(3)
            rss = []
            for n in names:
                pid = int((paths.libvirt_root() / "run" / "qemu" / f"{n}.pid").read_text())
                rss.append(rss_mb(pid))
            self.results["idle container QEMU RSS (MB)"] = rss
            alive = self.run_hv("ps", "-q", "-f", "name=hvb-idle").stdout.split()
            self.notes.append(f"{len(alive)} of {IDLE} idle containers running at once")
        finally:
            if started:
                self.run_hv("rm", "-f", *names[:started])

    def close(self) -> None:
        subprocess.run([*self.hv, "ps", "-aq"], env=self.env, capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


def report(b: Bench, accel) -> None:
    med = {k: statistics.median(v) for k, v in b.results.items()}
    print(f"machine: {machine()}")
    print(f"accelerator: {accel.name} ({accel.reason})")
    print(f"repeats: {REPEATS} (median, min-max)\n")
    for k, v in b.results.items():
        unit = "MB" if "(MB)" in k else "ms"
        scale = 1 if unit == "MB" else 1000
        print(f"  {k:34s} {med[k]*scale:9.0f} {unit}  ({min(v)*scale:.0f}-{max(v)*scale:.0f})")
    print()

    def ratio(a: str, b_: str, label: str, target: str = "") -> None:
        if a in med and b_ in med and med[b_]:
            print(f"  {label:34s} {med[a] / med[b_]:9.2f}  {target}")

    hv_run = "hv run --rm busybox true"
    ratio(hv_run, b.raw_key, "hv run / raw qemu (same kernel)", "(target <= 1.10)")
    ratio(hv_run, f"{b.raw_key}, to `exited`", "hv run / raw qemu to `exited`")
    floor = getattr(b, "floor_key", "")
    ratio(floor, b.raw_key, "libvirt floor / raw qemu", "(libvirt's share)")
    ratio(hv_run, floor, "hv run / libvirt floor", "(hv's own share)")
    ratio(hv_run, "raw qemu, stock cloud kernel", "hv run / raw qemu stock kernel",
          "(target <= 0.50)")
    ratio(hv_run, "crun run (namespaces)", "hv run / crun run")
    ratio(hv_run, "runc run (namespaces)", "hv run / runc run")
    ratio("hv exec c true", "crun exec c true", "hv exec / crun exec")
    ratio("hv exec c true", "runc exec c true", "hv exec / runc exec")
    ratio("hv run --rm, warm (HV_POOL=1)", "raw qemu, warm loop",
          "warm hv run / raw qemu cold boot", "(target <= 0.35)")
    ratio("hv start --checkpoint (64 MB)", "hv start, cold (same container)",
          "restore / cold start", "(target <= 0.5)")
    cp, ssh = f"hv cp {CP_MB} MB into c", f"OpenSSH cat > f, {CP_MB} MB"
    if cp in med and ssh in med:
        print(f"  {'hv cp throughput / OpenSSH':34s} {med[ssh] / med[cp]:9.2f}  (target >= 0.8)")
    for note in b.notes:
        print(f"  {note}")


def main() -> int:
    from hv.runtime.accel import detect

    sections = (os.environ.get("HV_BENCH_ONLY") or "boot,warm,checkpoint,seam,memory").split(
        ",")
    b = Bench()
    try:
        from hv.config import Config

        accel = detect(Config.from_environ().paths)
        if "boot" in sections:
            b.boot()
        elif {"seam", "memory", "warm", "checkpoint"} & set(sections):
            b.run_hv("load", "-i", str(b.images / "busybox.oci.tar"))
            b.raw_key = ""
        if "warm" in sections:
            b.warm()
        if "checkpoint" in sections:
            b.checkpoint()
        if "seam" in sections:
            b.seam()
        if "memory" in sections:
            b.memory()
    finally:
        b.close()
    report(b, accel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
