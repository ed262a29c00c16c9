"""`hv compare IMAGE`: the same workload as a process, a namespace container and an hv VM.

Order of a comparison (so that no phase measures another's leftovers):
1. one untimed warm-up lifecycle run per column (page cache, libvirt's caches);
2. REPEATS lifecycle runs per column (launch -> first marker -> exit);
3. REPEATS full runs per column (isolation facts, memory at `idle`, compute, disk I/O);
   the page cache drops of phase 3 come after every start was measured;
4. the Communication row per column (hv/compare/comm.py): two processes on a pipe, two
   namespaces on a veth pair, two VMs on an hv network; REPEATS samples each.
Nothing prints here: progress goes to a callback; the CLI renders the returned dict.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hv.compare import measure, report
from hv.compare import rootfs as rfs
from hv.compare import workload as wl
from hv.compare.comm import Comm, CommResult
from hv.compare.legs import ContainerLeg, Leg, LegError, ProcessLeg, RunResult, VmLeg
from hv.errors import HvError, Interrupted, UsageError

LEGS = ("process", "container", "vm")


@dataclass
class Options:
    image: str
    repeats: int = 3
    io_mb: int = 32
    compute_mb: int = 128
    only: tuple[str, ...] = LEGS
    runtime: str | None = None
    memory: str | None = None  # the VM's RAM (hv run -m)
    warmup: bool = True
    wait_s: float = 1.0  # how long the VM's workload waits for the host at idle/drop


Progress = Callable[[int, int, str], None]  # (done, total, what is running now)


def parse_only(text: str | None) -> tuple[str, ...]:
    """`--only process,vm` -> ('process', 'vm') in the table's order."""
    if not text:
        return LEGS
    asked = {p.strip().lower() for p in text.split(",") if p.strip()}
    aliases = {"proc": "process", "ctr": "container", "namespace": "container", "hv": "vm"}
    asked = {aliases.get(a, a) for a in asked}
    bad = sorted(asked - set(LEGS))
    if bad or not asked:
        raise UsageError(f"--only: unknown column {', '.join(bad) or text!r}",
                         hint="use a comma-separated list of process, container, vm")
    return tuple(leg for leg in LEGS if leg in asked)


def validate(opts: Options) -> None:
    if opts.repeats < 1:
        raise UsageError("-n/--repeats must be at least 1", hint="e.g. -n 3")
    if opts.io_mb < 1 or opts.compute_mb < 1:
        raise UsageError("--size and --compute-size must be at least 1 MB", hint="e.g. --size 32")
    for leg in opts.only:
        if leg not in LEGS:
            raise UsageError(f"unknown column {leg}")


class _Marker:
    """A host process whose PID the workload looks for in its /proc."""

    def __init__(self) -> None:
        self.token = f"hvcmp-marker-{secrets.token_hex(6)}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import time\nwhile True: time.sleep(3600)", self.token],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def compare(engine, opts: Options, progress: Progress | None = None) -> dict:
    """Run the comparison; the result dict (report.SCHEMA). Raises Interrupted on Ctrl-C after
    removing everything it started."""
    validate(opts)
    from hv.errors import ImageNotFound
    from hv.images.layers import extract

    try:
        image = engine.images.get(opts.image)
    except ImageNotFound:
        image = engine.images.pull(opts.image)
    accel = engine.accel()
    run_id = secrets.token_hex(4)
    tmp_root = engine.paths.tmp_dir()
    tmp_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="compare-", dir=tmp_root))
    legs: dict[str, Leg] = {}
    errors: dict[str, str] = {}
    notes: dict[str, list[str]] = {leg: [] for leg in LEGS}
    marker: _Marker | None = None
    comms: list[Comm] = []
    try:
        root = work / "rootfs"
        root.mkdir(mode=0o755)
        extract([engine.images.blobs.path(d) for d in image.layers], root,
                max_image_size=engine.config.max_image_size)
        env = rfs.image_env(image.run_config)
        shell_path = rfs.find_shell(root)
        injected = False
        if shell_path:
            shell = [shell_path]
            missing = rfs.missing_applets(root, env)
            if missing:
                for leg in LEGS:
                    notes[leg].append(f"the image has no {', '.join(missing)}: the "
                                      "measurements that need it are missing")
        else:
            bb = rfs.static_busybox()
            if bb is None:
                raise HvError(f"the image {opts.image} has no /bin/sh and the host has no "
                              "static busybox to run the workload with",
                              hint="install busybox-static (make setup does)")
            shell = rfs.inject_busybox(root, bb)
            env = dict(env, PATH=f"{rfs.INJECT_DIR}/bin:{env['PATH']}")
            injected = True
            for leg in ("process", "container"):
                notes[leg].append("the image has no /bin/sh: the workload ran with a static "
                                  f"busybox injected at {rfs.INJECT_DIR}/busybox into "
                                  "compare's own copy of the rootfs")

        marker = _Marker()
        for name in opts.only:
            try:
                legs[name] = _make_leg(engine, name, opts, root, work, env, run_id, injected)
                legs[name].timeout = engine.config.compare_timeout
            except LegError as e:
                errors[name] = _with_hint(e)

        total = len(legs) * ((1 if opts.warmup else 0) + 2 * opts.repeats + 1)
        done = 0

        def step(text: str) -> None:
            if progress:
                progress(done, total, text)

        life: dict[str, list[RunResult]] = {n: [] for n in legs}
        full: dict[str, list[RunResult]] = {n: [] for n in legs}
        kw = dict(marker_pid=marker.proc.pid, token=marker.token,
                  compute_mb=opts.compute_mb, io_mb=opts.io_mb, wait_s=opts.wait_s)

        def attempt(name: str, mode: str, label: str) -> RunResult | None:
            nonlocal done
            if name in errors:
                done += 1
                return None
            leg = legs[name]
            step(f"{name}: {label}")
            try:
                res = leg.run(wl.argv(shell, mode, sync=leg.sync, **kw),
                              lambda mk: step(f"{name}: {label} · {mk.key}"))
                if res.transcript.first("start") is None:
                    out = "; ".join(res.transcript.other[-3:]) or f"exit code {res.exit_code}"
                    raise LegError(f"{name}: the workload did not start: {out}")
            except LegError as e:
                errors[name] = _with_hint(e)
                res = None
            done += 1
            step(f"{name}: {label} done")
            return res

        if opts.warmup:
            for name in legs:
                attempt(name, "lifecycle", "warm-up")
        for i in range(opts.repeats):
            for name in legs:
                r = attempt(name, "lifecycle", f"start/exit {i + 1}/{opts.repeats}")
                if r:
                    life[name].append(r)
        for i in range(opts.repeats):
            for name in legs:
                r = attempt(name, "full", f"workload {i + 1}/{opts.repeats}")
                if r:
                    full[name].append(r)
        comm: dict[str, CommResult] = {}
        for name in legs:
            if name in errors:
                done += 1
                continue
            step(f"{name}: communication")
            try:
                pair = _make_comm(engine, name, opts, legs[name], root, env, shell, run_id)
            except LegError as e:
                comm[name] = CommResult(error=_with_hint(e))
            else:
                comms.append(pair)
                comm[name] = pair.run(opts.repeats, opts.io_mb)
            done += 1
            step(f"{name}: communication done")
        for name, leg in legs.items():
            notes[name].extend(n for n in leg.notes if n not in notes[name])
        result = report.build(
            opts=opts, image=image, accel=accel, host=measure.host_facts(), legs=legs,
            life=life, full=full, errors=errors, notes=notes, injected=injected,
            shell=shell, comm=comm)
        if progress:
            progress(total, total, "done")
        return result
    except KeyboardInterrupt:
        raise Interrupted("hv compare was interrupted; everything it started was removed") \
            from None
    finally:
        _cleanup(legs, marker, work, comms)


