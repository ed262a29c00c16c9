"""Inside a running container: the attach stream, top, stats, ports (exec sessions are
hv.engine.execs).

A part of the facade (hv.engine.Engine mixes it in); `self` is the Engine.
"""

from __future__ import annotations

from hv.containers import Container
from hv.engine.streams import AttachStream
from hv.errors import Conflict


class Inside:
    def _paused_by(self, c: Container) -> str:
        """Why, when it was not `hv pause`: libvirt's reason or QEMU's run state."""
        why = self._paused_why.get(c.id, "")
        if why in ("ioerror", "io-error"):
            return " (QEMU paused it on an I/O error of its disk)"
        if why in ("", "user", "paused"):
            return ""
        return f" (QEMU paused it: {why.replace('-', ' ')})"

    def _unpause_hint(self, c: Container) -> str:
        if self._paused_why.get(c.id) in ("ioerror", "io-error"):
            return (f"free space under {self.paths.state_root()} (or fix its disk), then "
                    f"'hv unpause {c.name}' retries the write")
        return f"hv unpause {c.name}"

    def attach(self, ref: str) -> AttachStream:
        """The main process's stdio as a stream (Docker's attach); `.container` is `ref`'s."""
        from hv import guestops
        from hv.guest.attach import session_command

        c = self.container(ref)
        if not c.active:
            raise Conflict("You cannot attach to a stopped container, start it first",
                           hint=f"hv start -a {c.name}")
        if c.paused:
            raise Conflict(f"You cannot attach to a paused container{self._paused_by(c)}, "
                           "unpause it first", hint=self._unpause_hint(c))
        agent = guestops.connect_agent(self.ctx, c)
        try:
            return AttachStream(c, agent, agent.open(session_command("attach")))
        except BaseException:
            agent.close()
            raise

    def ports(self, ref: str) -> tuple[Container, list[dict]]:
        c = self.container(ref)
        return c, c.bound_ports()

    def top(self, ref: str, args: list[str]) -> str:
        from hv import guestops

        return guestops.top(self.ctx, self.container(ref), args)

    def stats(self, refs: list[str], all: bool = False) -> list[dict]:
        from hv import guestops

        cs = [self.container(r) for r in refs] if refs else self.containers(all=all)
        return guestops.stats(self.ctx, cs)
