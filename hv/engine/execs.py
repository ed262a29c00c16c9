"""Exec sessions as the Engine API models them: create (a record), start (a stream), resize,
inspect. `hv exec` is create + start; the API service answers each call.

A record lives in the container's folder (so any hv process can inspect it, and it goes
with the container); a session started in this process can be resized through the stream
this process holds.

A part of the facade (hv.engine.Engine mixes it in); `self` is the Engine.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field

from hv.engine.streams import ExecStream
from hv.errors import Conflict, ExecNotFound, HvError, UsageError


@dataclass
class ExecRecord:
    id: str
    container_id: str
    argv: list[str]
    env: list[str] = field(default_factory=list)  # extra K=V, resolved at create
    workdir: str | None = None
    user: str | None = None
    tty: bool = False
    stdin: bool = False
    running: bool = False
    started: bool = False
    exit_code: int | None = None

    def inspect(self) -> dict:
        """Docker's ExecInspect shape."""
        return {
            "ID": self.id, "Running": self.running, "ExitCode": self.exit_code,
            "ProcessConfig": {"tty": self.tty, "entrypoint": self.argv[0],
                              "arguments": self.argv[1:], "privileged": False,
                              "user": self.user or ""},
            "OpenStdin": self.stdin, "OpenStderr": True, "OpenStdout": True,
            "CanRemove": False, "ContainerID": self.container_id, "DetachKeys": "",
            "Pid": 0,  # the guest's pid is the guest's: not a host process
        }