def _make_leg(engine, name: str, opts: Options, root: Path, work: Path, env: dict[str, str],
              run_id: str, injected: bool) -> Leg:
    if name == "process":
        return ProcessLeg(root, env)
    if name == "container":
        from hv.compare.legs import runtime_choice

        runtime, why = runtime_choice(opts.runtime, engine.config.oci_runtime)
        if runtime is None:
            raise LegError(f"no OCI runtime: {why}",
                           hint="install crun or runc (make setup does), or pass --runtime")
        return ContainerLeg(runtime, root, work / "bundle", env, f"hvcmp-{run_id}")
    if injected:
        raise LegError("the image has no /bin/sh, and an hv VM boots the "
                       "image's own disk unchanged, so there is nothing to run the workload "
                       "with (the other columns used an injected static busybox)")
    return VmLeg(engine, opts.image, f"hvcmp-{run_id}", opts.memory)


def _make_comm(engine, name: str, opts: Options, leg: Leg, root: Path, env: dict[str, str],
               shell: list[str], run_id: str) -> Comm:
    """The Communication row's pair for a column (LegError: why it cannot be measured)."""
    from hv.compare import comm

    gone = comm.missing(root, env, comm.PIPE_NEEDS if name == "process" else comm.NEEDS)
    if gone:
        raise LegError(f"the image has no {', '.join(gone)}")
    if name == "process":
        return comm.PipeComm(leg._argv, shell, leg.env, leg.timeout)
    if name == "container":
        chroot = ProcessLeg(root, env)  # the image's binaries, chroot'ed in each namespace
        return comm.VethComm(run_id, chroot._argv, shell, env, leg.timeout)
    return comm.VmComm(engine, opts.image, shell, run_id, leg.timeout)


def _cleanup(legs: dict[str, Leg], marker: _Marker | None, work: Path,
             comms: list[Comm] = ()) -> None:
    """Kill, delete, destroy; then remove the temporary rootfs. Runs even on a second Ctrl-C
    as far as Python lets it."""
    import signal

    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # finish the clean-up first
    try:
        for pair in comms:
            try:
                pair.cleanup()
            except Exception:  # noqa: BLE001 - clean as much as possible
                pass
        for leg in legs.values():
            try:
                leg.cleanup()
            except Exception:  # noqa: BLE001 - clean as much as possible
                pass
            if isinstance(leg, VmLeg):
                try:
                    leg.sweep()
                except Exception:  # noqa: BLE001
                    pass
        if marker is not None:
            marker.stop()
        # the process column's binds live in a private mount namespace that died with it;
        # never recurse into a tree with something mounted below it
        deadline = time.monotonic() + 5
        while rfs.has_mounts_below(work) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not rfs.has_mounts_below(work):
            shutil.rmtree(work, ignore_errors=True)
    finally:
        signal.signal(signal.SIGINT, old)


def _with_hint(e: HvError) -> str:
    default = type(e).hint
    return e.message if not e.hint or e.hint == default else f"{e.message} (hint: {e.hint})"
