"""Exec instances (Docker's create / start / inspect of an exec) and the byte streams of exec
and attach, for front ends that are not a terminal (the Engine API).

Docker splits an exec in two requests (create returns an id, start runs it) and a third
(inspect) reads its exit code, possibly from another connection or process. So an exec's
record is a small JSON file in its container's folder (`execs/ID.json`): any process on
the state root (the CLI, the service, a restarted service) sees it, and it goes with the
container when that is removed.

The streams hide hv.guest's channels and attach frames behind one interface (`fileno` for
select, `read`, `write`, `close_stdin`, `resize`, `close`), so a front end moves bytes
without knowing the agent's protocol. Functions take the engine first and use only its
public methods (and hv.guest for the frames).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from hv.errors import Conflict, ExecNotFound, UsageError
from hv.guest import attach as proto

STDOUT, STDERR = 1, 2


def _folder(engine, cid: str) -> Path:
    """The container's folder (hv.paths today; the engine's paths once it has them)."""
    from hv import paths

    return paths.container_dir(cid)


def _record_path(engine, cid: str, exec_id: str) -> Path:
    return _folder(engine, cid) / "execs" / f"{exec_id}.json"


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


# --- the registry ---------------------------------------------------------------------------


def create(engine, ref: str, config: dict) -> str:
    """Docker's ExecConfig (Cmd, Env, WorkingDir, User, Tty, AttachStdin/out/err, ...) on a
    running container; the new exec's id. Nothing runs until `start`."""
    c = engine.container(ref)
    if not c.active:
        raise Conflict(f"container {c.id} is not running")
    if c.paused:
        raise Conflict(f"Container {c.id} is paused, unpause the container before exec")
    cmd = config.get("Cmd")
    if isinstance(cmd, str):
        cmd = [cmd]
    if not cmd or not isinstance(cmd, list) or not all(isinstance(a, str) for a in cmd):
        raise UsageError("No exec command specified")
    workdir = config.get("WorkingDir") or None
    if workdir is not None and not workdir.startswith("/"):
        raise UsageError(f"the working directory '{workdir}' is invalid, it needs to be an "
                         "absolute path")
    exec_id = os.urandom(32).hex()
    record = {
        "ID": exec_id, "ContainerID": c.id, "Cmd": cmd,
        "Env": [e for e in config.get("Env") or [] if isinstance(e, str)],
        "WorkingDir": workdir or "", "User": config.get("User") or "",
        "Tty": bool(config.get("Tty")), "Privileged": bool(config.get("Privileged")),
        "AttachStdin": bool(config.get("AttachStdin")),
        "AttachStdout": bool(config.get("AttachStdout")),
        "AttachStderr": bool(config.get("AttachStderr")),
        "DetachKeys": config.get("DetachKeys") or "",
        "Running": False, "ExitCode": None, "Started": False, "Pid": 0,
    }
    _write(_record_path(engine, c.id, exec_id), record)
    return exec_id


def _find(engine, exec_id: str) -> tuple[str, dict]:
    """(container id, record) of an exec id (any state of its container)."""
    if exec_id and all(ch in "0123456789abcdef" for ch in exec_id):
        for c in engine.containers(all=True):
            path = _record_path(engine, c.id, exec_id)
            with contextlib.suppress(OSError, ValueError):
                return c.id, json.loads(path.read_text())
    raise ExecNotFound(f"No such exec instance: {exec_id}")


def inspect(engine, exec_id: str) -> dict:
    """Docker's ExecInspect: Running, ExitCode (null until it ended), ProcessConfig."""
    cid, r = _find(engine, exec_id)
    return {
        "ID": r["ID"], "Running": r["Running"], "ExitCode": r["ExitCode"],
        "ProcessConfig": {"tty": r["Tty"], "entrypoint": r["Cmd"][0],
                          "arguments": r["Cmd"][1:], "privileged": r["Privileged"],
                          "user": r["User"]},
        "OpenStdin": r["AttachStdin"], "OpenStderr": r["AttachStderr"],
        "OpenStdout": r["AttachStdout"], "CanRemove": False, "ContainerID": cid,
        "DetachKeys": r["DetachKeys"], "Pid": r["Pid"],
    }


def check_startable(engine, exec_id: str) -> dict:
    """The exec's inspect, if `start` can run it now (else Docker's 404/409): lets a front
    end answer errors before it hands the connection over, and start the command after."""
    cid, r = _find(engine, exec_id)
    if r["Started"]:
        raise Conflict(f"Error: Exec command {exec_id} has already run")
    c = engine.container(cid)
    if not c.active:
        raise Conflict(f"container {cid} is not running")
    if c.paused:
        raise Conflict(f"Container {cid} is paused, unpause the container before exec")
    return inspect(engine, exec_id)


