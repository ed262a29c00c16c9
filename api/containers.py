"""Containers and exec: create, start/stop/…, wait, logs, attach, exec, list, inspect.

hv's `create` boots the VM (a VM takes its time; Docker's `run` is create → attach → wait →
start, back to back). So: the main process of a container whose client will attach stdin
waits in the guest for that attach (nothing it prints is lost, as with Docker); any other
container runs at once, and an attach before `start` replays its output from the
beginning (hv keeps all of it). `start` of such a container waits until the main process
runs, so `docker run` still reports a missing command (127) as Docker does.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import threading
import time
from collections.abc import Iterator

from api import streams, translate
from api.archive_stream import read as archive_chunks
from api.http import HttpError, Request, Response, json_response
from hv.errors import CommandNotFound, Conflict, HvError, ImageNotFound, NotFound, NotModified
from hv.timefmt import rfc3339

POLL = 0.1


def routes(svc) -> list:
    engine = svc.engine
    ID = r"(?P<ref>[^/]+)"

    # --- create / list / inspect / remove ----------------------------------------------

    def create(req: Request) -> Response:
        body = req.json_object()
        image = body.get("Image")
        if not isinstance(image, str) or not image:
            raise HttpError(400, "Config cannot be empty in order to create a container")
        if not engine.images.exists(image):
            raise ImageNotFound(f"No such image: {_familiar(engine, image)}")
        exposed = engine.images.get(image).run_config.get("ExposedPorts") or {}
        opts, warnings = translate.run_options(body, req.arg("name"), exposed)
        wanted_labels = _labels(body.get("Labels"))  # checked before anything is made
        # a client that will attach (docker run without -d): the main process waits for
        # that attach or the start (a warm VM ran a short command to its end before either
        # came, and an AutoRemove one was gone)
        hold = not opts.detach or any(body.get(k) for k in ("AttachStdin", "AttachStdout",
                                                             "AttachStderr"))
        with svc.creating:  # engine.create is not thread-safe (see Service.creating)
            created = engine.create(opts, hold=hold)
        c = created.container
        engine.set_labels(c.id, wanted_labels)
        svc.fresh.add(c.id)
        if hold:
            svc.await_attach.add(c.id)
        if opts.auto_remove:
            svc.reaper.watch(c)
        return json_response({"Id": c.id, "Warnings": warnings + created.warnings}, 201)

    def list_(req: Request) -> Response:
        cs = engine.containers(all=True)
        found = {c.id: engine.labels(c.id) for c in cs}
        cs = _select(cs, req.flag("all"), req.filters(), req.integer("limit", -1) or -1, found)
        out = []
        for c in cs:
            out.append(translate.summary(c, c.inspect(), found[c.id], req.version))
        return json_response(out)

    def inspect(req: Request, ref: str) -> Response:
        c = engine.container(ref)
        return json_response(translate.inspect(c, engine.labels(c.id), req.version))

    def remove(req: Request, ref: str) -> Response:
        c = _settled(engine, svc, ref)
        engine.remove(c.id, force=req.flag("force"), volumes=req.flag("v"))
        svc.fresh.discard(c.id)
        svc.await_attach.discard(c.id)
        return Response(204)

    # --- lifecycle ---------------------------------------------------------------------

    def start(req: Request, ref: str) -> Response:
        c = _settled(engine, svc, ref)
        if c.id in svc.fresh:
            try:
                if c.id in svc.await_attach:  # nobody attached: let the main process go
                    svc.await_attach.discard(c.id)
                    _release(engine, c.id)
                _started(engine, c)
            finally:  # then an AutoRemove one that is done already may go (Reaper)
                svc.fresh.discard(c.id)
            return Response(204)
        if c.active:
            raise NotModified("container already started")
        _started(engine, engine.start(c.id))
        return Response(204)

    def stop(req: Request, ref: str) -> Response:
        c = _settled(engine, svc, ref)
        if not c.active:
            raise NotModified("container already stopped")
        svc.fresh.discard(c.id)
        engine.stop(c.id, req.integer("t", None))
        return Response(204)

    def restart(req: Request, ref: str) -> Response:
        c = _settled(engine, svc, ref)
        svc.fresh.discard(c.id)
        _started(engine, engine.restart(c.id, req.integer("t", None)))
        return Response(204)

    def kill(req: Request, ref: str) -> Response:
        c = _settled(engine, svc, ref)
        svc.fresh.discard(c.id)
        engine.kill(c.id, req.arg("signal") or "KILL")
        return Response(204)

    def pause(req: Request, ref: str) -> Response:
        engine.pause(ref, True)
        return Response(204)

    def unpause(req: Request, ref: str) -> Response:
        engine.pause(ref, False)
        return Response(204)

    def rename(req: Request, ref: str) -> Response:
        engine.rename(ref, req.arg("name") or "")
        return Response(204)

    def wait(req: Request, ref: str) -> Response:
        c = engine.container(ref)
        condition = req.arg("condition") or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise HttpError(400, f"invalid condition: {condition!r}")

        def body() -> Iterator[bytes]:
            # the headers go first (as dockerd: the client knows the wait is in place)
            yield b""
            try:
                code = _wait(engine, svc, c, condition, req.client_gone)
            except HvError as e:
                yield _json({"StatusCode": -1, "Error": {"Message": e.message}})
                return
            if code is not None:
                yield _json({"StatusCode": code, "Error": None})
        return Response(200, content_type="application/json", stream=body())

    def resize(req: Request, ref: str) -> Response:
        c = engine.container(ref)
        h, w = req.integer("h", 0) or 0, req.integer("w", 0) or 0
        for s in svc.live.get(c.id):
            with contextlib.suppress(HvError, OSError):
                s.resize(w, h)
        return Response(200, b"", "text/plain; charset=utf-8")

    # --- output ------------------------------------------------------------------------

    def logs(req: Request, ref: str) -> Response:
        c = engine.container(ref)
        want = tuple(n for n, on in ((1, req.flag("stdout")), (2, req.flag("stderr"))) if on)
        if not want:
            raise HttpError(400, "Bad parameters: you must choose at least one stream")
        tail_text = (req.arg("tail") or "all").strip()
        if tail_text == "all":
            tail = None
        else:
            try:
                tail = int(tail_text)
            except ValueError:
                raise HttpError(400, f"invalid value for tail: {tail_text!r}") from None
            tail = None if tail < 0 else tail
        since, until = _time_arg(req, "since"), _time_arg(req, "until")
        stamps, tty = req.flag("timestamps"), c.record.tty
        lines = engine.logs(c.id, follow=req.flag("follow"), tail=tail)

        def body() -> Iterator[bytes]:
            yield b""
            for line in lines:
                t = line.ts_ns / 1e9
                if line.stream not in want or (since and t < since):
                    continue
                if until and t > until:
                    break
                data = (rfc3339(t).encode() + b" " if stamps else b"") + line.data
                yield data if tty else streams.frame(line.stream, data)
        return Response(200, content_type=streams.content_type(tty, req.version),
                        stream=body())

    def attach(req: Request, ref: str) -> Response:
        c = engine.container(ref)
        tty = c.record.tty
        ctype = streams.content_type(tty, req.version)
        want = tuple(n for n, on in ((1, req.flag("stdout")), (2, req.flag("stderr"))) if on)
        if req.flag("stdin") and c.record.stdin_open and c.active:
            if c.paused:
                raise Conflict("You cannot attach to a paused container, unpause it first")
            svc.await_attach.discard(c.id)  # its guest waits for this attach, not `start`

            def relay(sock, leftover: bytes) -> None:
                # connected after the 101, as the exec's command starts: nothing the process
                # prints may come with the answer's headers (a client's buffer keeps it)
                try:
                    stream = engine.attach(c.id)
                except HvError as e:
                    with contextlib.suppress(OSError):
                        msg = (e.message + "\n").encode()
                        sock.sendall(msg if tty else streams.frame(2, msg))
                    return
                svc.live.add(c.id, stream)
                try:
                    streams.pump(sock, stream, not tty, True, leftover, want)
                finally:
                    svc.live.remove(c.id, stream)
                    stream.close()
            return Response(content_type=ctype, hijack=relay)
        from_start = c.id in svc.fresh or req.flag("logs")
        follow = req.flag("stream")

        def replay(sock, _leftover: bytes) -> None:
            if follow and not c.active:  # `start -a`: the output of the coming start
                # (not req.client_gone: a client without stdin half-closes at once, and a
                # hijacked socket cannot tell that from leaving)
                deadline = time.monotonic() + 60
                while not engine.container(c.id).active:
                    if time.monotonic() > deadline:
                        return
                    time.sleep(POLL)
            tail = None if from_start else 0
            with svc.reaper.reading(c.id), contextlib.suppress(OSError, HvError):
                for line in engine.logs(c.id, follow=follow, tail=tail):
                    if line.stream in want:
                        sock.sendall(line.data if tty else streams.frame(line.stream, line.data))
        return Response(content_type=ctype, hijack=replay)

    # --- files and processes -------------------------------------------------------------

    def archive(req: Request, ref: str) -> Response:
        """HEAD: the path's stat; GET: its tar (the stat in a header too)."""
        path = req.arg("path")
        if not path:
            raise HttpError(400, "path is required")
        st = engine.archive_stat(ref, path).to_docker()
        header = [("X-Docker-Container-Path-Stat",
                   base64.b64encode(json.dumps(st).encode()).decode())]
        if req.method == "HEAD":
            return Response(200, b"", "application/x-tar", header)
        c = engine.container(ref)
        return Response(200, content_type="application/x-tar", headers=header,
                        stream=archive_chunks(engine, c.id, path, svc.copying(c.id)))

    def archive_put(req: Request, ref: str) -> Response:
        path = req.arg("path")
        if not path:
            raise HttpError(400, "path is required")
        st = engine.archive_stat(ref, path).to_docker()
        if not st["mode"] & (1 << 31) and not st["linkTarget"]:
            raise HttpError(400, f"extraction point is not a directory: {path}")
        svc.settle(engine.container(ref).id)
        engine.archive_put(ref, path, io.BytesIO(req.body),
                           copy_uid_gid=req.flag("copyUIDGID"))
        return Response(200, b"", "text/plain; charset=utf-8")

    def top(req: Request, ref: str) -> Response:
        text = engine.top(ref, (req.arg("ps_args") or "").split())
        lines = [line for line in text.splitlines() if line.strip()]
        titles = lines[0].split() if lines else []
        rows = [line.split(None, max(0, len(titles) - 1)) for line in lines[1:]]
        return json_response({"Titles": titles, "Processes": rows})

    def stats(req: Request, ref: str) -> Response:
        """Docker's stats JSON from hv's sample (QEMU's CPU time and RSS, the disk's I/O):
        the CPU numbers are made so docker/cli's formula gives hv's percentage back."""
        c = engine.container(ref)
        once = not req.flag("stream", True) or req.flag("one-shot")

        def sample() -> bytes:
            row = engine.stats([c.id])[0]
            return _json(_stats_doc(c, row, os.cpu_count() or 1))

        if once:
            return Response(200, sample(), "application/json")

        def body() -> Iterator[bytes]:
            while not req.client_gone():
                yield sample()  # engine.stats takes a second between its two samples
        return Response(200, content_type="application/json", stream=body())

    def prune(req: Request) -> Response:
        """Stopped containers (their anonymous volumes stay, as Docker's)."""
        filters = req.filters()
        removed, space = [], 0
        for c in engine.containers(all=True):
            if c.active or not all(_label_ok(engine.labels(c.id), f)
                                   for f in filters.get("label", [])):
                continue
            try:
                engine.remove(c.id)
            except HvError:
                continue
            svc.fresh.discard(c.id)
            removed.append(c.id)
        return json_response({"ContainersDeleted": removed or None, "SpaceReclaimed": space})

    # --- exec --------------------------------------------------------------------------

    def exec_create(req: Request, ref: str) -> Response:
        body = req.json_object()
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
        if not cmd or not isinstance(cmd, list) or not all(isinstance(a, str) for a in cmd):
            raise HttpError(400, "No exec command specified")
        env = [e for e in body.get("Env") or [] if isinstance(e, str) and "=" in e]
        exec_id = engine.exec_create(ref, cmd, env, [], body.get("WorkingDir") or None,
                                     body.get("User") or None, tty=bool(body.get("Tty")),
                                     stdin=bool(body.get("AttachStdin")))
        return json_response({"Id": exec_id}, 201)

    def exec_start(req: Request, exec_id: str) -> Response:
        body = req.json_object()
        size = body.get("ConsoleSize")
        rows_cols = (int(size[0]), int(size[1])) if isinstance(size, list) and len(size) == 2 \
            and all(isinstance(n, int) and n > 0 for n in size) else None
        size = (rows_cols[1], rows_cols[0]) if rows_cols else None  # the facade's (cols, rows)
        info = engine.exec_startable(exec_id)
        if body.get("Detach"):
            stream = engine.exec_start(exec_id, size)
            if not info["OpenStdin"]:
                stream.close_stdin()

            def background() -> None:
                try:
                    streams.drain(stream)
                finally:
                    stream.close()  # the session's record says how it ended
            threading.Thread(target=background, daemon=True, name="hv-api-exec").start()
            return Response(200, b"", "application/json")
        tty_on = info["ProcessConfig"]["tty"]

        def relay(sock, leftover: bytes) -> None:
            # the command starts once the client has the 101: output that came with the
            # answer's headers would be lost in a client's header buffer (docker-py's)
            try:
                stream = engine.exec_start(exec_id, size)
            except HvError as e:  # the session's record has its exit code (126, 127)
                with contextlib.suppress(OSError):
                    msg = (e.message + "\n").encode()
                    sock.sendall(msg if tty_on else streams.frame(2, msg))
                return
            if not info["OpenStdin"]:
                stream.close_stdin()
            svc.live.add(exec_id, stream)
            try:
                streams.pump(sock, stream, not stream.tty, info["OpenStdin"], leftover)
            finally:
                svc.live.remove(exec_id, stream)
                stream.close()  # recorded before the connection closes
        return Response(content_type=streams.content_type(tty_on, req.version), hijack=relay)

    def exec_resize(req: Request, exec_id: str) -> Response:
        engine.exec_inspect(exec_id)  # 404 for an unknown id
        h, w = req.integer("h", 0) or 0, req.integer("w", 0) or 0
        for s in svc.live.get(exec_id):
            with contextlib.suppress(HvError, OSError):
                s.resize(w, h)
        return Response(200, b"", "text/plain; charset=utf-8")

    def exec_inspect(req: Request, exec_id: str) -> Response:
        return json_response(engine.exec_inspect(exec_id))

    EXEC = r"(?P<exec_id>[^/]+)"
    return [
        ("POST", "/containers/create", create),
        ("GET", "/containers/json", list_),
        ("GET", f"/containers/{ID}/json", inspect),
        ("DELETE", f"/containers/{ID}", remove),
        ("POST", f"/containers/{ID}/start", start),
        ("POST", f"/containers/{ID}/stop", stop),
        ("POST", f"/containers/{ID}/restart", restart),
        ("POST", f"/containers/{ID}/kill", kill),
        ("POST", f"/containers/{ID}/pause", pause),
        ("POST", f"/containers/{ID}/unpause", unpause),
        ("POST", f"/containers/{ID}/wait", wait),
        ("POST", f"/containers/{ID}/rename", rename),
        ("POST", f"/containers/{ID}/resize", resize),
        ("GET", f"/containers/{ID}/logs", logs),
        ("POST", f"/containers/{ID}/attach", attach),
        ("POST", f"/containers/{ID}/exec", exec_create),
        ("GET", f"/containers/{ID}/archive", archive),
        ("PUT", f"/containers/{ID}/archive", archive_put),
        ("GET", f"/containers/{ID}/top", top),
        ("GET", f"/containers/{ID}/stats", stats),
        ("POST", "/containers/prune", prune),
        ("POST", f"/exec/{EXEC}/start", exec_start),
        ("POST", f"/exec/{EXEC}/resize", exec_resize),
        ("GET", f"/exec/{EXEC}/json", exec_inspect),
    ]


