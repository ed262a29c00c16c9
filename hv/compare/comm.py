"""The Communication row: two of a column's kind talking to each other, measured.

- process: two processes joined by pipes. Round trip: one byte there and back between a
  parent and its forked child over two pipes (`ROUNDS` of them, per round trip). Throughput:
  `head -c N /dev/zero | cat > /dev/null`, the image's own binaries in the process column's
  chroot.
- container: two network namespaces, each with one end of a veth pair whose other ends are on
  a Linux bridge without any host address (the way a container runtime wires its default
  network, minus NAT). Round trip: `ping -A -c PINGS` from one to the other; throughput: N MB
  through `nc` (the image's busybox, chroot'ed into the rootfs in each namespace).
- vm: two hv containers on one user-defined hv network, through the engine facade (network
  create, run -d, exec, as `hv network create` / `hv run -d --network` / `hv exec` do); the
  same `ping` and `nc` in the guests.

Every timed launch has its no-op twin measured in the same loop (`true` launched the same
way: chroot, `ip netns exec` + chroot, the facade's exec), whose median is subtracted from
the transfer's time. Everything made here is removed by `cleanup()`: processes, namespaces,
veths, the bridge, the VMs, the network. Nothing leaves this machine: the bridges have no
host address and nothing forwards.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hv.compare.legs import LegError
from hv.compare.workload import NEEDS, PIPE_NEEDS  # noqa: F401 - the runner asks comm

ROUNDS = 2000  # pipe round trips per sample
PINGS = 20  # echo requests per sample
PORT = 5001
RTT = re.compile(r"min/avg/max(?:/mdev)? = ([\d.]+)/([\d.]+)/([\d.]+)")
# a FIFO held open for writing by a sleeper keeps nc's stdin open (busybox nc half-closes
# on stdin EOF, and the client would quit before sending); nc exits on the client's EOF
SERVER = ("mkfifo /hvcmp-hold; sleep 100000 > /hvcmp-hold & "
          f"while :; do nc -l -p {PORT} < /hvcmp-hold > /dev/null; done")


@dataclass
class CommResult:
    how: str = ""
    rtt_s: list[float] = field(default_factory=list)  # one per sample
    xfer_s: list[float] = field(default_factory=list)  # seconds per transfer of `mb`
    mb: int = 0
    error: str | None = None


def send_script(peer: str, mb: int) -> str:
    """`mb` MB of zeros to peer:PORT; retried while the server's next `nc -l` is not
    listening yet (a refused connect sends nothing)."""
    return (f"i=0; until head -c {mb * 1024 * 1024} /dev/zero | nc {peer} {PORT}; do "
            "i=$((i+1)); [ $i -gt 50 ] && exit 1; sleep 0.1; done")


def ping_avg_s(out: str) -> float:
    """The average RTT of busybox/iputils ping's summary line, in seconds."""
    m = RTT.search(out)
    if not m:
        raise LegError(f"no ping summary in: {out.strip()[-300:]!r}")
    return float(m.group(2)) / 1000


def pipe_round_trip_s(rounds: int = ROUNDS) -> float:
    """Seconds per round trip of one byte between this process and a forked child over two
    pipes (the child echoes)."""
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: echo every byte back, exit at EOF
        try:
            os.close(a_w)
            os.close(b_r)
            while True:
                c = os.read(a_r, 1)
                if not c:
                    break
                os.write(b_w, c)
        finally:
            os._exit(0)
    os.close(a_r)
    os.close(b_w)
    try:
        os.write(a_w, b"x")  # warm-up: the child is scheduled once
        os.read(b_r, 1)
        t = time.perf_counter()
        for _ in range(rounds):
            os.write(a_w, b"x")
            os.read(b_r, 1)
        return (time.perf_counter() - t) / rounds
    finally:
        os.close(a_w)
        os.close(b_r)
        os.waitpid(pid, 0)


def missing(root: Path, env: dict[str, str], names=NEEDS) -> list[str]:
    """The applets of `names` that the rootfs has on none of its PATH's directories."""
    from hv.compare.rootfs import resolve_in_root

    dirs = [d for d in env.get("PATH", "").split(":") if d.startswith("/")]
    return [n for n in names if not any(resolve_in_root(root, f"{d}/{n}") for d in dirs)]


def _timed(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                       env=env)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise LegError(f"{argv[-1][:60]!r} exited {p.returncode}: "
                       f"{p.stderr.decode(errors='replace').strip()[-300:]}")
    return dt


def _minus(times: list[float], noop: list[float]) -> list[float]:
    base = statistics.median(noop) if noop else 0.0
    return [max(t - base, 1e-6) for t in times]


