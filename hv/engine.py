"""The one facade the CLI (and later an HTTP API) calls. It never prints.

`run` is create + start + (for the CLI) follow the output until exit. The pieces:
images (hv.images), the container record and state (hv.containers), the domain XML and
libvirt (hv.runtime), the seed ISO and the agent's protocol (hv.guest).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from hv import paths
from hv.containers import Container, Record
from hv.errors import (
    CommandNotExecutable,
    CommandNotFound,
    Conflict,
    ContainerNotFound,
    GuestAssetsMissing,
    HvError,
    ImageNotFound,
    Interrupted,
    RuntimeFailure,
    UsageError,
)
from hv.spec import RunOptions, check_hostname, check_name, parse_cpus, parse_memory, process_spec

DEFAULT_MEMORY_MIB = 512
START_TIMEOUT = float(os.environ.get("HV_START_TIMEOUT", "180"))
POLL = 0.02


@dataclass
class LogLine:
    stream: int  # 1 stdout, 2 stderr
    ts_ns: int
    data: bytes


class Engine:
    def __init__(self) -> None:
        self.notices: list[str] = []

    @cached_property
    def images(self):
        from hv.images.store import ImageStore

        return ImageStore(paths.images_root())

    # --- images -------------------------------------------------------------------------

    def image_users(self, image_id: str) -> list[str]:
        """Ids of the containers (any state) created from `image_id`."""
        return [c.id for c in self.containers(all=True) if c.record.image_id == image_id]

    def remove_image(self, ref: str, force: bool = False) -> list[tuple[str, str]]:
        return self.images.remove(ref, force=force, users=self.image_users)

    # --- listing and lookup --------------------------------------------------------------

    def containers(self, all: bool = False) -> list[Container]:
        from hv.runtime.domains import list_domains

        found = []
        for info in list_domains():
            try:
                from hv.containers import Record as _R

                record = _R.from_dict(info.record)
            except TypeError:
                continue
            found.append(Container(record, info.active))
        self._collect_garbage({c.id for c in found})
        found.sort(key=lambda c: c.record.created, reverse=True)
        return found if all else [c for c in found if c.active]

    def container(self, ref: str) -> Container:
        """By full id, unique id prefix, or name (with or without Docker's leading '/')."""
        ref = ref.strip()
        if not ref:
            raise ContainerNotFound("No such container: ")
        cs = self.containers(all=True)
        name = ref.lstrip("/")
        for c in cs:
            if c.id == ref or c.name == name:
                return c
        matches = [c for c in cs if c.id.startswith(ref.lower())]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UsageError(f"multiple IDs found with provided prefix: {ref}",
                             hint="give more characters of the id")
        raise ContainerNotFound(f"No such container: {ref}")

    def _collect_garbage(self, live_ids: set[str]) -> None:
        """Remove folders of containers whose domain is gone (an exited `--rm -d`)."""
        root = paths.containers_dir()
        if not root.is_dir():
            return
        for d in root.iterdir():
            if d.name in live_ids:
                continue
            with _container_lock(d.name, exclusive=True, wait=False) as got:
                if got:
                    shutil.rmtree(d, ignore_errors=True)

    # --- run -----------------------------------------------------------------------------

    def create(self, opts: RunOptions, progress: Callable | None = None) -> Container:
        """Validate, pull if needed, make the disk and seed, start the VM."""
        memory = parse_memory(opts.memory) if opts.memory else DEFAULT_MEMORY_MIB
        vcpus, cpus = parse_cpus(opts.cpus) if opts.cpus else (1, 0.0)
        name = check_name(opts.name) if opts.name else None
        hostname = check_hostname(opts.hostname) if opts.hostname else None
        image = self._image_for_run(opts.image, progress)
        proc = process_spec(image.run_config, opts)
        kernel, initrd, cmdline = _guest_assets()

        from hv import names
        from hv.runtime.accel import detect

        existing = self.containers(all=True)
        taken = {c.name for c in existing}
        if name is None:
            name = names.generate(taken)
        elif name in taken:
            other = next(c for c in existing if c.name == name)
            raise Conflict(
                f'The container name "/{name}" is already in use by container "{other.id}". '
                "You have to remove (or rename) that container to be able to reuse that name.",
                hint=f"remove it with 'hv rm -f {name}' or choose another --name",
            )
        if not opts.detach:
            _become_subreaper()
        accel = detect()
        if accel.name == "tcg":
            self._notice_once("accel", f"KVM is not usable here ({accel.reason}); "
                              "guests run under TCG software emulation, which is slower.")
        cid = secrets.token_hex(32)
        hostname = hostname or cid[:12]
        record = Record(
            id=cid, name=name, image=opts.image, image_id=image.id, created=time.time(),
            entrypoint=proc.entrypoint, cmd=proc.cmd, env=proc.env, workdir=proc.workdir,
            user=proc.user, hostname=hostname, memory_mib=memory, vcpus=vcpus,
            nano_cpus=int(cpus * 1e9), auto_remove=opts.auto_remove, accel=accel.name,
        )
        cdir = paths.container_dir(cid)
        cdir.mkdir(parents=True)
        try:
            with _container_lock(cid, exclusive=False):
                base = self.images.base_disk(image)
                record.base_disk = str(base)
                _make_overlay(base, paths.container_disk(cid))
                self._write_seed(record)
                xml = _domain_xml(record, accel, kernel, initrd, cmdline)
                paths.container_started(cid).write_text(f"{time.time():.9f}")
                from hv.runtime.domains import start

                start(xml, name, persistent=not opts.auto_remove)
        except BaseException:
            shutil.rmtree(cdir, ignore_errors=True)
            raise
        return Container(record, True)

    def _image_for_run(self, ref: str, progress: Callable | None):
        try:
            return self.images.get(ref)
        except ImageNotFound:
            pass
        from hv.images.reference import Reference

        parsed = Reference.parse(ref)
        if parsed.digest is None and all(c in "0123456789abcdef" for c in ref) and len(ref) >= 12:
            raise ImageNotFound(f"No such image: {ref}")
        self.notices.append(f"Unable to find image '{parsed.familiar()}' locally")
        return self.images.pull(ref, progress)

    def _write_seed(self, record: Record) -> None:
        from hv.guest.seed import GuestSpec, write_seed

        env = list(record.env)
        if not any(e.startswith("HOSTNAME=") for e in env):
            env.insert(1 if env and env[0].startswith("PATH=") else 0,
                       f"HOSTNAME={record.hostname}")
        write_seed(paths.container_seed(record.id), GuestSpec(
            container_id=record.id, argv=record.argv, env=env, workdir=record.workdir,
            user=record.user, hostname=record.hostname,
        ))

    def _notice_once(self, key: str, text: str) -> None:
        marker = paths.state_root() / f".notice-{key}"
        if marker.exists():
            return
        self.notices.append(text)
        with contextlib.suppress(OSError):
            marker.write_text(text + "\n")

    # --- waiting and output --------------------------------------------------------------

    def wait_started(self, c: Container, timeout: float = START_TIMEOUT) -> None:
        """Block until the main process runs (Docker's `run -d` returns then) or failed."""
        from hv.guest.logstream import read_status

        deadline = time.monotonic() + timeout
        status_path = paths.container_status(c.id)
        while True:
            st = read_status(status_path)
            if st.error is not None:
                raise _exec_error(st.error_code, st.error)
            if st.started_ns is not None or st.exit_code is not None:
                return
            if not self._alive(c):
                st = read_status(status_path)
                if st.error is not None:
                    raise _exec_error(st.error_code, st.error)
                if st.started_ns is not None or st.exit_code is not None:
                    return
                raise _not_ready(c, "the VM powered off before the container started")
            if time.monotonic() > deadline:
                raise _not_ready(c, f"the container did not start within {timeout:.0f} s")
            time.sleep(POLL)

    def _alive(self, c: Container) -> bool:
        from hv.runtime.connection import is_embedded
        from hv.runtime.domains import is_active, qemu_pid

        if is_embedded():
            return qemu_pid(c.name) is not None
        return bool(is_active(c.name))

    def follow(self, c: Container, on_line: Callable[[LogLine], None]) -> int:
        """Stream the main process's output from the start until it exits; its exit code.

        Raises the exec error (126/127) when the command could not be started.
        """
        from hv.guest.logstream import LogDecoder, read_status

        log_path = paths.container_log(c.id)
        status_path = paths.container_status(c.id)
        decoder = LogDecoder()
        offset = 0
        with _container_lock(c.id, exclusive=False):
            while True:
                offset = _pump(log_path, offset, decoder, on_line)
                st = read_status(status_path)
                if st.exit_code is not None or not self._alive(c):
                    _wait_gone(self, c)
                    _pump(log_path, offset, decoder, on_line)
                    st = read_status(status_path)
                    break
                time.sleep(POLL)
        if st.error is not None:
            raise _exec_error(st.error_code, st.error)
        return 137 if st.exit_code is None else st.exit_code

    def logs(self, ref: str, follow: bool = False, tail: int | None = None
             ) -> Iterator[LogLine]:
        """Lines of the container's output (Docker splits and counts by line)."""
        from hv.guest.logstream import LogDecoder

        c = self.container(ref)
        log_path = paths.container_log(c.id)
        decoder = LogDecoder()
        splitter = _LineSplitter()
        offset = _pump(log_path, 0, decoder, splitter.feed)
        lines = splitter.lines + splitter.flush(final=not (follow and c.active))
        splitter.lines = []
        if tail is not None and tail >= 0:
            lines = lines[-tail:] if tail else []
        yield from lines
        if not follow:
            return
        with _container_lock(c.id, exclusive=False):
            while True:
                alive = self._alive(c)
                offset = _pump(log_path, offset, decoder, splitter.feed)
                yield from splitter.lines
                splitter.lines = []
                if not alive:
                    yield from splitter.flush(final=True)
                    return
                time.sleep(0.05)

    def wait(self, ref: str) -> int:
        c = self.container(ref)
        with _container_lock(c.id, exclusive=False):
            while c.active and self._alive(c):
                time.sleep(0.05)
            return Container(c.record, False).state().exit_code

    # --- removal -------------------------------------------------------------------------

    def remove(self, ref: str, force: bool = False) -> str:
        c = self.container(ref)
        if c.active and not force:
            raise Conflict(
                f'cannot remove container "/{c.name}": container is running: stop the '
                "container before removing or force remove",
                hint=f"use 'hv rm -f {c.name}'",
            )
        self._discard(c)
        return ref

    def _discard(self, c: Container) -> None:
        from hv.runtime.domains import destroy

        destroy(c.name, undefine=True)
        shutil.rmtree(paths.container_dir(c.id), ignore_errors=True)

    def stop_now(self, c: Container) -> None:
        """Ctrl-C on a foreground run: power the VM off now (and `--rm` removes it)."""
        from hv.runtime.domains import destroy

        destroy(c.name, undefine=c.record.auto_remove)
        if c.record.auto_remove:
            shutil.rmtree(paths.container_dir(c.id), ignore_errors=True)

    def finish_run(self, c: Container) -> None:
        """After a foreground run ended: `--rm` removes the container."""
        if c.record.auto_remove:
            self._discard(c)


# --- helpers ------------------------------------------------------------------------------


def _guest_assets() -> tuple[Path, Path, str]:
    kernel, initrd = paths.guest_kernel(), paths.guest_initrd()
    if not kernel.exists() or not initrd.exists():
        raise GuestAssetsMissing(f"the guest kernel or initramfs is missing in {paths.guest_dir()}")
    try:
        cmdline = paths.guest_cmdline().read_text().strip()
    except OSError:
        cmdline = "console=ttyS0 quiet panic=-1"
    return kernel, initrd, cmdline


def _make_overlay(base: Path, disk: Path) -> None:
    try:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(disk)],
            check=True, capture_output=True, text=True,
        )
    except FileNotFoundError:
        raise RuntimeFailure("qemu-img is not installed", hint="run 'make setup'") from None
    except subprocess.CalledProcessError as e:
        raise RuntimeFailure(f"cannot create the container disk: {e.stderr.strip()}") from None


