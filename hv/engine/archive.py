"""`cp` in both directions, to a running container or a stopped one (a maintenance boot),
and the Engine API's archive operations (stat, get, put) over the same machinery.

A part of the facade (hv.engine.Engine mixes it in); `self` is the Engine.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from typing import BinaryIO

from hv.containers import Container
from hv.engine.lifecycle import _become_subreaper
from hv.errors import NotFound, UsageError


class Archive:
    def copy(self, src: str, dest: str, follow: bool = False, archive: bool = False,
             stdin=None, stdout=None) -> None:
        """`hv cp`: one side is CONTAINER:PATH; `-` streams a tar on stdin/stdout."""
        from hv import copy as cp

        s_c, s_path = cp.parse_target(src)
        d_c, d_path = cp.parse_target(dest)
        if (s_c is None) == (d_c is None):
            raise UsageError("copying between containers or between two local paths is not "
                             "supported", hint="one side must be CONTAINER:PATH")
        c = self.container(s_c or d_c)
        with self._agent_for_copy(c) as agent:
            if s_c is not None:
                target = stdout if d_path == "-" else d_path
                cp.copy_out(agent, c.name, s_path, target, follow, archive)
            else:
                source = stdin if s_path == "-" else s_path
                cp.copy_in(agent, c.name, source, d_path, follow, archive)

    @contextlib.contextmanager
    def _agent_for_copy(self, c: Container):
        """The running agent (through its exec multiplexer: `stat` and small copies ride it,
        big ones go over `ssh`, hv.guest.bulk), or the stopped container booted in
        maintenance mode (a direct connection: that VM is gone again after the copy)."""
        from hv import guestops
        from hv.runtime import domains, forwards

        if c.active:
            agent = guestops.connect_agent(self.ctx, c)
            try:
                yield agent
            finally:
                agent.close()
            return
        if not c.record.auto_remove:
            self._write_seed(c.record, maintenance=True)
        _become_subreaper()  # reap the maintenance QEMU at once when it is destroyed
        status = self.paths.container_status(c.id)
        saved = status.read_bytes() if status.exists() else b""  # libvirt truncates it
        mtime = status.stat().st_mtime if status.exists() else None
        try:
            # its NICs' taps (a stop removed them; libvirt opens them by name), and the
            # domain defined again when connect/disconnect changed its NICs
            xml = self._network_xml(c) if c.record.networks else None
            if xml is not None:
                domains.start(self.libvirt, xml, c.domain, persistent=True)
            else:
                domains.start_defined(self.libvirt, c.domain)
            try:
                bound = forwards.add(self.libvirt, c.domain, [forwards.agent_forward()])
                self.paths.container_ssh_port(c.id).write_text(str(bound[0].host_port))
                agent = guestops.connect_agent(self.ctx, replace(c, active=True, paused=False),
                                               direct=True)
                try:
                    yield agent
                finally:
                    agent.close()
            finally:
                domains.destroy(self.libvirt, c.domain)
                guestops.wait_powered_off(self.ctx, c, 10)
                self.paths.container_ssh_port(c.id).unlink(missing_ok=True)
                self._drop_taps(c)
        finally:
            status.write_bytes(saved)  # the container's last exit, as before the copy
            if mtime is not None:
                os.utime(status, (mtime, mtime))
            self._write_seed(c.record)

    # --- the Engine API's archive operations (HEAD/GET/PUT /containers/ID/archive) --------

    def archive_stat(self, ref: str, path: str) -> PathStat:
        """What is at `path` in the container (not following a last symlink)."""
        from hv import copy as cp

        c = self.container(ref)
        with self._agent_for_copy(c) as agent:
            st = cp.guest_stat(agent, path)
        if st is None:
            raise CopyNotFound(f"Could not find the file {path} in container {c.name}")
        return PathStat.of(path, st)

    def archive_get(self, ref: str, path: str, out: BinaryIO) -> PathStat:
        """A tar of `path` (its base name at the top) written to `out`; its stat."""
        from hv import copy as cp

        c = self.container(ref)
        with self._agent_for_copy(c) as agent:
            st = cp.guest_stat(agent, path)
            if st is None:
                raise CopyNotFound(f"Could not find the file {path} in container {c.name}")
            cp.copy_out(agent, c.name, path, out, False, True)
        return PathStat.of(path, st)

    def archive_put(self, ref: str, path: str, tar: BinaryIO, copy_uid_gid: bool = False
                    ) -> None:
        """Extract the tar `tar` into the directory `path` (docker cp - CONTAINER:DIR);
        `copy_uid_gid`: keep the archive's owners (cp -a), else root's."""
        from hv import copy as cp

        c = self.container(ref)
        with self._agent_for_copy(c) as agent:
            st = cp.guest_stat(agent, path, follow=True)
            if st is None:
                raise CopyNotFound(f"Could not find the file {path} in container {c.name}")
            if st.type != "d":
                raise UsageError(f"extraction point is not a directory: {path}",
                                 hint="PUT an archive into a directory")
            cp.copy_in(agent, c.name, tar, path, False, copy_uid_gid)


class CopyNotFound(NotFound):
    hint = "check the path; 'hv exec CONTAINER ls -la DIR' shows what is there"


# Go's os.FileMode bits, as Docker's X-Docker-Container-Path-Stat carries them
_GO_TYPE = {"d": 1 << 31, "l": 1 << 27, "p": 1 << 25, "s": 1 << 24, "b": 1 << 26,
            "c": (1 << 26) | (1 << 21)}


@dataclass(frozen=True)
class PathStat:
    name: str
    size: int
    mode: int  # Go's FileMode
    mtime: str  # RFC 3339
    link_target: str

    @classmethod
    def of(cls, path: str, st) -> PathStat:
        from hv.timefmt import rfc3339

        mode = st.mode & 0o777 | _GO_TYPE.get(st.type, 0)
        mode |= (1 << 23 if st.mode & 0o4000 else 0) | (1 << 22 if st.mode & 0o2000 else 0)
        mode |= 1 << 20 if st.mode & 0o1000 else 0
        name = path.rstrip("/").rsplit("/", 1)[-1] or "/"
        return cls(name, st.size, mode, rfc3339(st.mtime_ns / 1e9), st.link_target)

    def to_docker(self) -> dict:
        return {"name": self.name, "size": self.size, "mode": self.mode, "mtime": self.mtime,
                "linkTarget": self.link_target}
