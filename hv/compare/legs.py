"""The three columns: one workload run as a process, a namespace container, an hv VM.

Each leg launches the workload's argv, timestamps its marker lines as they arrive (host
monotonic clock), samples host memory at the `idle` marker, drops the host's page cache at
the `drop` marker, and lets the workload go on. Everything a leg starts is ended by the leg:
process groups killed, OCI containers deleted (`RUNTIME delete -f`), VMs destroyed and
undefined.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hv.compare import measure
from hv.compare.workload import LineSplitter, Marker, Transcript
from hv.errors import HvError

RUN_TIMEOUT = 600.0  # seconds a workload may take (HV_COMPARE_TIMEOUT, through the Config)


class LegError(HvError):
    """One column could not be measured (the others go on)."""


@dataclass
class RunResult:
    transcript: Transcript
    t_launch: float
    t_exit: float | None = None
    exit_code: int | None = None
    host_kib: int | None = None  # host memory sampled at `idle`
    host_detail: dict[str, int] = field(default_factory=dict)  # "comm[pid]" -> KiB
    host_dropped: bool | None = None
    host_drop_s: float | None = None

    @property
    def start_s(self) -> float | None:
        mk = self.transcript.first("start")
        return None if mk is None else mk.t - self.t_launch

    @property
    def exit_s(self) -> float | None:
        return None if self.t_exit is None else self.t_exit - self.t_launch


class Leg:
    name = ""
    sync = "stdin"

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.timeout = RUN_TIMEOUT  # the runner sets the Config's compare_timeout

    def describe(self) -> str:
        raise NotImplementedError

    def run(self, workload: list[str], on_marker: Callable[[Marker], None] | None = None
            ) -> RunResult:
        raise NotImplementedError

    def cleanup(self) -> None:
        """End whatever this leg still has running (idempotent)."""

    # Shared by the markers' handlers ----------------------------------------------------

    def _handle(self, res: RunResult, mk: Marker, sample: Callable[[], None]) -> bool:
        """React to a marker; True when the workload now waits for the host to go on."""
        if mk.key == "idle":
            sample()
            return True
        if mk.key == "drop":
            res.host_dropped, res.host_drop_s = measure.drop_host_caches()
            return True
        return False


def _kill_group(p: subprocess.Popen) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


class _Piped(Leg):
    """Process and container: the workload's stdout is a pipe, its stdin the host's go-ahead."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__()
        self.env = env
        self._proc: subprocess.Popen | None = None

    def _argv(self, workload: list[str]) -> list[str]:
        raise NotImplementedError

    def _sample(self, res: RunResult) -> None:
        assert self._proc is not None
        total, per = measure.tree_rss_kib(self._proc.pid)
        res.host_kib = total
        res.host_detail = {f"{measure.comm(pid)}[{pid}]": kib for pid, kib in per.items()}

    def run(self, workload, on_marker=None):
        argv = self._argv(workload)
        t0 = time.monotonic()
        try:
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, env=self.env,
                                 start_new_session=True, close_fds=True)
        except OSError as e:
            raise LegError(f"{self.name}: cannot start {argv[0]}: {e.strerror}") from None
        self._proc = p
        res = RunResult(Transcript(), t0)
        splitter = LineSplitter()
        deadline = t0 + self.timeout
        sel = selectors.DefaultSelector()
        assert p.stdout is not None and p.stdin is not None
        fd = p.stdout.fileno()
        sel.register(fd, selectors.EVENT_READ)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LegError(f"{self.name}: the workload did not finish in "
                                   f"{self.timeout:.0f} s", hint="set HV_COMPARE_TIMEOUT")
                if not sel.select(timeout=min(left, 1.0)):
                    continue
                data = os.read(fd, 65536)
                now = time.monotonic()
                lines = splitter.feed(data) if data else splitter.flush()
                for line in lines:
                    mk = res.transcript.feed_line(line, now)
                    if mk is None:
                        continue
                    if on_marker:
                        on_marker(mk)
                    if self._handle(res, mk, lambda: self._sample(res)):
                        try:
                            p.stdin.write(b"go\n")
                            p.stdin.flush()
                        except (BrokenPipeError, OSError):
                            pass
                if not data:
                    break
            res.exit_code = p.wait(timeout=max(1.0, deadline - time.monotonic()))
            res.t_exit = time.monotonic()
        except subprocess.TimeoutExpired:
            raise LegError(f"{self.name}: the workload did not exit") from None
        finally:
            sel.close()
            for f in (p.stdin, p.stdout):
                try:
                    f.close()
                except OSError:
                    pass
            self.cleanup()
        return res

    def cleanup(self) -> None:
        if self._proc is not None:
            _kill_group(self._proc)
            self._proc = None


