"""The container table: listing and look-up (from libvirt's files), a running container
checked as it is (a dead virtiofsd stops it), garbage collection, the per-container locks.

A part of the facade (hv.engine.Engine mixes it in); `self` is the Engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import replace

from hv.containers import Container, Record
from hv.errors import (
    ContainerNotFound,
    UsageError,
)
from hv.paths import Paths


class ContainerStore:
    def containers(self, all: bool = False) -> list[Container]:
        """Every container (`all`) or the running ones, as they are now: a VM that QEMU
        paused by itself shows as paused, and one that lost a shared folder for good is
        stopped first (see `_stop_broken`)."""
        found = self._list(check=True)
        return found if all else [c for c in found if c.active]

    def _list(self, check: bool) -> list[Container]:
        """The container table from libvirt's files; `check`: ask each running QEMU for its
        run state and check its virtiofsd processes (~1 ms a container; a `run`'s name
        check and a look-up by name do without, a look-up checks the one it found)."""
        from hv.runtime.domains import list_domains, probe_run_states, running

        embedded = self.libvirt.embedded
        infos = list_domains(self.libvirt)
        if check:
            probe_run_states(infos)
        found = []
        for info in infos:
            try:
                record = Record.from_dict(info.record)
            except TypeError:
                continue
            record.domain = info.name  # what libvirt calls it, whatever the record says
            with contextlib.suppress(OSError):  # `rename`'s
                record.name = self.paths.container_name(record.id).read_text().strip() \
                    or record.name
            active = info.active and (not embedded or running(self.libvirt, info.name))
            c = Container(record, active, info.paused, paths=self.paths)
            self._infos[record.id] = info
            found.append(self._checked(c, info) if check else c)
        self._collect_garbage({c.id for c in found})
        found.sort(key=lambda c: c.record.created, reverse=True)
        return found

    def container(self, ref: str) -> Container:
        """By full id, unique id prefix, or name (with or without Docker's leading '/')."""
        ref = ref.strip()
        if not ref:
            raise ContainerNotFound("No such container: ")
        cs = self._list(check=False)
        name = ref.lstrip("/")
        for c in cs:
            if c.id == ref or c.name == name:
                return self._check_one(c)
        matches = [c for c in cs if c.id.startswith(ref.lower())]
        if len(matches) == 1:
            return self._check_one(matches[0])
        if len(matches) > 1:
            raise UsageError(f"multiple IDs found with provided prefix: {ref}",
                             hint="give more characters of the id")
        raise ContainerNotFound(f"No such container: {ref}")

    def _check_one(self, c: Container) -> Container:
        from hv.runtime.domains import probe_run_states

        info = self._infos.get(c.id)
        if info is None or not c.active:
            return c
        probe_run_states([info])
        return self._checked(replace(c, paused=info.paused), info)

    def _checked(self, c: Container, info) -> Container:
        """`c` as it is: a running container whose virtiofsd died is stopped here."""
        from hv.runtime.domains import dead_shares

        if info.paused and info.reason:
            self._paused_why[c.id] = info.reason
        if not c.active:
            return c
        dead = dead_shares(self.libvirt, info)
        return self._stop_broken(c, info, dead) if dead else c

    def _stop_broken(self, c: Container, info, dead_tags: list[str]) -> Container:
        """A running container whose virtiofsd died has failed; hv stops it.

        The decision: QEMU 7.2's vhost-user-fs cannot reconnect to a new virtiofsd, so
        every access the guest makes to that share waits forever, inside the guest's
        kernel, where no signal from the container ends it (`hv exec c ls /data` hung, and
        `ps` said Up). The container has lost part of itself for good, as one whose
        runtime died under Docker: it is reported as exited, not left looking healthy.
        The first hv command that notices (any listing or look-up, a foreground run's
        wait, the exec multiplexer's watch) kills the VM, records exit code 137
        with the reason as the container's error (`inspect`'s State.Error), and what the
        user asked for fails with that reason and the hint to start it again; a restart
        policy restarts it as after any other death, and `hv start` brings it back whole
        (libvirt starts new virtiofsd). Files in volumes and bind folders are untouched.
        A stop already under way (`stop`, `kill`, `rm`: their marker; or the guest's own
        power-off: its `exited` line) is left alone.
        """
        from hv.guest import mux
        from hv.guest.logstream import read_status
        from hv.runtime.domains import dead_shares, qemu_pid, running

        status = self.paths.container_status(c.id)
        for _ in range(2):  # a virtiofsd ends as its QEMU does: give a power-off a moment
            up = running(self.libvirt, c.domain)
            if self.paths.container_dir(c.id).joinpath("user-stopped").exists() \
                    or read_status(status).exit_code is not None or not up:
                return c if up else replace(c, active=False, paused=False)
            dead_tags = dead_shares(self.libvirt, info)
            if not dead_tags:
                return c
            time.sleep(0.2)
        targets = [v["target"] for v in c.record.volumes if v.get("tag") in dead_tags]
        why = (f"stopped by hv: the virtiofsd serving {', '.join(targets) or 'a shared folder'}"
               " exited, and a running VM cannot get a share back")
        pid = qemu_pid(self.libvirt, c.domain)
        if pid is None:
            return replace(c, active=False, paused=False)
        # QEMU is killed as `kill -9` would (libvirt notes it at its next connection; its
        # reconnect to this QEMU fails anyway, after ~2 s). Stopped first, so the reason is
        # in the status file before anyone sees the VM gone, and the guest cannot write
        # over it (QEMU writes that file at its own offset).
        try:
            os.kill(pid, signal.SIGSTOP)
        except OSError:
            return replace(c, active=False, paused=False)
        st = read_status(status)
        if st.exit_code is not None and not (st.error and st.started_ns is not None):
            os.kill(pid, signal.SIGCONT)  # the guest was exiting after all
            return c
        if st.exit_code is None:  # (else another hv command is at it already)
            with contextlib.suppress(OSError), open(status, "a") as f:
                f.write(f"error 137 {why}\nexited 137 {time.time_ns()}\n")
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while running(self.libvirt, c.domain) and time.monotonic() < deadline:
            time.sleep(0.01)  # (reaped by init later; `start` waits for that itself)
        mux.stop(self.config, c.id)
        return replace(c, active=False, paused=False)

    def _collect_garbage(self, live_ids: set[str]) -> None:
        """Remove folders of containers whose domain is gone (an exited `--rm -d`)."""
        root = self.paths.containers_dir()
        if not root.is_dir():
            return
        for d in root.iterdir():
            if d.name in live_ids:
                continue
            if d.name.startswith("."):  # being created (see _new_container_dir)
                with contextlib.suppress(OSError):
                    if time.time() - d.stat().st_mtime > 3600:
                        shutil.rmtree(d, ignore_errors=True)  # left by a crash
                continue
            with _container_lock(self.paths, d.name, exclusive=True, wait=False) as got:
                if got:
                    _remove_container_dir(self.paths, self.volumes, d.name, anonymous_volumes=True)

    def _alive(self, c: Container) -> bool:
        from hv.runtime.domains import is_active, qemu_pid

        if self.libvirt.embedded:
            return qemu_pid(self.libvirt, c.domain) is not None
        return bool(is_active(self.libvirt, c.domain))


def _new_container_dir(paths: Paths, cid: str, embedded: bool) -> int:
    """Make the container's folder with its lock already held (shared); the lock's fd.

    The folder is made under a dot-name, locked, then renamed into place: garbage
    collection (any concurrent `ps`) skips dot-names and cannot take the lock of a folder
    whose domain does not exist yet.
    """
    # disks, output and keys are the user's alone, as Docker's containers folder is root's;
    # a libvirtd runs QEMU as its own user, which must still reach the files by path
    mode = 0o700 if embedded else 0o711
    root = paths.containers_dir()
    root.mkdir(parents=True, exist_ok=True)
    if root.stat().st_mode & 0o777 != mode:
        root.chmod(mode)  # made by an older hv with the umask's mode
    cdir = paths.container_dir(cid)
    staging = cdir.with_name("." + cid)
    staging.mkdir(mode=mode)
    fd = os.open(staging / paths.container_lock(cid).name,
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    staging.rename(cdir)
    return fd


def _adopt_container_dir(paths: Paths, cid: str) -> int:
    """A claimed pooled VM's folder (containers/.ID, see hv.engine.pool) put in place as
    `_new_container_dir` puts a new one: locked (shared) first, then renamed."""
    cdir = paths.container_dir(cid)
    staging = cdir.with_name("." + cid)
    fd = os.open(staging / paths.container_lock(cid).name,
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    staging.rename(cdir)
    return fd


def _remove_container_dir(paths: Paths, volumes, cid: str, anonymous_volumes: bool) -> None:
    anonymous = volumes.anonymous_of(cid) if anonymous_volumes else []
    shutil.rmtree(paths.container_dir(cid), ignore_errors=True)
    if anonymous:
        volumes.remove_anonymous(anonymous)


@contextlib.contextmanager
def _container_lock(paths: Paths, cid: str, exclusive: bool, wait: bool = True
                    ) -> Iterator[bool]:
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
