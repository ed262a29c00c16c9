"""A container's life after create: the whole `run`, waiting, output, stop/start/kill/pause,
removal (with `--rm`'s rules).

A part of the facade (hv.engine.Engine mixes it in); `self` is the Engine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from hv.containers import Container
from hv.engine.results import Created, LogLine, RunResult, WaitResult
from hv.engine.store import _container_lock, _remove_container_dir
from hv.errors import (
    CommandNotExecutable,
    CommandNotFound,
    Conflict,
    ContainerNotFound,
    HvError,
    RuntimeFailure,
    UsageError,
)
from hv.paths import Paths
from hv.spec import RunOptions

POLL = 0.02
POLL_BRISK = 0.005


class Lifecycle:
    def run(self, opts: RunOptions, progress: Callable | None = None,
            on_created: Callable[[Created], None] | None = None,
            on_output: Callable[[LogLine], None] | None = None) -> RunResult:
        """Docker's `run` without a terminal: create and start, then for `-d` wait until the
        main process started, else follow its output (`on_output`) to its exit; `--rm`
        removes it, and a failed start leaves nothing. `-i` runs compose create + attach."""
        created = self.create(opts, progress)
        if on_created is not None:
            on_created(created)
        c = created.container
        try:
            if opts.detach:
                self.wait_started(c)
                return RunResult(c, None)
            code = self.follow(c, on_output or (lambda _line: None))
            self._container_event("die", c, exitCode=str(code))
        except KeyboardInterrupt:
            self.stop_now(c)
            return RunResult(c, 130, interrupted=True)
        except BaseException:
            self.finish_run(c)  # `--rm`: nothing stays behind
            raise
        self.finish_run(c)
        return RunResult(c, code)

    def wait_started(self, c: Container, timeout: float | None = None) -> None:
        """Block until the main process runs (Docker's `run -d` returns then) or failed."""
        from hv.guest.logstream import read_status

        timeout = self.config.start_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        status_path = self.paths.container_status(c.id)
        while True:
            if _settled(read_status(status_path)):
                return
            if not self._alive(c):
                if _settled(read_status(status_path)):  # what it wrote as it went
                    return
                raise _not_ready(self.paths, c, "the VM powered off before the container started")
            if time.monotonic() > deadline:
                raise _not_ready(self.paths, c,
                                 f"the container did not start within {timeout:.0f} s")
            time.sleep(POLL)

    def follow(self, c: Container, on_line: Callable[[LogLine], None], offset: int = 0) -> int:
        """Stream the main process's output from `offset` of its log (0: the first boot's
        start) until it exits; its exit code.

        Raises the exec error (126/127) when the command could not be started.
        """
        from hv.guest.logstream import LogDecoder, read_status

        log_path = self.paths.container_log(c.id)
        status_path = self.paths.container_status(c.id)
        from hv.runtime.domains import qemu_exit_fd

        decoder = LogDecoder()
        exit_fd = qemu_exit_fd(self.libvirt, c.domain)  # power-off wakes us, output is polled
        # short commands end within the first seconds: poll briskly there, gently after
        brisk_until = time.monotonic() + 2.0
        # a virtiofsd that dies under the run would leave it waiting forever: looked at
        # once a second (a few file reads), see _stop_broken
        shares_at = time.monotonic() + 1.0 if _virtiofs(c) else None
        try:
            with _container_lock(self.paths, c.id, exclusive=False):
                while True:
                    offset = _pump(log_path, offset, decoder, on_line)
                    if shares_at is not None and time.monotonic() > shares_at:
                        shares_at = time.monotonic() + 1.0
                        self._watch_shares(c)
                    st = read_status(status_path)
                    if st.exit_code is not None and exit_fd is not None and _discarded_at_exit(c):
                        # the guest wrote its output, unmounted and synced the disk, then
                        # `exited`; all it has left is powering off a VM --rm throws away
                        with contextlib.suppress(OSError):
                            signal.pidfd_send_signal(exit_fd, signal.SIGKILL)
                    if st.exit_code is not None or not self._alive(c):
                        _wait_gone(self, c, exit_fd)
                        _pump(log_path, offset, decoder, on_line)
                        st = read_status(status_path)
                        break
                    _wait_exit(exit_fd, POLL_BRISK if time.monotonic() < brisk_until else POLL)
        finally:
            if exit_fd is not None:
                os.close(exit_fd)
        if st.error is not None and st.started_ns is not None:
            raise _stopped(c, st.error)  # it ran; hv stopped it (see _stop_broken)
        if st.error is not None:
            raise _exec_error(st.error_code, st.error)
        return 137 if st.exit_code is None else st.exit_code

    def _watch_shares(self, c: Container) -> None:
        """Stop `c` if one of its virtiofsd died (the domain's info read once per boot)."""
        from hv.runtime.domains import dead_shares, list_domains

        info = self._infos.get(c.id)
        if info is None or not info.dom_id:
            info = next((i for i in list_domains(self.libvirt)
                         if i.name == c.domain and i.active), None)
            if info is None:
                return
            self._infos[c.id] = info
        dead = dead_shares(self.libvirt, info)
        if dead:
            self._stop_broken(c, info, dead)

    def logs(self, ref: str, follow: bool = False, tail: int | None = None,
             since: float | None = None, until: float | None = None) -> Iterator[LogLine]:
        """Lines of the container's output (Docker splits and counts by line); `since`,
        `until`: epoch seconds (a line's time is when its first byte was written)."""
        lines = self._log_lines(ref, follow, tail)
        if since is None and until is None:
            yield from lines
            return
        lo = None if since is None else int(since * 1e9)
        hi = None if until is None else int(until * 1e9)
        for line in lines:
            if hi is not None and line.ts_ns > hi:
                return
            if lo is None or line.ts_ns >= lo:
                yield line

    def _log_lines(self, ref: str, follow: bool, tail: int | None) -> Iterator[LogLine]:
        from hv.guest.logstream import LogDecoder

        c = self.container(ref)
        log_path = self.paths.container_log(c.id)
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
        with _container_lock(self.paths, c.id, exclusive=False):
            while True:
                alive = self._alive(c)
                offset = _pump(log_path, offset, decoder, splitter.feed)
                yield from splitter.lines
                splitter.lines = []
                if not alive:
                    yield from splitter.flush(final=True)
                    return
                time.sleep(0.05)

    def wait(self, ref: str, condition: str = "not-running") -> WaitResult:
        """Docker's wait: `not-running` (now, if it is stopped), `next-exit` (the next exit,
        even of a stopped container once it starts again), `removed` (its exit, once the
        container is gone too: `--rm`, `rm`)."""
        if condition not in ("not-running", "next-exit", "removed"):
            raise UsageError(f"invalid condition: {condition!r}",
                             hint="use not-running, next-exit or removed")
        c = self.container(ref)
        if condition == "next-exit" and not c.active:
            c = self._await_start(c)
        code = None
        # the lock until the code is read: a transient (`--rm`) domain leaves libvirt's
        # listing as its QEMU exits, and any listing's garbage collection would then remove
        # the folder (and its status) of a container nobody holds (10 clients at once: the
        # code read as 0)
        with _container_lock(self.paths, c.id, exclusive=False):
            if c.active:
                code = self._await_exit(c)
                self._container_event("die", c, exitCode=str(code))
            st = replace(c, active=False, paused=False).state()
        code = st.exit_code if code is None else code
        if condition == "removed":
            while self.paths.container_dir(c.id).exists():
                time.sleep(0.05)
        return WaitResult(code, st.error or None)

    def _await_exit(self, c: Container) -> int:
        """Block until the running `c` powered off; its exit code. Woken by QEMU's pidfd;
        an `--rm` container (nothing of it outlives its main process) is taken down as
        soon as the guest reported the exit, as a foreground run's `follow` does, and its
        zombie is not waited for (no libvirt call follows: its transient domain is gone)."""
        from hv.guest.logstream import read_status
        from hv.runtime.domains import qemu_exit_fd

        status = self.paths.container_status(c.id)
        exit_fd = qemu_exit_fd(self.libvirt, c.domain)
        discard = _discarded_at_exit(c) and exit_fd is not None
        brisk_until = time.monotonic() + 2.0  # short commands: look often at first
        try:
            while self._alive(c):
                if discard and read_status(status).exit_code is not None:
                    with contextlib.suppress(OSError):
                        signal.pidfd_send_signal(exit_fd, signal.SIGKILL)
                _wait_exit(exit_fd, POLL_BRISK if discard and time.monotonic() < brisk_until
                           else 0.05)
        finally:
            if exit_fd is not None:
                os.close(exit_fd)
        if discard:
            return replace(c, active=False, paused=False).state().exit_code
        return self.exit_code(c)

    def _await_start(self, c: Container) -> Container:
        """Block until a stopped container runs again (`wait --condition next-exit`)."""
        started = self.paths.container_started(c.id)
        before = started.stat().st_mtime_ns if started.exists() else 0
        while True:
            try:
                if started.stat().st_mtime_ns != before:
                    now = self.container(c.id)
                    if now.active:
                        return now
            except FileNotFoundError:
                if not self.paths.container_dir(c.id).exists():
                    raise ContainerNotFound(f"No such container: {c.id}") from None
            time.sleep(0.1)

    def stop(self, ref: str, timeout: int | None = None) -> Container:
        """The container's stop signal (SIGTERM unless `--stop-signal`), power-off after
        `timeout` s (None: its `--stop-timeout`, else 10; -1: wait for ever)."""
        from hv import guestops, restart
        from hv.guest import mux

        c = self.container(ref)
        if timeout is None:
            timeout = 10 if c.record.stop_timeout is None else c.record.stop_timeout
        restart.mark_user_stop(self.paths, c.id)
        was_running = c.active
        try:
            guestops.stop(self.ctx, c, timeout, c.record.stop_signal)
        finally:
            mux.stop(self.config, c.id)  # it exits with the guest anyway; never outlive a stop
        self._drop_taps(c)
        if was_running:
            self._container_event("kill", c, signal="15")
            self._container_event("die", c, exitCode=str(self.exit_code(c)))
            self._container_event("stop", c)
        return c

    def start(self, ref: str, watch: bool = True, wait_attach: bool = False) -> Container:
        """Boot a stopped container (a running one is returned as it is). `wait_attach`:
        its main process waits for the first attach (`start -ai`, as `run -i`), so a short
        command's first output is not gone before the client is there."""
        from hv import restart
        from hv.runtime.domains import wait_reaped

        c = self.container(ref)
        if c.active:
            return c
        if self._start_reserved(c, wait_attach):  # `create` took a pooled VM: warm
            restart.clear_user_stop(self.paths, c.id)
            self._container_event("start", c)
            if watch and c.record.restart != "no":
                restart.spawn_watcher(c.id, self.config.child_environ())
            return replace(c, active=True, paused=False)
        # libvirt must see the last QEMU gone before it starts another
        wait_reaped(self.libvirt, c.domain)
        # a multiplexer of the last boot serves a transport that died with that VM: an
        # attach right after this start (`start -ai`) reached it and failed ("SSH session
        # not active") whenever it had not noticed yet
        from hv.guest import mux

        mux.stop(self.config, c.id)
        restart.clear_user_stop(self.paths, c.id)
        xml = self._network_xml(c) if c.record.networks else None
        # a Created container's first boot copies image content into its empty volumes
        first = not self.paths.container_started(c.id).exists()
        self._write_seed(c.record, wait_attach=wait_attach, first_boot=first)
        self._boot(c.record, xml=xml)
        self._container_event("start", c)
        if watch and c.record.restart != "no":
            restart.spawn_watcher(c.id, self.config.child_environ())
        return replace(c, active=True, paused=False)

    def start_follow(self, ref: str, on_output: Callable[[LogLine], None]) -> RunResult:
        """`start -a` without stdin on a stopped container: boot it and follow this boot's
        output (not the earlier runs' in the same log) to its exit, as a foreground `run`
        does; its exit code (`--rm` removes it)."""
        c = self.container(ref)
        try:
            offset = self.paths.container_log(c.id).stat().st_size
        except FileNotFoundError:
            offset = 0
        c = self.start(ref)
        try:
            code = self.follow(c, on_output, offset=offset)
            self._container_event("die", c, exitCode=str(code))
        except KeyboardInterrupt:
            self.stop_now(c)
            return RunResult(c, 130, interrupted=True)
        self.finish_run(c)
        return RunResult(c, code)

    def rename(self, ref: str, new_name: str) -> Container:
        """Docker's `rename`, running or not: the container's name changes, its libvirt
        domain keeps the first one (libvirt renames only a stopped domain; the name is
        hv's, in the container's folder). Peers on its networks resolve the new name at
        once; its hostname stays (Docker's too)."""
        from hv.network import ops
        from hv.spec import check_name

        c = self.container(ref)
        if not new_name.strip().lstrip("/"):
            raise UsageError("Neither old nor new names may be empty",
                             hint="hv rename CONTAINER NEW_NAME", exit_code=1)
        new = check_name(new_name)
        if new == c.name:
            raise UsageError("Renaming a container with the same name as its current name",
                             hint="give another name", exit_code=1)
        import fcntl

        # two renames to one name: one wins (a create's own check does not take this lock)
        with open(self.paths.state_root() / ".names.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            other = next((o for o in self._list(check=False) if o.name == new), None)
            if other is not None:
                raise Conflict(
                    f'Conflict. The container name "/{new}" is already in use by container '
                    f'"{other.id}". You have to remove (or rename) that container to be able '
                    "to reuse that name.", hint="choose another name", exit_code=1)
            target = self.paths.container_name(c.id)
            tmp = target.with_name(".name.tmp")
            tmp.write_text(new + "\n")
            os.replace(tmp, target)
        root = self.paths.state_root()
        if c.record.networks:
            with contextlib.suppress(HvError, OSError):
                ops.rename(root, c.id, new)
                self._push_hosts(ops.peers(root, c.id))
        renamed = replace(c, record=replace(c.record, name=new))
        self._container_event("rename", renamed, oldName="/" + c.name)
        return renamed

    def restart(self, ref: str, timeout: int | None = None) -> Container:
        self.stop(ref, timeout)
        c = self.start(ref)
        self._container_event("restart", c)
        return c

    def kill(self, ref: str, signal: str = "KILL") -> Container:
        from hv import guestops, restart

        signum = guestops.parse_signal(signal)
        c = self.container(ref)
        if c.active:
            restart.mark_user_stop(self.paths, c.id)
        guestops.kill(self.ctx, c, signum)
        self._container_event("kill", c, signal=str(signum))
        if signum == 9:  # SIGKILL: the guest is down; other signals may leave it running
            from hv.guest import mux

            mux.stop(self.config, c.id)
            self._container_event("die", c, exitCode="137")
            self._drop_taps(c)
        return c

    def pause(self, ref: str, paused: bool = True) -> Container:
        from hv import guestops

        c = self.container(ref)
        guestops.pause(self.ctx, c, paused)
        self._container_event("pause" if paused else "unpause", c)
        return c

    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> str:
        """`rm` (`-v`: and the container's anonymous volumes no other container uses)."""
        c = self.container(ref)
        if c.active and not force:
            raise Conflict(
                f'cannot remove container "/{c.name}": container is running: stop the '
                "container before removing or force remove",
                hint=f"use 'hv rm -f {c.name}'",
            )
        self._discard(c, volumes=volumes)
        return ref

    def _discard(self, c: Container, volumes: bool = False) -> None:
        from hv import restart
        from hv.guest import mux
        from hv.runtime.domains import destroy

        restart.mark_user_stop(self.paths, c.id)
        destroy(self.libvirt, c.domain, undefine=True)
        mux.stop(self.config, c.id)
        self._leave_networks(c)
        self._container_event("destroy", c)
        # `--rm` takes its anonymous volumes along, as Docker's does
        _remove_container_dir(self.paths, self.volumes, c.id,
                              anonymous_volumes=volumes or c.record.auto_remove)

    def stop_now(self, c: Container) -> None:
        """Ctrl-C on a foreground run: power the VM off now (and `--rm` removes it)."""
        from hv.guest import mux
        from hv.runtime.domains import destroy

        destroy(self.libvirt, c.domain, undefine=c.record.auto_remove)
        mux.stop(self.config, c.id)
        if c.record.auto_remove:
            undo = self._made_by_failed_run(c)
            self._leave_networks(c)
            _remove_container_dir(self.paths, self.volumes, c.id, anonymous_volumes=True)
            if undo is not None:
                undo.undo()

    def container_running(self, c: Container) -> bool:
        return self._alive(c)

    def exit_code(self, c: Container) -> int:
        """After the guest powered off: the main process's code (137 when it was killed)."""
        _wait_gone(self, c)
        return replace(c, active=False, paused=False).state().exit_code

    def finish_run(self, c: Container) -> None:
        """After a foreground run ended: `--rm` removes the container.

        A transient domain whose QEMU is gone needs no libvirt call (~30 ms on every
        `run --rm`): libvirt drops it at its next connection, and hv's listing already
        treats it as gone. With volumes the call stays, to end their virtiofsd at once.
        """
        if not c.record.auto_remove:
            self._drop_taps(c)  # the VM is gone: its taps come again at its next start
            return
        undo = self._made_by_failed_run(c)
        if c.record.volumes or self._alive(c):
            self._discard(c)
        else:
            self._leave_networks(c)
            _remove_container_dir(self.paths, self.volumes, c.id, anonymous_volumes=True)
            self._container_event("destroy", c)
        if undo is not None:
            undo.undo()  # after the container is gone: its mounts no longer use them

    def _made_by_failed_run(self, c: Container):
        """What this process's `run --rm` of `c` made (volumes, `-v` folders), when its main
        process never started (a bad user, 126/127, a failed mount, the VM died first):
        such a run leaves nothing behind, as README says. Never what existed before it
        (only what `volumes.attach` made), never a volume another container took up since,
        never a folder that is no longer empty. A run whose container stays (no `--rm`)
        keeps them: they are that container's, as with Docker."""
        from hv.guest.logstream import read_status

        made = self._made.pop(c.id, None)
        if made is None or read_status(self.paths.container_status(c.id)).started_ns is not None:
            return None
        return made


def _settled(st) -> bool:
    """The main process started or exited (True), or has not yet (False); the exec error
    raised when it could not be started."""
    if st.started_ns is not None:
        return True
    if st.error is not None:
        raise _exec_error(st.error_code, st.error)
    return st.exit_code is not None


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


def _discarded_at_exit(c: Container) -> bool:
    """Nothing of this container outlives its main process: `--rm`, no volumes (their
    virtiofsd and folders are ended by the guest's clean power-off and the destroy)."""
    return c.record.auto_remove and not c.record.volumes


def _wait_exit(exit_fd: int | None, timeout: float) -> None:
    """Sleep `timeout`, or less when the QEMU behind `exit_fd` (a pidfd) exits."""
    if exit_fd is None:
        time.sleep(timeout)
    else:
        import select

        select.select([exit_fd], [], [], timeout)


def _wait_gone(engine: Lifecycle, c: Container, exit_fd: int | None = None,
               timeout: float = 10.0) -> None:
    from hv.runtime.connection import reap_children
    from hv.runtime.domains import wait_reaped

    deadline = time.monotonic() + timeout
    while engine._alive(c) and time.monotonic() < deadline:
        _wait_exit(exit_fd, POLL)
    if exit_fd is not None:
        # a killed QEMU stops counting as alive before its threads are gone (~15 ms of
        # tearing down its memory); the pidfd says when it can be reaped
        _wait_exit(exit_fd, max(0.0, deadline - time.monotonic()))
    reap_children()
    # a QEMU we adopted may be a zombie whose last threads are still exiting (seen with a
    # vhost-user virtiofs device): wait_reaped reaps it once they are gone
    wait_reaped(engine.libvirt, c.domain)


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


def _virtiofs(c: Container) -> bool:
    return any(v.get("transport") == "virtiofs" for v in c.record.volumes)


def _stopped(c: Container, why: str) -> HvError:
    """A container hv stopped while it ran (its `error` line came after `started`)."""
    again = "run it again" if c.record.auto_remove else f"start it again with 'hv start {c.name}'"
    return RuntimeFailure(f"container {c.name} {why}", exit_code=137,
                          hint=f"{again}; the files in its volumes and bind folders are kept")


def _exec_error(code: int | None, message: str) -> HvError:
    if code == 127:
        return CommandNotFound(message)
    if code == 126:
        return CommandNotExecutable(message)
    return HvError(message, exit_code=code or 125,
                   hint="check the image's user, workdir and command ('hv inspect IMAGE')")


def _not_ready(paths: Paths, c: Container, what: str) -> HvError:
    return RuntimeFailure(
        f"{what}: {c.name}",
        hint=f"read the guest console log: {paths.container_console(c.id)}",
    )