def _domain_xml(record: Record, accel, kernel: Path, initrd: Path, cmdline: str) -> str:
    from hv.runtime.domain import Disk, DomainSpec, FileChannel, FileSerial, UserNetwork

    cid = record.id
    uuid = f"{cid[:8]}-{cid[8:12]}-{cid[12:16]}-{cid[16:20]}-{cid[20:32]}"
    firmware = os.environ.get("HV_FIRMWARE", "")
    return DomainSpec(
        name=record.name,
        uuid=uuid,
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        memory_mib=record.memory_mib,
        vcpus=record.vcpus,
        domain_type=accel.domain_type,
        loader=Path(firmware) if firmware else None,
        disks=[
            Disk(paths.container_disk(cid), serial="hv-root", target="vda"),
            Disk(paths.container_seed(cid), serial="hv-seed", target="vdb", fmt="raw",
                 readonly=True),
        ],
        channels=[
            FileChannel("hv.log", paths.container_log(cid), append=True),
            FileChannel("hv.status", paths.container_status(cid)),
        ],
        serial=FileSerial(paths.container_console(cid)),
        network=UserNetwork(),
        metadata=record.to_dict(),
    ).to_xml()


@contextlib.contextmanager
def _container_lock(cid: str, exclusive: bool, wait: bool = True) -> Iterator[bool]:
    """Shared while a container is used; exclusive (non-blocking) to garbage-collect it."""
    path = paths.container_lock(cid)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield False
        return
    try:
        flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if not wait:
            flags |= fcntl.LOCK_NB
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _pump(path: Path, offset: int, decoder, on_line: Callable) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    if data:
        for rec in decoder.feed(data):
            on_line(LogLine(rec.stream, rec.ts_ns, rec.data))
    return offset + len(data)