class ProcessLeg(_Piped):
    """A plain process: chroot into the image's rootfs, host namespaces (a private mount
    namespace only so the host's /proc, /dev and /sys can be bound into the rootfs and vanish
    with the process)."""

    name = "process"

    def __init__(self, rootfs: Path, env: dict[str, str]) -> None:
        super().__init__(env)
        self.rootfs = rootfs
        if os.geteuid() != 0:
            raise LegError("process: chroot needs root", hint="run hv compare as root")
        missing = [t for t in ("unshare", "chroot", "mount") if not shutil.which(t)]
        if missing:
            raise LegError(f"process: {', '.join(missing)} not found",
                           hint="install util-linux and coreutils")
        self.tools = {t: shutil.which(t) for t in ("unshare", "chroot", "mount")}

    def describe(self) -> str:
        return "chroot into the image's rootfs; the host's PID, network, IPC, UTS namespaces"

    def _argv(self, workload):
        script = ('r=$1; shift; for d in proc dev sys; do mkdir -p "$r/$d" && '
                  f'{self.tools["mount"]} --rbind "/$d" "$r/$d" || exit 125; done; '
                  f'exec {self.tools["chroot"]} "$r" "$@"')
        return [self.tools["unshare"], "-m", "--propagation", "private", "--", "/bin/sh",
                "-c", script, "hvcmp-chroot", str(self.rootfs), *workload]


def runtime_choice(requested: str | None, env: str = "") -> tuple[str | None, str]:
    """(runtime, why): `--runtime`, else `env` (HV_OCI_RUNTIME: crun|runc|none), else crun if
    it is installed, else runc; (None, reason) when there is none."""
    want = (requested or env or "").strip().lower()
    if want == "none":
        return None, "HV_OCI_RUNTIME=none"
    if want and want not in ("crun", "runc"):
        raise LegError(f"unknown OCI runtime {want!r}", hint="use --runtime crun or runc")
    if want:
        if shutil.which(want):
            return want, f"{want} (asked for)"
        return None, f"{want} is not installed (not on PATH)"
    for rt in ("crun", "runc"):
        if shutil.which(rt):
            return rt, f"{rt} (found on PATH)"
    return None, "neither crun nor runc is installed (not on PATH)"


def _hybrid_cgroups() -> bool:
    return os.path.ismount("/sys/fs/cgroup/unified")


