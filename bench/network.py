"""`make bench` section "network": container networks against namespace containers on veth.

- Throughput: HV_BENCH_NET_MB (default 100) MB of zeros from one busybox container to another
  on one user-defined hv network (`hv network create`, `hv run -d --network N`), busybox `nc`
  on both ends (the server's stdin kept open: a FIFO nobody writes). The host times the
  client's `hv exec` (its `nc` exits once the server has read everything and closed); the
  median `hv exec c true` of the same loop is subtracted. Baseline, in the same loop: the
  same transfer between two network namespaces, each with one end of a veth pair whose other
  end is on a Linux bridge with no host address (`ip netns exec … busybox nc`, the host's
  busybox, the very binary the busybox image carries).
- Round trip: `ping -A -c N` (the next echo as soon as the reply is in) between the same two
  containers, and between the two namespaces; the average RTT of busybox ping's summary.
- Join cost: `hv run --rm --network N busybox true` vs the default `hv run --rm busybox true`
  (`bridge`: the issue's measure) and vs `--network none` (loopback alone: no NIC of the
  workload's at all), alternated in one loop.

Everything stays on this machine: the bridges have no host address, nothing forwards. The
namespaces, veths and the bridge made here are deleted at the end, the containers and the
network removed. Medians of HV_BENCH_REPEATS (default 7; transfers: half of it, at least 2);
HV_BENCH_QUICK=1: 2 repeats and 5 MB.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import PrivateRoot, qemu_pids  # noqa: E402
from bench.run import machine, timed  # noqa: E402

QUICK = os.environ.get("HV_BENCH_QUICK", "") not in ("", "0")
REPEATS = 2 if QUICK else int(os.environ.get("HV_BENCH_REPEATS", "7"))
NET_MB = int(os.environ.get("HV_BENCH_NET_MB", "5" if QUICK else "100"))
XFER_REPEATS = 2 if QUICK else max(2, REPEATS // 2)
PINGS = 20 if QUICK else 50
PORT = 5001
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
# the server: a FIFO held open for writing by a sleeper keeps nc's stdin open (busybox nc
# half-closes on stdin EOF, and the client would then quit), and nc exits on the client's EOF
SERVER = ("mkfifo /tmp/hold; sleep 100000 > /tmp/hold & "
          f"while :; do nc -l -p {PORT} < /tmp/hold > /dev/null; done")
RTT = re.compile(r"min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+)")


def send(peer: str, mb: int, bb: str = "") -> str:
    """The client's script: `mb` MB of zeros to peer:PORT (retried while the server's next
    `nc -l` is not listening yet: a refused connect sends nothing). `bb`: "busybox " to run
    the host's busybox applets."""
    return (f"i=0; until {bb}head -c {mb * 1024 * 1024} /dev/zero | {bb}nc {peer} {PORT}; do "
            f"i=$((i+1)); [ $i -gt 50 ] && exit 1; {bb}usleep 100000; done")


def rtt_ms(out: str) -> float:
    m = RTT.search(out)
    if not m:
        raise RuntimeError(f"no ping summary in: {out[-500:]}")
    return float(m.group(2))