# --- helpers ------------------------------------------------------------------------------


def _json(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _familiar(engine, image: str) -> str:
    """`busybox` → `busybox:latest`, as Docker names a missing image."""
    try:
        return engine.image_reference(image).familiar()
    except HvError:
        return image


def _settled(engine, svc, ref: str):
    """The container, once copies out of it are over (see Service.settle)."""
    c = engine.container(ref)
    svc.settle(c.id)
    return engine.container(c.id)


def _release(engine, cid: str) -> None:
    """Let a main process that waits for an attach go: a short attach (the guest starts it
    200 ms after a client connected)."""
    try:
        stream = engine.attach(cid)
    except HvError:
        return
    try:
        time.sleep(0.3)
    finally:
        stream.close()


def _started(engine, c) -> None:
    """Until the main process runs; a command that cannot start is Docker's start error
    (whose words docker/cli turns into exit code 127 or 126)."""
    try:
        engine.wait_started(c)
    except CommandNotFound as e:
        raise CommandNotFound(f"failed to create task for container: exec: {e.message}: "
                              "executable file not found in $PATH") from None


def _wait(engine, svc, c, condition: str, gone) -> int | None:
    """Block as Docker's wait; the exit code, None when the client left."""
    if condition == "next-exit" and not c.active:
        while not engine.container(c.id).active:  # until the next start
            if gone():
                return None
            time.sleep(POLL)
        c = engine.container(c.id)
    if svc.reaper.watching(c.id):
        return svc.reaper.exit_code(c.id, gone)
    while engine.container_running(c):
        if gone():
            return None
        time.sleep(POLL)
    code = engine.exit_code(c)
    if condition == "removed":
        while True:
            try:
                engine.container(c.id)
            except NotFound:
                break
            if gone():
                return None
            time.sleep(POLL)
    return code


def _time_arg(req: Request, name: str) -> float:
    """Docker's since/until: Unix seconds (with a fraction), or RFC 3339."""
    text = (req.arg(name) or "").strip()
    if not text:
        return 0.0
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise HttpError(400, f"invalid value for {name}: {text!r}") from None


def _stats_doc(c, row: dict, ncpu: int) -> dict:
    now = rfc3339(time.time())
    system = int(1e9 * ncpu)  # one second of every CPU
    cpu = {"cpu_usage": {"total_usage": int(row["cpu"] / 100 * 1e9), "usage_in_kernelmode": 0,
                         "usage_in_usermode": 0},
           "system_cpu_usage": system, "online_cpus": ncpu, "throttling_data": {}}
    pre = {"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0, "online_cpus": ncpu,
           "throttling_data": {}}
    read, written = row["blk"]
    return {
        "id": c.id, "name": "/" + c.name, "read": now, "preread": now,
        "cpu_stats": cpu, "precpu_stats": pre, "num_procs": 0,
        "memory_stats": {"usage": row["mem"], "limit": row["limit"], "stats": {}},
        "blkio_stats": {"io_service_bytes_recursive": [
            {"major": 0, "minor": 0, "op": "read", "value": read},
            {"major": 0, "minor": 0, "op": "write", "value": written}]},
        "pids_stats": {}, "networks": {},
    }


def _labels(value: object) -> dict[str, str]:
    if value in (None, {}):
        return {}
    if not isinstance(value, dict):
        raise HttpError(400, "Labels must be an object of strings")
    return {str(k): str(v) for k, v in value.items()}


def _label_ok(have: dict[str, str], want: str) -> bool:
    key, eq, value = want.partition("=")
    return key in have and (not eq or have[key] == value)


def _select(cs: list, show_all: bool, filters: dict[str, list[str]], limit: int,
            found: dict[str, dict[str, str]]) -> list:
    """GET /containers/json's `all`, `limit` and `filters` (id, name, status, ancestor,
    exited, label: every label filter must match)."""
    known = {"id", "name", "status", "ancestor", "exited", "label"}
    for key in filters:
        if key not in known:
            raise HttpError(400, f"invalid filter '{key}'")
    if not show_all and not filters.get("status") and limit < 0:
        cs = [c for c in cs if c.active]

    def ok(c) -> bool:
        st = c.state()
        if filters.get("id") and not any(c.id.startswith(v) for v in filters["id"]):
            return False
        if filters.get("name") and not any(re.search(v.lstrip("/"), c.name)
                                           for v in filters["name"]):
            return False
        if filters.get("status") and st.status not in filters["status"]:
            return False
        if filters.get("ancestor") and not any(
                v in (c.record.image, c.record.image_id) or c.record.image_id.removeprefix(
                    "sha256:").startswith(v) or c.record.image.split(":")[0] == v
                for v in filters["ancestor"]):
            return False
        if filters.get("exited") and (st.status != "exited" or
                                      str(st.exit_code) not in filters["exited"]):
            return False
        return all(_label_ok(found.get(c.id, {}), f) for f in filters.get("label", []))

    cs = [c for c in cs if ok(c)]
    return cs[:limit] if limit > 0 else cs