class Comm:
    """One column's pair. `run(repeats, mb)` -> CommResult; `cleanup()` ends everything."""

    how = ""

    def __init__(self, timeout: float = 600.0) -> None:
        self.timeout = timeout

    def run(self, repeats: int, mb: int) -> CommResult:
        res = CommResult(self.how, mb=mb)
        try:
            self.setup()
            self.measure(res, repeats, mb)
        except LegError as e:
            res.error = e.message
        except (OSError, subprocess.SubprocessError) as e:
            res.error = f"{type(e).__name__}: {e}"
        finally:
            self.cleanup()
        return res

    def setup(self) -> None:
        pass

    def measure(self, res: CommResult, repeats: int, mb: int) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass


class PipeComm(Comm):
    how = ("two processes joined by pipes: 1-byte ping-pong (round trip); "
           "`head -c N /dev/zero | cat > /dev/null` in the chroot (throughput)")

    def __init__(self, chroot_argv, shell: list[str], env: dict[str, str],
                 timeout: float = 600.0) -> None:
        super().__init__(timeout)
        self.chroot_argv = chroot_argv  # workload argv -> the process column's launch argv
        self.shell, self.env = shell, env

    def measure(self, res, repeats, mb):
        script = f"head -c {mb * 1024 * 1024} /dev/zero | cat > /dev/null"
        xfer, noop = [], []
        for _ in range(repeats):
            res.rtt_s.append(pipe_round_trip_s())
            xfer.append(_timed(self.chroot_argv([*self.shell, "-c", script]), self.timeout,
                               self.env))
            noop.append(_timed(self.chroot_argv([*self.shell, "-c", "true"]), self.timeout,
                               self.env))
        res.xfer_s = _minus(xfer, noop)