class ContainerLeg(_Piped):
    """A namespace container: `crun run` / `runc run` of an OCI bundle on the same rootfs."""

    name = "container"

    def __init__(self, runtime: str, rootfs: Path, bundle: Path, env: dict[str, str],
                 cid_prefix: str) -> None:
        super().__init__(env)
        if os.geteuid() != 0:
            raise LegError(f"container: {runtime} needs root here (no rootless set-up)",
                           hint="run hv compare as root")
        self.runtime = runtime
        self.binary = shutil.which(runtime) or runtime
        self.rootfs, self.bundle = rootfs, bundle
        self.cid_prefix = cid_prefix
        self.count = 0
        self.cid: str | None = None
        # crun 1.8 refuses hybrid cgroups unless the v2 mount is out of its sight
        self.wrap = runtime == "crun" and _hybrid_cgroups()
        if self.wrap:
            self.notes.append("crun ran in a private mount namespace without "
                              "/sys/fs/cgroup/unified (crun 1.8 refuses hybrid cgroups)")

    def describe(self) -> str:
        return (f"`{self.runtime} run` of an OCI bundle: PID, network, IPC, UTS, mount "
                "namespaces and a cgroup; the host's kernel")

    def _wrapped(self, argv: list[str]) -> list[str]:
        if not self.wrap:
            return argv
        return ["unshare", "-m", "--propagation", "private", "--", "/bin/sh", "-c",
                'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"', "hvcmp-oci", *argv]

    def _argv(self, workload):
        from hv.compare.rootfs import oci_config

        self.count += 1
        self.cid = f"{self.cid_prefix}-{self.count}"
        cfg = oci_config(self.rootfs, workload, self.env, "hvcmp")
        self.bundle.mkdir(parents=True, exist_ok=True)
        (self.bundle / "config.json").write_text(json.dumps(cfg))
        return self._wrapped([self.binary, "run", "--bundle", str(self.bundle), self.cid])

    def cleanup(self) -> None:
        super().cleanup()
        if self.cid is not None:
            subprocess.run(self._wrapped([self.binary, "delete", "-f", self.cid]),
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
            self.cid = None


def _reap_on_sigchld(pid: int | None):
    """Reap the QEMU this process adopted (the engine makes it a child subreaper) the moment
    it exits. The engine's own wait polls /proc for the pid and, when QEMU turned zombie just
    after its one reaping pass, waits its full 5 s; that would count as the VM's exit time."""

    def handler(_signum, _frame) -> None:
        if pid is None:
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    return signal.signal(signal.SIGCHLD, handler)


class VmLeg(Leg):
    """An hv container: a QEMU VM through libvirt, via the engine facade (what `hv run --rm`
    does), the image's entrypoint overridden by the workload."""

    name = "vm"
    sync = "sleep"

    def __init__(self, engine, image_ref: str, name_prefix: str, memory: str | None = None
                 ) -> None:
        super().__init__()
        self.engine = engine  # hv.engine.Engine: the facade, as `hv run` uses it
        self.image_ref = image_ref
        self.name_prefix = name_prefix
        self.memory = memory
        self.count = 0
        self.container = None
        self.names: list[str] = []
        self.memory_mib: int | None = None
        self.accel: str | None = None

    def describe(self) -> str:
        mem = f"{self.memory_mib} MiB" if self.memory_mib else "default RAM"
        return f"`hv run --rm`: a QEMU VM ({self.accel or '?'}, {mem}) with its own kernel"

    def run(self, workload, on_marker=None):
        from hv.spec import RunOptions

        self.count += 1
        name = f"{self.name_prefix}-{self.count}"
        self.names.append(name)
        opts = RunOptions(image=self.image_ref, args=workload[1:], entrypoint=workload[0],
                          name=name, auto_remove=True, user="0", workdir="/",
                          memory=self.memory)
        t0 = time.monotonic()
        res = RunResult(Transcript(), t0)
        qpid: int | None = None
        old_handler = None
        splitter = LineSplitter()

        def on_created(created) -> None:
            nonlocal qpid, old_handler
            c = self.container = created.container
            for text in created.warnings:
                if text not in self.notes:
                    self.notes.append(text)
            self.memory_mib, self.accel = c.record.memory_mib, c.record.accel
            qpid = self.engine.vm_pid(c)
            old_handler = _reap_on_sigchld(qpid)

        def sample() -> None:
            if qpid is None:
                return
            kib = measure.rss_kib(qpid)
            res.host_kib = kib
            if kib is not None:
                res.host_detail = {f"qemu[{qpid}]": kib}

        def on_line(chunk) -> None:
            now = time.monotonic()
            if chunk.stream != 1:
                return
            for line in splitter.feed(chunk.data):
                mk = res.transcript.feed_line(line, now)
                if mk is None:
                    continue
                if on_marker:
                    on_marker(mk)
                self._handle(res, mk, sample)

        try:
            # the whole `hv run --rm` (create, start, follow, remove), as the CLI runs it
            ran = self.engine.run(opts, on_created=on_created, on_output=on_line)
            if ran.interrupted:
                raise KeyboardInterrupt  # the runner removes what it started
            res.exit_code = ran.exit_code
            res.t_exit = time.monotonic()
            for line in splitter.flush():
                res.transcript.feed_line(line, res.t_exit)
            self.container = None
        except HvError as e:
            raise LegError(f"vm: {e.message}", hint=e.hint) from None
        finally:
            if old_handler is not None:
                signal.signal(signal.SIGCHLD, old_handler)
            self.cleanup()
        return res

    def cleanup(self) -> None:
        if self.container is not None:
            try:
                self.engine.stop_now(self.container)
            except HvError:
                pass
            self.container = None

    def sweep(self) -> list[str]:
        """Remove any VM this leg named that still exists (after an interruption)."""
        left = []
        for name in self.names:
            try:
                self.engine.remove(name, force=True)
                left.append(name)
            except HvError:
                pass
        return left