class Veth:
    """Two namespace containers on a veth/bridge pair, made and removed here."""

    def __init__(self, tag: str) -> None:
        self.ns = [f"hvbn-{tag}-a", f"hvbn-{tag}-b"]
        self.br = f"hvbnbr-{tag}"[:15]
        self.host_ends = [f"hvbn{tag}a", f"hvbn{tag}b"]
        self.addrs = ["10.254.77.1", "10.254.77.2"]
        self.made: list[tuple[str, str]] = []

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def up(self) -> None:
        self.made.append(("link", self.br))  # recorded first: an interrupted `ip` may make it
        self.ip("link", "add", self.br, "type", "bridge")
        with contextlib.suppress(OSError):  # no host address of any kind on the bridge
            Path(f"/proc/sys/net/ipv6/conf/{self.br}/disable_ipv6").write_text("1")
        self.ip("link", "set", self.br, "up")
        for ns, end, addr in zip(self.ns, self.host_ends, self.addrs, strict=True):
            self.made.append(("netns", ns))
            self.ip("netns", "add", ns)
            self.made.append(("link", end))
            self.ip("link", "add", end, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.ip("link", "set", end, "master", self.br, "up")
            self.ip("-n", ns, "link", "set", "lo", "up")
            self.ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            self.ip("-n", ns, "link", "set", "eth0", "up")

    def exec(self, i: int, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[i], *argv]

    def transfer(self, mb: int) -> float:
        server = subprocess.Popen(self.exec(1, BUSYBOX, "nc", "-l", "-p", str(PORT)),
                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            return timed(self.exec(0, BUSYBOX, "sh", "-c",
                                   send(self.addrs[1], mb, f"{BUSYBOX} ")))
        finally:
            server.stdin.close()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    def ping(self, n: int) -> float:
        out = subprocess.run(self.exec(0, BUSYBOX, "ping", "-A", "-c", str(n), self.addrs[1]),
                             check=True, capture_output=True, text=True).stdout
        return rtt_ms(out)

    def down(self) -> None:
        for kind, name in reversed(self.made):
            if kind == "netns":
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
            else:
                subprocess.run(["ip", "link", "del", name], capture_output=True)
        self.made = []


class NetBench:
    def __init__(self) -> None:
        r = PrivateRoot("hvbn-")
        self.images, self.work, self.root, self.env, self.hv = r.images, r.work, r.root, \
            r.env, r.hv
        self.tag = secrets.token_hex(2)
        self.net = f"hvbn-{self.tag}"
        self.ctrs = [f"hvbn-{self.tag}-a", f"hvbn-{self.tag}-b"]
        self.veth = Veth(self.tag)
        self.results: dict[str, list[float]] = {}
        self.notes: list[str] = []

    def run_hv(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([*self.hv, *args], env=self.env, cwd=REPO, capture_output=True,
                           text=True)
        if check and p.returncode != 0:
            raise RuntimeError(f"hv {' '.join(args)} exited {p.returncode}: {p.stderr}")
        return p

    def setup(self) -> None:
        self.run_hv("load", "-i", str(self.images / "busybox.oci.tar"))
        self.run_hv("network", "create", self.net)
        for name in self.ctrs:
            self.run_hv("run", "-d", "--name", name, "--network", self.net, "busybox", "sh",
                        "-c", SERVER)
        self.peer = self.run_hv(
            "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{self.net}").IPAddress}}}}',
            self.ctrs[1]).stdout.strip()
        self.veth.up()

    def datapath(self) -> None:
        a = self.ctrs[0]

        def vm_xfer() -> float:
            return timed([*self.hv, "exec", a, "sh", "-c", send(self.peer, NET_MB)],
                         env=self.env, cwd=REPO)

        def vm_exec() -> float:
            return timed([*self.hv, "exec", a, "true"], env=self.env, cwd=REPO)

        def vm_ping() -> float:
            out = self.run_hv("exec", a, "ping", "-A", "-c", str(PINGS), self.peer).stdout
            return rtt_ms(out) / 1000

        self.run_hv("exec", a, "ping", "-c", "1", "-W", "5", self.peer)  # ARP, warm-up
        self.veth.ping(1)
        vm_xfer(), self.veth.transfer(NET_MB), vm_exec()  # warm-ups
        vx, nx, ve = [], [], []
        for _ in range(XFER_REPEATS):
            vx.append(vm_xfer())
            nx.append(self.veth.transfer(NET_MB))
            ve.append(vm_exec())
            time.sleep(0.3)  # the server's next `nc -l`
        overhead = statistics.median(ve)
        self.results[f"hv network, {NET_MB} MB nc (s)"] = [t - overhead for t in vx]
        self.results[f"veth netns, {NET_MB} MB nc (s)"] = nx
        self.results["hv exec c true (subtracted) (s)"] = ve
        vp, np_ = [], []
        for _ in range(REPEATS):
            vp.append(vm_ping())
            np_.append(self.veth.ping(PINGS) / 1000)
        self.results[f"hv network, ping -A RTT avg of {PINGS} (s)"] = vp
        self.results[f"veth netns, ping -A RTT avg of {PINGS} (s)"] = np_

    def join(self) -> None:
        def run(*flags: str):
            return lambda: timed([*self.hv, "run", "--rm", *flags, "busybox", "true"],
                                 env=self.env, cwd=REPO)

        sides = {f"hv run --rm --network {self.net} (user network)": run("--network", self.net),
                 "hv run --rm --network none": run("--network", "none"),
                 "hv run --rm (default: bridge)": run()}
        for fn in sides.values():
            fn()
        out: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(REPEATS):
            for k, fn in sides.items():
                out[k].append(fn())
        for k, v in out.items():
            self.results[f"{k} (s)"] = v

    def close(self) -> None:

        self.veth.down()
        self.run_hv("rm", "-f", *self.ctrs, check=False)
        self.run_hv("network", "rm", self.net, check=False)
        left = qemu_pids(self.root)
        if left:
            self.notes.append(f"QEMU processes of this root still alive, killed: {left}")
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
        shutil.rmtree(self.work, ignore_errors=True)