def start(engine, exec_id: str, tty: bool | None = None,
          size: tuple[int, int] | None = None) -> ExecStream:
    """Run the exec; its stream (the caller pumps it, then calls `finish`). `size`: the
    terminal's (rows, cols) for a TTY. An exec starts once (Docker's 409 after)."""
    cid, r = _find(engine, exec_id)
    if r["Started"]:
        raise Conflict(f"Error: Exec command {exec_id} has already run")
    use_tty = r["Tty"] if tty is None else tty
    rows, cols = size or (24, 80)
    pty = ("xterm", cols, rows) if use_tty else None
    agent, ch = engine.exec(cid, r["Cmd"], r["Env"], [], r["WorkingDir"] or None,
                            r["User"] or None, pty)
    r.update(Running=True, Started=True)
    _write(_record_path(engine, cid, exec_id), r)
    stream = ExecStream(agent, ch, use_tty)
    if not r["AttachStdin"]:
        stream.close_stdin()
    return stream


def finish(engine, exec_id: str, exit_code: int | None) -> None:
    """Record how the exec ended (None: the guest went away under it, Docker's 137)."""
    with contextlib.suppress(ExecNotFound, OSError):
        cid, r = _find(engine, exec_id)
        r.update(Running=False, ExitCode=137 if exit_code is None or exit_code < 0
                 else exit_code)
        _write(_record_path(engine, cid, exec_id), r)


def attach(engine, ref: str):
    """(container, AttachStream) to the main process of a running container."""
    c, agent, ch = engine.attach(ref)
    return c, AttachStream(agent, ch, c.record.tty)


# --- the streams ----------------------------------------------------------------------------


class ExecStream:
    """An exec channel: stdout and stderr apart (one stream with a TTY), the exit status."""

    def __init__(self, agent, ch, tty: bool) -> None:
        self._agent, self._ch, self.tty = agent, ch, tty
        self.exit_code: int | None = None
        self._stdin_closed = False

    def fileno(self) -> int:
        return self._ch.fileno()

    def read(self) -> list[tuple[int, bytes]] | None:
        """What is there now, as (stream, bytes); None once the command ended (and all its
        output was read)."""
        ch, out = self._ch, []
        while ch.recv_ready():
            out.append((STDOUT, ch.recv(65536)))
        while ch.recv_stderr_ready():
            out.append((STDERR, ch.recv_stderr(65536)))
        if out:
            return out
        if ch.eof_received and ch.exit_status_ready():
            self.exit_code = ch.recv_exit_status()
            return None
        if getattr(ch, "closed", False):
            return None
        return []

    def write(self, data: bytes) -> None:
        if not self._stdin_closed:
            self._ch.sendall(data)

    def close_stdin(self) -> None:
        """The client's half-close: EOF on the command's stdin (a TTY gets ^D, as a
        terminal would send)."""
        if self._stdin_closed:
            return
        self._stdin_closed = True
        if self.tty:
            self._ch.sendall(b"\x04")
        else:
            self._ch.shutdown_write()

    def resize(self, rows: int, cols: int) -> None:
        if self.tty:
            self._ch.resize_pty(width=cols, height=rows)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._agent.close()


class AttachStream:
    """The main process's attach channel (hv.guest.attach frames) as plain streams."""

    def __init__(self, agent, ch, tty: bool) -> None:
        self._agent, self._ch, self.tty = agent, ch, tty
        self._decoder = proto.FrameDecoder()
        self.exit_code: int | None = None
        self._ended = False
        self._stdin_closed = False

    def fileno(self) -> int:
        return self._ch.fileno()

    def read(self) -> list[tuple[int, bytes]] | None:
        if self._ended:
            return None
        out: list[tuple[int, bytes]] = []
        ch = self._ch
        while ch.recv_ready():
            data = ch.recv(65536)
            if not data:
                break
            for frame in self._decoder.feed(data):
                if frame.type in (STDOUT, STDERR):
                    out.append((frame.type, frame.data))
                elif frame.type == proto.EXIT:
                    self.exit_code = proto.exit_code(frame)
                    self._ended = True
            if self._ended:
                break
        if out:
            return out
        if self._ended or ch.eof_received or getattr(ch, "closed", False):
            self._ended = True
            return None
        return []

    def write(self, data: bytes) -> None:
        if not self._stdin_closed:
            self._ch.sendall(proto.stdin_frame(data))

    def close_stdin(self) -> None:
        if self._stdin_closed:
            return
        self._stdin_closed = True
        self._ch.sendall(proto.stdin_frame(b"\x04") if self.tty else proto.eof_frame())

    def resize(self, rows: int, cols: int) -> None:
        if self.tty:
            self._ch.sendall(proto.resize_frame(rows, cols))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._agent.close()