class VethComm(Comm):
    """Two namespaces on a veth/bridge pair, the image's busybox chroot'ed in each."""

    how = ("two network namespaces, a veth pair each, joined by a Linux bridge without a host "
           "address: `ping -A` (round trip) and `nc` (throughput), the image's binaries")
    ADDRS = ("10.254.78.1", "10.254.78.2")

    def __init__(self, run_id: str, chroot_argv, shell: list[str], env: dict[str, str],
                 timeout: float = 600.0) -> None:
        super().__init__(timeout)
        self.env = env
        self.ipbin = shutil.which("ip") or "ip"
        if os.geteuid() != 0 or not shutil.which("ip"):
            raise LegError("container: the veth pair needs root and `ip` (iproute2)")
        self.ns = [f"hvcmp-{run_id}-a", f"hvcmp-{run_id}-b"]
        self.br = f"hvcmpbr{run_id}"[:15]
        self.ends = [f"hvcmp{run_id}a"[:15], f"hvcmp{run_id}b"[:15]]
        self.chroot_argv, self.shell = chroot_argv, shell
        self.made: list[tuple[str, str]] = []
        self.server: subprocess.Popen | None = None

    def _ip(self, *args: str) -> None:
        p = subprocess.run([self.ipbin, *args], capture_output=True, text=True)
        if p.returncode != 0:
            raise LegError(f"container: ip {' '.join(args)}: {p.stderr.strip()}")

    def setup(self) -> None:
        # each name is recorded before it is made: an interrupt during `ip` (Ctrl-C) may
        # leave it made, and deleting one that is not there is harmless
        self.made.append(("link", self.br))
        self._ip("link", "add", self.br, "type", "bridge")
        try:  # no host address of any kind: not even IPv6's link-local one
            Path(f"/proc/sys/net/ipv6/conf/{self.br}/disable_ipv6").write_text("1")
        except OSError:
            pass
        self._ip("link", "set", self.br, "up")
        for ns, end, addr in zip(self.ns, self.ends, self.ADDRS, strict=True):
            self.made.append(("netns", ns))
            self._ip("netns", "add", ns)
            self.made.append(("link", end))
            self._ip("link", "add", end, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._ip("link", "set", end, "master", self.br, "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
            self._ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            self._ip("-n", ns, "link", "set", "eth0", "up")

    def _in(self, i: int, script: str) -> list[str]:
        return [self.ipbin, "netns", "exec", self.ns[i],
                *self.chroot_argv([*self.shell, "-c", script])]

    def measure(self, res, repeats, mb):
        peer = self.ADDRS[1]
        _timed(self._in(0, f"ping -c 1 -W 5 {peer} > /dev/null"), self.timeout, self.env)
        self.server = subprocess.Popen(self._in(1, SERVER), stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True, env=self.env)
        xfer, noop = [], []
        for _ in range(repeats):
            p = subprocess.run(self._in(0, f"ping -A -c {PINGS} {peer}"), capture_output=True,
                               text=True, timeout=self.timeout, env=self.env)
            res.rtt_s.append(ping_avg_s(p.stdout))
            xfer.append(_timed(self._in(0, send_script(peer, mb)), self.timeout, self.env))
            noop.append(_timed(self._in(0, "true"), self.timeout, self.env))
        res.xfer_s = _minus(xfer, noop)

    def cleanup(self) -> None:
        if self.server is not None:
            try:
                os.killpg(self.server.pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
            self.server.wait()
            self.server = None
        for kind, name in reversed(self.made):  # a namespace's end of a veth goes with it
            cmd = ([self.ipbin, "netns", "del", name] if kind == "netns" else
                   [self.ipbin, "link", "del", name])
            subprocess.run(cmd, capture_output=True)
        self.made = []


class VmComm(Comm):
    """Two hv containers on a user-defined hv network, through the engine facade."""

    how = ("two hv VMs on one user-defined hv network (a Linux bridge, a tap and virtio-net "
           "each): `ping -A` (round trip) and `nc` (throughput), the image's binaries")

    def __init__(self, engine, image_ref: str, shell: list[str], run_id: str,
                 timeout: float = 600.0) -> None:
        super().__init__(timeout)
        self.engine, self.image_ref, self.shell = engine, image_ref, shell
        self.net = f"hvcmp-{run_id}"
        self.names = [f"hvcmp-{run_id}-net-a", f"hvcmp-{run_id}-net-b"]
        self.started: list[str] = []
        self.net_made = False

    def setup(self) -> None:
        from hv.errors import HvError
        from hv.spec import RunOptions

        try:
            self.engine.network_create(self.net)
            self.net_made = True
            for name in self.names:
                self.started.append(name)
                self.engine.run(RunOptions(image=self.image_ref, entrypoint=self.shell[0],
                                           args=[*self.shell[1:], "-c", SERVER], name=name,
                                           detach=True, networks=[self.net], user="0",
                                           workdir="/"))
            info = self.engine.network_inspect(self.net)
        except HvError as e:
            raise LegError(f"vm: {e.message}", hint=e.hint) from None
        ips = {v["Name"]: v["IPv4Address"].split("/")[0] for v in info["Containers"].values()}
        if self.names[1] not in ips:
            raise LegError(f"vm: {self.names[1]} has no address on {self.net}")
        self.peer = ips[self.names[1]]

    def _exec(self, script: str) -> tuple[float, str]:
        """(seconds, stdout) of `sh -c script` in the first VM (the facade's exec)."""
        from hv.errors import HvError

        t = time.perf_counter()
        try:
            stream = self.engine.exec(self.names[0], [*self.shell, "-c", script])
        except HvError as e:
            raise LegError(f"vm: exec: {e.message}") from None
        out, err = [], []
        sel = selectors.DefaultSelector()
        sel.register(stream.fileno(), selectors.EVENT_READ)
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                chunks = stream.read()
                if chunks is None:
                    break
                for kind, data in chunks:
                    (out if kind == 1 else err).append(data)
                if not chunks:
                    if time.monotonic() > deadline:
                        raise LegError(f"vm: {script[:40]!r} did not finish")
                    sel.select(timeout=0.5)
        finally:
            sel.close()
            stream.close()
        dt = time.perf_counter() - t
        if stream.exit_code != 0:
            raise LegError(f"vm: {script[:60]!r} exited {stream.exit_code}: "
                           f"{b''.join(err).decode(errors='replace').strip()[-300:]}")
        return dt, b"".join(out).decode(errors="replace")

    def measure(self, res, repeats, mb):
        self._exec(f"ping -c 1 -W 5 {self.peer} > /dev/null")  # ARP, and a warm exec path
        xfer, noop = [], []
        for _ in range(repeats):
            res.rtt_s.append(ping_avg_s(self._exec(f"ping -A -c {PINGS} {self.peer}")[1]))
            xfer.append(self._exec(send_script(self.peer, mb))[0])
            noop.append(self._exec("true")[0])
        res.xfer_s = _minus(xfer, noop)

    def cleanup(self) -> None:
        from hv.errors import HvError

        for name in self.started:
            try:
                self.engine.remove(name, force=True)
            except HvError:
                pass
        self.started = []
        if self.net_made:
            try:
                self.engine.network_remove(self.net)
            except HvError:
                pass
            self.net_made = False