def report(b: NetBench, accel) -> None:
    med = {k: statistics.median(v) for k, v in b.results.items()}
    print(f"machine: {machine()}")
    print(f"accelerator: {accel.name} ({accel.reason})")
    print(f"network: repeats {REPEATS}, transfers {XFER_REPEATS} (median, min-max), "
          "alternated in one loop\n")
    for k, v in b.results.items():
        label = k.removesuffix(" (s)")
        s = 1000
        print(f"  {label:50s} {med[k]*s:9.2f} ms  ({min(v)*s:.2f}-{max(v)*s:.2f})")
    print()
    vx, nx = f"hv network, {NET_MB} MB nc (s)", f"veth netns, {NET_MB} MB nc (s)"
    if vx in med and nx in med:
        print(f"  {'hv network throughput':50s} {NET_MB / med[vx]:9.2f} MB/s")
        print(f"  {'veth throughput':50s} {NET_MB / med[nx]:9.2f} MB/s")
        print(f"  {'hv network / veth throughput':50s} {med[nx] / med[vx]:9.3f}")
    vp, np_ = (f"{s}, ping -A RTT avg of {PINGS} (s)" for s in ("hv network", "veth netns"))
    if vp in med and np_ in med:
        print(f"  {'hv network / veth RTT':50s} {med[vp] / med[np_]:9.1f}x")
    keys = [k for k in med if k.startswith("hv run --rm")]
    if len(keys) == 3:
        # paired: each round's difference (the three ran back to back), then the median, so
        # that a slow minute of this shared machine weighs on both sides of a difference
        user, none, default = (b.results[k] for k in keys)
        # the measure: `run --rm --network N true` against `run --rm true`
        pu = statistics.median(u - d for u, d in zip(user, default, strict=True))
        pn = statistics.median(u - n for u, n in zip(user, none, strict=True))
        pd = statistics.median(d - n for d, n in zip(default, none, strict=True))
        print(f"  {'join a user network - run --rm (paired median)':50s} {pu * 1000:+9.0f} ms  "
              "(target <= +30 ms)")
        print(f"  {'join a user network - none (paired median)':50s} {pn * 1000:+9.0f} ms")
        print(f"  {'join the default bridge - none (paired median)':50s} {pd * 1000:+9.0f} ms")
    for note in b.notes:
        print(f"  {note}")


def main() -> int:
    from hv.config import Config
    from hv.network import datapath
    from hv.runtime.accel import detect

    if not datapath.can_admin():
        print("network: needs CAP_NET_ADMIN (run as root)", file=sys.stderr)
        return 1
    sections = (os.environ.get("HV_BENCH_NET_ONLY") or "datapath,join").split(",")
    b = NetBench()
    try:
        accel = detect(Config.from_environ().paths)
        b.setup()
        if "datapath" in sections:
            b.datapath()
        if "join" in sections:
            b.join()
    finally:
        b.close()
    report(b, accel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
