"""`make bench` section "api": `hv system service` driven by the real `docker` CLI and docker-py.

- `docker run --rm busybox true` through the service, the raw QEMU boot of the same guest
  (bench/rawboot.py) and `hv run --rm busybox true`, alternated in one loop
  (targets: docker <= 1.10 x raw, docker <= hv run)
- `docker exec c true` vs `hv exec c true` on one running container, alternated
  (targets: <= 0.6 x hv exec, <= 100 ms)
- docker-py `client.containers.run("busybox", "true", remove=True)` (one warm client in this
  process) vs `docker run --rm busybox true`, alternated (target: within 5 %)
- the service's VmRSS idle (no container; target <= 60 MB) and after the loops
- HV_BENCH_CLIENTS (default 10) clients at once, each `docker run --rm busybox true`: all
  succeed (wall time and failures)

The service is started here (its PID), on a private state root under /tmp, and stopped with
SIGTERM at the end; every container of that root is removed and no QEMU of it is left.
Medians of HV_BENCH_REPEATS (default 7) after one warm-up; HV_BENCH_QUICK=1: 2 repeats,
3 clients.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import PrivateRoot, qemu_pids  # noqa: E402
from bench.run import machine, rss_mb, timed  # noqa: E402

QUICK = os.environ.get("HV_BENCH_QUICK", "") not in ("", "0")
REPEATS = 2 if QUICK else int(os.environ.get("HV_BENCH_REPEATS", "7"))
CLIENTS = int(os.environ.get("HV_BENCH_CLIENTS", "3" if QUICK else "10"))
DOCKER = shutil.which("docker")


class ApiBench:
    def __init__(self) -> None:
        r = PrivateRoot("hvba-")
        self.images, self.work, self.root, self.env, self.hv = r.images, r.work, r.root, \
            r.env, r.hv
        self.sock = self.work / "api.sock"
        self.docker_env = dict(os.environ, DOCKER_CONFIG=str(self.work / "docker-config"))
        self.docker_env.pop("DOCKER_HOST", None)
        (self.work / "docker-config").mkdir()
        self.svc: subprocess.Popen | None = None
        self.results: dict[str, list[float]] = {}
        self.rss: dict[str, float] = {}
        self.notes: list[str] = []

    def run_hv(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.hv, *args], env=self.env, cwd=REPO, check=check,
                              capture_output=True, text=True)

    def docker(self, *args: str) -> list[str]:
        return [DOCKER, "-H", f"unix://{self.sock}", *args]

    def start_service(self, *extra: str) -> None:
        log = open(self.work / "service.log", "ab")  # noqa: SIM115 - the child keeps it
        self.svc = subprocess.Popen([*self.hv, "system", "service", f"unix://{self.sock}",
                                     *extra],
                                    env=self.env, cwd=REPO, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 60
        while True:
            if self.svc.poll() is not None:
                raise RuntimeError(f"the service exited {self.svc.returncode}: "
                                   + (self.work / "service.log").read_text()[-2000:])
            with contextlib.suppress(OSError):
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(5)
                s.connect(str(self.sock))
                s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
                ok = b" 200 " in s.recv(200)
                s.close()
                if ok:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not answer /_ping in 60 s")
            time.sleep(0.1)

    def stop_service(self) -> None:
        if self.svc is None or self.svc.poll() is not None:
            return
        self.svc.send_signal(signal.SIGTERM)
        try:
            self.svc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.notes.append("the service did not stop on SIGTERM in 30 s: killed")
            self.svc.kill()
            self.svc.wait()
        if self.svc.returncode != 0:
            self.notes.append(f"the service exited {self.svc.returncode} on SIGTERM")

    def setup(self) -> None:
        self.run_hv("load", "-i", str(self.images / "busybox.oci.tar"))
        self.start_service()
        time.sleep(1)
        self.rss["service idle (no container)"] = rss_mb(self.svc.pid)

    def boot(self) -> None:
        """docker run vs raw QEMU vs hv run, and docker-py vs the docker CLI, alternated."""
        import docker as dockerpy

        from bench.rawboot import guest_boot, raw_boot_times
        from hv.config import Config
        from hv.engine import Engine

        config = Config.from_environ()
        paths = config.paths
        disk = paths.base_disk(Engine(config).images.get("busybox").id)
        g = paths.guest_dir()
        info = guest_boot(g)
        cmdline = paths.guest_cmdline().read_text().strip()
        self.raw_key = f"raw qemu, {info['kernel']} kernel"

        def docker_run() -> float:
            return timed(self.docker("run", "--rm", "busybox", "true"), env=self.docker_env)

        def hv_run() -> float:
            return timed([*self.hv, "run", "--rm", "busybox", "true"], env=self.env, cwd=REPO)

        def raw() -> tuple[float, float]:
            return raw_boot_times(g / "vmlinuz", g / "initrd.img", cmdline, disk, 1,
                                  bios=info["firmware"] or None, machine=info["machine"])[0]

        client = dockerpy.DockerClient(base_url=f"unix://{self.sock}", timeout=300)

        def py_run() -> float:
            t = time.perf_counter()
            client.containers.run("busybox", "true", remove=True)
            return time.perf_counter() - t

        docker_run(), hv_run(), raw(), py_run()  # warm-ups
        d, h, r, rx = [], [], [], []
        for _ in range(REPEATS):
            d.append(docker_run())
            exited, off = raw()
            r.append(off)
            rx.append(exited)
            h.append(hv_run())
        self.results["docker run --rm busybox true"] = d
        self.results[self.raw_key] = r
        self.results[f"{self.raw_key}, to `exited`"] = rx
        self.results["hv run --rm busybox true"] = h
        p, c = [], []
        for _ in range(REPEATS):
            p.append(py_run())
            c.append(docker_run())
        client.close()
        self.results["docker-py containers.run(remove=True)"] = p
        self.results["docker run --rm (same loop as docker-py)"] = c

    def warm(self) -> None:
        """`docker run --rm busybox true` through a service with `--pool 1`, each run with a
        ready pooled VM (refilled, machine quiet), alternated with raw cold boots."""
        from bench.rawboot import guest_boot, raw_boot_times
        from hv.config import Config
        from hv.engine import Engine

        self.stop_service()
        self.start_service("--pool", "1")
        engine = Engine(Config.from_environ())
        paths = engine.paths
        disk = paths.base_disk(engine.images.get("busybox").id)
        g = paths.guest_dir()
        info = guest_boot(g)
        cmdline = paths.guest_cmdline().read_text().strip()

        def ready() -> None:
            deadline = time.monotonic() + 120
            while engine.pool_status()["Ready"] < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the service's pool never filled")
                time.sleep(0.05)
            time.sleep(1.0)  # the refiller's boot is over: a quiet machine for the timing

        subprocess.run(self.docker("run", "--rm", "busybox", "true"), env=self.docker_env,
                       check=True, capture_output=True)  # cold: starts the refill
        w, r = [], []
        for _ in range(REPEATS):
            ready()
            w.append(timed(self.docker("run", "--rm", "busybox", "true"), env=self.docker_env))
            ready()
            r.append(raw_boot_times(g / "vmlinuz", g / "initrd.img", cmdline, disk, 1,
                                    bios=info["firmware"] or None,
                                    machine=info["machine"])[0][1])
        self.results["docker run --rm, warm (service --pool 1)"] = w
        self.results["raw qemu, warm loop"] = r
        self.stop_service()  # empties its pool
        self.start_service()

    def exec(self) -> None:
        subprocess.run(self.docker("run", "-d", "--name", "hvba-exec", "busybox", "sleep",
                                   "3600"), env=self.docker_env, check=True,
                       capture_output=True)
        try:
            def d() -> float:
                return timed(self.docker("exec", "hvba-exec", "true"), env=self.docker_env)

            def h() -> float:
                return timed([*self.hv, "exec", "hvba-exec", "true"], env=self.env, cwd=REPO)

            d(), h()
            dt, ht = [], []
            for _ in range(REPEATS):
                dt.append(d())
                ht.append(h())
            self.results["docker exec c true"] = dt
            self.results["hv exec c true"] = ht
        finally:
            subprocess.run(self.docker("rm", "-f", "hvba-exec"), env=self.docker_env,
                           capture_output=True)
        self.rss["service after the loops"] = rss_mb(self.svc.pid)

    def concurrent(self) -> None:
        def one(_i: int) -> tuple[int, str]:
            p = subprocess.run(self.docker("run", "--rm", "busybox", "true"),
                               env=self.docker_env, capture_output=True, text=True,
                               timeout=900, stdin=subprocess.DEVNULL)
            return p.returncode, p.stderr.strip()[-300:]

        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            outcomes = list(pool.map(one, range(CLIENTS)))
        wall = time.perf_counter() - t
        failed = [(rc, err) for rc, err in outcomes if rc != 0]
        self.concurrency = (CLIENTS, wall, failed)
        self.rss["service after the concurrent clients"] = rss_mb(self.svc.pid)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_service()
        names = self.run_hv("ps", "-aq", check=False).stdout.split()
        if names:
            self.run_hv("rm", "-f", *names, check=False)
        left = qemu_pids(self.root)
        if left:
            self.notes.append(f"QEMU processes of this root still alive, killed: {left}")
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.work, ignore_errors=True)


def report(b: ApiBench, accel) -> None:
    med = {k: statistics.median(v) for k, v in b.results.items()}
    print(f"machine: {machine()}")
    print(f"accelerator: {accel.name} ({accel.reason})")
    print(f"api: repeats {REPEATS} (median, min-max), alternated in one loop\n")
    for k, v in b.results.items():
        print(f"  {k:42s} {med[k]*1000:9.0f} ms  ({min(v)*1000:.0f}-{max(v)*1000:.0f})")
    for k, v in b.rss.items():
        print(f"  {'RSS, ' + k:42s} {v:9.0f} MB")
    print()

    def ratio(a: str, b_: str, label: str, target: str = "") -> None:
        if a in med and b_ in med and med[b_]:
            print(f"  {label:42s} {med[a] / med[b_]:9.2f}  {target}")

    dr = "docker run --rm busybox true"
    ratio(dr, getattr(b, "raw_key", ""), "docker run / raw qemu (same guest)", "(target <= 1.10)")
    ratio(dr, "hv run --rm busybox true", "docker run / hv run", "(target <= 1.00)")
    ratio("docker run --rm, warm (service --pool 1)", "raw qemu, warm loop",
          "warm docker run / raw qemu cold boot", "(target <= 0.30)")
    ratio("docker exec c true", "hv exec c true", "docker exec / hv exec",
          "(target <= 0.60; and <= 100 ms)")
    ratio("docker-py containers.run(remove=True)", "docker run --rm (same loop as docker-py)",
          "docker-py / docker CLI", "(target 0.95-1.05)")
    idle = b.rss.get("service idle (no container)")
    if idle is not None:
        print(f"  {'service idle RSS':42s} {idle:9.0f} MB  (target <= 60 MB)")
    if hasattr(b, "concurrency"):
        n, wall, failed = b.concurrency
        print(f"  {f'{n} docker run --rm at once':42s} {wall:9.1f} s   "
              f"{n - len(failed)} of {n} succeeded")
        for rc, err in failed:
            print(f"    failed (exit {rc}): {err}")
    for note in b.notes:
        print(f"  {note}")


def main() -> int:
    from hv.config import Config
    from hv.runtime.accel import detect

    if DOCKER is None:
        print("api: the docker CLI is not on PATH (make setup installs it)", file=sys.stderr)
        return 1
    b = ApiBench()
    try:
        accel = detect(Config.from_environ().paths)
        b.setup()
        sections = (os.environ.get("HV_BENCH_ONLY") or "boot,warm,exec,concurrent").split(",")
        for name in ("boot", "warm", "exec", "concurrent"):
            if name in sections:
                getattr(b, name)()
    finally:
        b.close()
    report(b, accel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