def _wait_gone(engine: Engine, c: Container, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while engine._alive(c) and time.monotonic() < deadline:
        time.sleep(POLL)
    _reap_children()


def _become_subreaper() -> None:
    """Adopt the QEMU we start, so its exit is reaped at once.

    libvirt daemonizes QEMU; when init is slow to reap orphans (seen in sandboxes), the
    zombie makes libvirt's next clean-up wait over a second for it to die.
    """
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _reap_children() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class _LineSplitter:
    """Chunks of output -> lines, kept per stream (a partial line waits for its end)."""

    def __init__(self) -> None:
        self.lines: list[LogLine] = []
        self._partial: dict[int, LogLine] = {}

    def feed(self, chunk: LogLine) -> None:
        data = chunk.data
        while data:
            nl = data.find(b"\n")
            piece, data = (data, b"") if nl < 0 else (data[: nl + 1], data[nl + 1:])
            prev = self._partial.pop(chunk.stream, None)
            if prev is not None:
                piece = prev.data + piece
                ts = prev.ts_ns
            else:
                ts = chunk.ts_ns
            line = LogLine(chunk.stream, ts, piece)
            if piece.endswith(b"\n"):
                self.lines.append(line)
            else:
                self._partial[chunk.stream] = line

    def flush(self, final: bool) -> list[LogLine]:
        if not final:
            return []
        rest = sorted(self._partial.values(), key=lambda line: line.ts_ns)
        self._partial.clear()
        return rest


def _exec_error(code: int | None, message: str) -> HvError:
    if code == 127:
        return CommandNotFound(message)
    if code == 126:
        return CommandNotExecutable(message)
    return HvError(message, exit_code=code or 125,
                   hint="check the image's user, workdir and command ('hv inspect IMAGE')")


def _not_ready(c: Container, what: str) -> HvError:
    return RuntimeFailure(
        f"{what}: {c.name}",
        hint=f"read the guest console log: {paths.container_console(c.id)}",
    )


__all__ = ["Engine", "LogLine", "Interrupted"]