class Execs:
    def exec_create(self, ref: str, argv: list[str], env: list[str] = (),
                    env_files: list[str] = (), workdir: str | None = None,
                    user: str | None = None, tty: bool = False, stdin: bool = False) -> str:
        """A new exec session's id (nothing runs until `exec_start`)."""
        rec, c = self._new_exec(ref, argv, env, env_files, workdir, user, tty, stdin)
        self._write_exec(rec)
        self._exec_containers[rec.id] = c  # exec_start in this process needs no look-up
        self._container_event(f"exec_create: {' '.join(rec.argv)}", c, execID=rec.id)
        return rec.id

    def exec(self, ref: str, argv: list[str], env: list[str] = (), env_files: list[str] = (),
             workdir: str | None = None, user: str | None = None, tty: bool = False,
             stdin: bool = False, size: tuple[int, int] | None = None) -> ExecStream:
        """exec_create + exec_start at once (`hv exec`): one record written, not two."""
        rec, c = self._new_exec(ref, argv, env, env_files, workdir, user, tty, stdin)
        self._container_event(f"exec_create: {' '.join(rec.argv)}", c, execID=rec.id)
        return self._start(rec, c, size)

    def _new_exec(self, ref, argv, env, env_files, workdir, user, tty, stdin):
        from hv import guestops
        from hv.spec import parse_env_item, read_env_file

        c = self.container(ref)
        if not c.active:
            raise guestops.not_running(self.ctx, c)
        if c.paused:  # its sessions would hang until unpaused
            raise Conflict(f"Container {c.id} is paused{self._paused_by(c)}, unpause the "
                           "container before exec", hint=self._unpause_hint(c))
        if not argv:
            raise UsageError("exec needs a command", hint="hv exec CONTAINER COMMAND [ARG...]")
        extra = []
        for item in [i for f in env_files for i in read_env_file(f)] + list(env):
            value = parse_env_item(item, dict(self.config.environ))
            if value is not None:
                extra.append(value)
        if workdir is not None and not workdir.startswith("/"):
            raise UsageError(f"the working directory '{workdir}' is invalid, it needs to be "
                             "an absolute path", hint="use -w /absolute/path")
        rec = ExecRecord(os.urandom(32).hex(), c.id, list(argv), extra, workdir, user, tty,
                         stdin)
        return rec, c

    def exec_start(self, exec_id: str, size: tuple[int, int] | None = None) -> ExecStream:
        """Start the session; its stream (`size`: (cols, rows) of its TTY)."""
        rec = self._read_exec(exec_id)
        if rec.started:
            raise Conflict(f"exec {exec_id} has already been started",
                           hint="create another exec session")
        c = self._exec_containers.pop(exec_id, None) or self.container(rec.container_id)
        return self._start(rec, c, size)

    def _start(self, rec: ExecRecord, c, size: tuple[int, int] | None) -> ExecStream:
        from hv import guestops
        from hv.guest.attach import session_command

        exec_id = rec.id
        if not c.active:
            raise guestops.not_running(self.ctx, c)
        agent = guestops.connect_agent(self.ctx, c)
        pty = ("xterm", *(size or (80, 24))) if rec.tty else None
        try:
            ch = agent.open(session_command("exec", rec.argv, rec.env, rec.workdir, rec.user),
                            pty=pty)
        except BaseException as e:
            agent.close()
            if isinstance(e, HvError):  # inspect says how it ended (126, 127, ...)
                rec.started, rec.exit_code = True, e.exit_code
                with contextlib.suppress(OSError):
                    self._write_exec(rec)
            raise
        rec.started = rec.running = True
        self._write_exec(rec)
        self._container_event(f"exec_start: {' '.join(rec.argv)}", c, execID=rec.id)

        def ended(code: int | None) -> None:
            rec.running = False
            rec.exit_code = 137 if code is None else code
            self._live_execs.pop(exec_id, None)
            self._container_event("exec_die", c, execID=rec.id, exitCode=str(rec.exit_code))
            with contextlib.suppress(OSError):  # the container was removed meanwhile
                self._write_exec(rec)

        stream = ExecStream(agent, ch, rec.tty, on_exit=ended)
        self._live_execs[exec_id] = stream
        return stream

    def exec_resize(self, exec_id: str, cols: int, rows: int) -> None:
        rec = self._read_exec(exec_id)
        stream = self._live_execs.get(exec_id)
        if stream is None:
            if not rec.running:
                raise Conflict(f"exec {exec_id} is not running", hint="start it first")
            return  # started by another process: its own terminal resizes it
        stream.resize(cols, rows)

    def exec_inspect(self, exec_id: str) -> dict:
        return self._read_exec(exec_id).inspect()

    def exec_startable(self, exec_id: str) -> dict:
        """The session's inspect if `exec_start` can run it now, else its error (404, 409):
        the API answers errors before it hands the connection over to the stream."""
        rec = self._read_exec(exec_id)
        if rec.started:
            raise Conflict(f"Error: Exec command {exec_id} has already run",
                           hint="create another exec session")
        c = self.container(rec.container_id)
        if not c.active:
            from hv import guestops

            raise guestops.not_running(self.ctx, c)
        if c.paused:
            raise Conflict(f"Container {c.id} is paused, unpause the container before exec",
                           hint=self._unpause_hint(c))
        self._exec_containers[exec_id] = c
        return rec.inspect()

    # --- records ---------------------------------------------------------------------------

    def _exec_path(self, exec_id: str):
        cids = self._exec_owner.get(exec_id)
        if cids:
            return self.paths.container_exec(cids, exec_id)
        root = self.paths.containers_dir()
        if len(exec_id) == 64 and root.is_dir():
            for d in root.iterdir():
                p = self.paths.container_exec(d.name, exec_id)
                if p.exists():
                    self._exec_owner[exec_id] = d.name
                    return p
        raise ExecNotFound(f"No such exec instance: {exec_id}")

    def _read_exec(self, exec_id: str) -> ExecRecord:
        path = self._exec_path(exec_id.strip())
        try:
            return ExecRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            raise ExecNotFound(f"No such exec instance: {exec_id}") from None

    def _write_exec(self, rec: ExecRecord) -> None:
        path = self.paths.container_exec(rec.container_id, rec.id)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(rec)))
        tmp.replace(path)
        self._exec_owner[rec.id] = rec.container_id
