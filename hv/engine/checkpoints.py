"""Checkpoints of running containers (Docker's experimental `checkpoint` verbs): the VM's
memory and device state saved by libvirt, with a copy of its disk taken while QEMU is
stopped, so memory and disk agree; `start --checkpoint` puts both back and the guest runs
on where it was (its main process is not started again). docs/checkpoints.md has the design.

A part of the facade (hv.engine.Engine mixes it in); `self` is the Engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from hv.containers import Container
from hv.errors import Conflict, HvError, NotFound, UsageError

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")  # Docker's checkpoint names
MARK = "checkpointed"  # in the container's folder: stopped by a checkpoint (exit 0)


@dataclass
class Checkpoint:
    name: str
    created: float
    state_bytes: int  # the saved memory and device state
    disk_bytes: int  # the container disk's copy

    @property
    def size(self) -> int:
        return self.state_bytes + self.disk_bytes


class Checkpoints:
    def checkpoint_create(self, ref: str, name: str, leave_running: bool = False) -> Checkpoint:
        """Save the running container `ref` as checkpoint `name`; it is stopped then (its
        state Exited (0)), or, `leave_running`, restored from that checkpoint at once."""
        from hv import restart
        from hv.guest import mux
        from hv.runtime import domains

        c = self.container(ref)
        _check_name(name)
        if not c.active:
            raise Conflict(f"Container {c.name} is not running",
                           hint=f"start it first ('hv start {c.name}')", exit_code=1)
        if c.record.auto_remove:
            raise Conflict(f"cannot checkpoint container {c.name}: it is removed when its VM "
                           "stops (--rm)", hint="run it without --rm to checkpoint it",
                           exit_code=1)
        if c.record.volumes:
            raise Conflict(f"cannot checkpoint container {c.name}: its volumes and bind "
                           "mounts (virtiofs) cannot be saved with a VM's state",
                           hint="checkpoints work for containers without -v/--mount; keep "
                           "data in the container's own disk or copy it out with 'hv cp'",
                           exit_code=1)
        if self.paths.container_dir(c.id).joinpath("warm").exists():
            # QEMU cannot save a VM booted for the pool (its block devices refuse to be
            # inactivated: "bdrv_inactivate_all() failed"); a restart boots it cold
            raise Conflict(f"cannot checkpoint container {c.name}: it runs in a VM booted "
                           "ahead for the warm pool", hint=f"restart it first ('hv restart "
                           f"{c.name}': it then boots cold), or run it with HV_POOL=0",
                           exit_code=1)
        top = self.paths.container_dir(c.id) / "checkpoints"
        final = top / name
        if final.exists():
            raise Conflict(f"checkpoint with name {name} already exists for container "
                           f"{c.name}", hint=f"remove it first ('hv checkpoint rm {c.name} "
                           f"{name}') or choose another name", exit_code=1)
        top.mkdir(mode=0o700, exist_ok=True)
        tmp = top / f".{name}.{os.getpid()}"
        tmp.mkdir(mode=0o700)
        restart.mark_user_stop(self.paths, c.id)  # the VM stopping is no exit to restart
        try:
            domains.save(self.libvirt, c.domain, str(tmp / "state"))
            mux.stop(self.config, c.id)
            _copy(self.paths.container_disk(c.id), tmp / "disk.qcow2")
            _copy(self.paths.container_status(c.id), tmp / "status")
            (tmp / "meta.json").write_text(json.dumps({"name": name, "created": time.time()}))
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if not leave_running and not self._alive(c):
                restart.clear_user_stop(self.paths, c.id)
            raise
        self._container_event("checkpoint", c)
        cp = _read(final)
        if leave_running:
            self._restore(c, final)
        else:
            self._drop_taps(c)
            (self.paths.container_dir(c.id) / MARK).write_text(name)
            self._container_event("die", c, exitCode="0")
        return cp

    def checkpoint_list(self, ref: str) -> list[Checkpoint]:
        c = self.container(ref)
        top = self.paths.container_dir(c.id) / "checkpoints"
        with contextlib.suppress(FileNotFoundError):
            return sorted((_read(p) for p in top.iterdir() if not p.name.startswith(".")),
                          key=lambda cp: cp.created)
        return []

    def checkpoint_remove(self, ref: str, name: str) -> None:
        c = self.container(ref)
        path = self._checkpoint_dir(c, name)
        doomed = path.with_name(f".{name}.rm.{os.getpid()}")
        path.rename(doomed)  # gone for listings at once, whatever rmtree meets
        shutil.rmtree(doomed, ignore_errors=True)

    def start_from_checkpoint(self, ref: str, name: str) -> Container:
        """`start --checkpoint NAME`: the stopped container runs on from the checkpoint (its
        disk as it was then; what the disk got since is discarded, as it must be for the
        memory to match)."""
        c = self.container(ref)
        path = self._checkpoint_dir(c, name)
        if c.active:
            raise Conflict(f"container {c.name} is running: a checkpoint restores a stopped "
                           "container", hint=f"stop it first ('hv stop {c.name}')",
                           exit_code=1)
        return self._restore(c, path)

    # --- inside ----------------------------------------------------------------------------

    def _checkpoint_dir(self, c: Container, name: str) -> Path:
        _check_name(name)
        path = self.paths.container_dir(c.id) / "checkpoints" / name
        if not (path / "state").is_file():
            raise NotFound(f"checkpoint {name} does not exist for container {c.name}",
                           hint=f"list them with 'hv checkpoint ls {c.name}'", exit_code=1)
        return path

    def _restore(self, c: Container, path: Path) -> Container:
        from hv import guestops, restart
        from hv.engine.create import _forwards
        from hv.engine.lifecycle import _wait_gone
        from hv.guest import mux
        from hv.guest.attach import session_command
        from hv.runtime import domains

        cid = c.id
        _wait_gone(self, c)  # a guest that just exited: its QEMU may still be going
        mux.stop(self.config, cid)
        if c.record.networks:
            self._interfaces(cid)  # the taps the saved NICs open
        disk = self.paths.container_disk(cid)
        _copy(path / "disk.qcow2", disk.with_name(disk.name + ".restoring"))
        disk.with_name(disk.name + ".restoring").replace(disk)
        _copy(path / "status", self.paths.container_status(cid))
        for f in (self.paths.container_ssh_port(cid), self.paths.container_ports(cid)):
            f.unlink(missing_ok=True)
        self.paths.container_started(cid).write_text(f"{time.time():.9f}")
        bound = domains.restore(self.libvirt, str(path / "state"), c.domain,
                                _forwards(c.record, not self._restricted(c.record)))
        self._note_forwards(c.record, bound)
        (self.paths.container_dir(cid) / MARK).unlink(missing_ok=True)
        restart.clear_user_stop(self.paths, cid)
        c = replace(c, active=True, paused=False)
        try:  # the clock behind by the time on disk; the RNG's state shared by every restore
            agent = guestops.connect_agent(self.ctx, c, timeout=60)
            try:
                code, _, err = agent.call(session_command(
                    "resume", f"{time.time():.9f}", os.urandom(64)), timeout=30)
            finally:
                agent.close()
        except (HvError, OSError, EOFError) as e:
            code, err = -1, str(e).encode()
        if code != 0:
            with contextlib.suppress(HvError):
                domains.destroy(self.libvirt, c.domain)
            from hv.errors import RuntimeFailure

            raise RuntimeFailure("the restored guest could not set its clock and entropy: "
                                 f"{err.decode(errors='replace').strip() or code}",
                                 hint="the checkpoint may come from another guest; start the "
                                 "container without --checkpoint", exit_code=1)
        self._container_event("start", c)
        if c.record.restart != "no":
            restart.spawn_watcher(cid, self.config.child_environ())
        return c


def _check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise UsageError(f"invalid checkpoint name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-]+ "
                         "are allowed", hint="name it e.g. 'cp1'", exit_code=1)


def _copy(src: Path, dst: Path) -> None:
    """A copy of a disk or state file (copy_file_range: no bytes through Python)."""
    shutil.copyfile(src, dst)


def _read(path: Path) -> Checkpoint:
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}

    def size(name: str) -> int:
        try:
            return (path / name).stat().st_size
        except OSError:
            return 0

    return Checkpoint(name=path.name, created=float(meta.get("created") or 0),
                      state_bytes=size("state"), disk_bytes=size("disk.qcow2"))
