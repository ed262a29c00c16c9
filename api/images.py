"""Images (list, inspect, pull, tag, delete, save, load, history) and volumes (list, create,
inspect, delete, prune), in Docker's shapes.

A pull answers with a chunked stream of JSON lines as dockerd's: docker-py and the CLI
render each line as it comes (a body sent in one piece shows nothing until the end), and an
error after the first line is a line of its own (`errorDetail`), the status being sent.

Save (`GET /images/{name}/get`, `/images/get?names=…`) streams the tarball as the facade
writes it (a thread writes, the response reads); a missing image is a 404 before the first
byte. Load (`POST /images/load`) takes the body as a stream (no size limit: it goes to a
scratch file of the image store) and answers as dockerd: 200 and JSON lines, `Loaded image:
…` or the error as an `errorDetail` line, which `docker load` and docker-py raise.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator

from api.http import HttpError, Request, Response, json_response
from api.translate import summary
from hv.errors import HvError

_PULLING = re.compile(r"^(?P<tag>\S+): Pulling from (?P<repo>.+)$")
LOG = logging.getLogger("hv.api")

# requests whose body the handler reads as a stream (api.app.Service.streamed)
STREAMED_BODIES = [("POST", "/images/load")]


def _line(obj: dict) -> bytes:
    return json.dumps(obj).encode() + b"\r\n"


def _bar(current: int, total: int) -> str:
    """dockerd's progress text: `[=====>     ]  1.2MB/3.4MB`."""
    def size(n: float) -> str:
        for unit in ("B", "kB", "MB", "GB"):
            if n < 1000 or unit == "GB":
                return f"{n:.4g}{unit}"
            n /= 1000
        return f"{n}"
    if total <= 0:
        return size(current)
    width = 50
    done = min(width, int(width * current / total))
    arrow = "=" * max(0, done - 1) + (">" if done < width and done else "=" * (done > 0))
    return f"[{arrow.ljust(width)}] {size(current)}/{size(total)}"


def pull_event(event) -> dict:
    """An hv PullEvent as dockerd's JSON progress message."""
    if not event.layer:
        m = _PULLING.match(event.status)
        if m:
            return {"status": f"Pulling from {m.group('repo')}", "id": m.group("tag")}
        return {"status": event.status}
    msg: dict = {"status": event.status, "id": event.layer}
    if event.total or event.current:
        msg["progressDetail"] = {"current": event.current, "total": event.total}
        if event.status == "Downloading":
            msg["progress"] = _bar(event.current, event.total)
    else:
        msg["progressDetail"] = {}
    return msg


def image_summary(img, containers: int) -> dict:
    created = img.created.timestamp() if img.created else 0
    return {
        "Id": img.id, "ParentId": "", "RepoTags": list(img.repo_tags) or ["<none>:<none>"],
        "RepoDigests": list(img.repo_digests), "Created": int(created), "Size": img.size,
        "SharedSize": -1, "VirtualSize": img.size,
        "Labels": (img.run_config.get("Labels") or None), "Containers": containers,
    }


def image_inspect(img) -> dict:
    doc = img.inspect()
    config = dict(img.run_config)
    for key in ("Env", "Cmd", "Entrypoint", "Volumes", "ExposedPorts", "Labels", "OnBuild"):
        config.setdefault(key, None)
    config.setdefault("WorkingDir", "")
    config.setdefault("User", "")
    doc.update({
        "Config": config, "DockerVersion": "", "Variant": "", "VirtualSize": img.size,
        "GraphDriver": {"Name": "hv-disk", "Data": None},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    })
    return doc


class _Chunks(io.RawIOBase):
    """A writable file whose bytes come out of `get()` in chunks of about CHUNK bytes: the
    facade's save writes on a thread of its own, the response yields the chunks. `cancel()`
    (the client went away) makes the next write fail, so the writer stops."""

    CHUNK = 256 * 1024
    DONE = object()

    def __init__(self) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=8)
        self.buf = bytearray()
        self.cancelled = threading.Event()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.buf += data
        if len(self.buf) >= self.CHUNK:
            self._put(bytes(self.buf))
            self.buf.clear()
        return len(data)

    STALL = 600.0  # seconds a client may read nothing before the save gives up on it

    def _put(self, item: object) -> None:
        deadline = time.monotonic() + self.STALL
        while True:
            if self.cancelled.is_set() or time.monotonic() > deadline:
                raise BrokenPipeError("the client went away")
            try:
                self.q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        if self.buf:
            self._put(bytes(self.buf))
            self.buf.clear()
        self._put(self.DONE)

    def fail(self, e: BaseException) -> None:
        with contextlib.suppress(BrokenPipeError):
            self._put(e)

    def cancel(self) -> None:
        self.cancelled.set()
        with contextlib.suppress(queue.Empty):
            while True:  # unblock a writer waiting on a full queue
                self.q.get_nowait()


def routes(svc) -> list:
    engine = svc.engine

    # --- images ------------------------------------------------------------------------

    def images_list(req: Request) -> Response:
        filters = req.filters()
        users: dict[str, int] = {}
        for c in engine.containers(all=True):
            users[c.record.image_id] = users.get(c.record.image_id, 0) + 1
        out = []
        for img in engine.images.list():
            if filters.get("reference") and not any(
                    _matches(ref, tag) for ref in filters["reference"] for tag in img.repo_tags):
                continue
            if filters.get("dangling") and (filters["dangling"][0] in ("true", "1")) != (
                    not img.repo_tags):
                continue
            out.append(image_summary(img, users.get(img.id, 0)))
        return json_response(out)

    def image_get(req: Request, name: str) -> Response:
        return json_response(image_inspect(engine.images.get(name)))

    def image_pull(req: Request) -> Response:
        src = req.arg("fromImage")
        if not src:
            if req.arg("fromSrc"):
                raise HttpError(501, "hv does not import root filesystem tarballs yet "
                                "(use 'docker load' / 'hv load' for image archives)")
            raise HttpError(400, "fromImage is required")
        tag = req.arg("tag") or ""
        if tag and "@" not in src and not re.search(r":[^/]+$", src):
            src = f"{src}@{tag}" if tag.startswith("sha256:") else f"{src}:{tag}"
        events: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                engine.pull_image(src, events.put)
            except HvError as e:
                events.put(e)
            except Exception as e:  # noqa: BLE001 - the stream must say it
                events.put(HvError(f"pull failed: {type(e).__name__}: {e}"))
            events.put(None)

        threading.Thread(target=work, daemon=True, name="hv-api-pull").start()

        def body() -> Iterator[bytes]:
            while True:
                item = events.get()
                if item is None:
                    return
                if isinstance(item, HvError):
                    yield _line({"errorDetail": {"message": item.message},
                                 "error": item.message})
                    continue
                yield _line(pull_event(item))
        return Response(200, content_type="application/json", stream=body())

    def image_remove(req: Request, name: str) -> Response:
        done = engine.remove_image(name, force=req.flag("force"))
        return json_response([{kind: value} for kind, value in done])

    def image_tag(req: Request, name: str) -> Response:
        repo = req.arg("repo")
        if not repo:
            raise HttpError(400, "repo is required")
        tag = req.arg("tag") or "latest"
        engine.tag_image(name, f"{repo}:{tag}")
        return Response(201)

    def image_save(req: Request, name: str | None = None) -> Response:
        names = [name] if name is not None else [n for n in req.query.get("names", []) if n]
        if not names:
            raise HttpError(400, "no images given: use /images/get?names=IMAGE")
        pipe = _Chunks()

        def work() -> None:
            try:
                engine.image_save(names, pipe, "docker")
                pipe.finish()
            except BrokenPipeError:
                pass
            except BaseException as e:  # noqa: BLE001 - the response must learn of it
                pipe.fail(e)

        threading.Thread(target=work, daemon=True, name="hv-api-save").start()
        first = pipe.q.get()
        if isinstance(first, BaseException):
            raise first  # before any byte: a status of its own (404 for a missing image)
        if req.method == "HEAD":
            pipe.cancel()
            return Response(200, content_type="application/x-tar")

        def body() -> Iterator[bytes]:
            item = first
            try:
                while item is not _Chunks.DONE:
                    if isinstance(item, BaseException):
                        LOG.error("save of %s failed after it began: %s", names, item)
                        # no end chunk: the client sees a truncated body, not a short tar
                        raise ConnectionAbortedError(str(item))
                    yield item
                    item = pipe.q.get()
            finally:
                pipe.cancel()
        return Response(200, content_type="application/x-tar", stream=body())

    def image_load(req: Request) -> Response:
        assert req.reader is not None
        try:
            lines = engine.image_load(io.BufferedReader(req.reader, 1 << 20), "the request body")
        except HvError as e:
            # dockerd answers 200 and the error as a line (docker load, docker-py raise it)
            return Response(200, content_type="application/json", stream=iter(
                [_line({"errorDetail": {"message": e.message}, "error": e.message})]))
        return Response(200, content_type="application/json", stream=iter(
            [_line({"stream": line + "\n"}) for line in lines]))

    def image_history(req: Request, name: str) -> Response:
        return json_response([row.to_api() for row in engine.image_history(name)])

    def images_prune(req: Request) -> Response:
        """Images no container uses: untagged ones, every one with dangling=false."""
        filters = req.filters()
        everything = any(v.lower() in ("false", "0") for v in filters.get("dangling", []))
        used = {c.record.image_id for c in engine.containers(all=True)}
        deleted, space = [], 0
        for img in engine.images.list():
            if img.id in used or (img.repo_tags and not everything):
                continue
            try:
                done = engine.remove_image(img.id, force=len(img.repo_tags) > 1)
            except HvError:
                continue
            deleted += [{kind: value} for kind, value in done]
            space += img.size
        return json_response({"ImagesDeleted": deleted or None, "SpaceReclaimed": space})

    def system_df(req: Request) -> Response:
        cs = engine.containers(all=True)
        used: dict[str, int] = {}
        for c in cs:
            used[c.record.image_id] = used.get(c.record.image_id, 0) + 1
        users = engine.volume_users()
        return json_response({
            "LayersSize": sum(i.size for i in engine.images.list()),
            "Images": [dict(image_summary(i, used.get(i.id, 0)), SharedSize=0)
                       for i in engine.images.list()],
            "Containers": [dict(summary(c, c.inspect(), {}), SizeRw=0, SizeRootFs=0) for c in cs],
            "Volumes": [dict(v.inspect(), UsageData={"Size": -1,
                                                     "RefCount": len(users.get(v.name, []))})
                        for v in engine.volume_list()],
            "BuildCache": [],
        })

    # --- volumes -----------------------------------------------------------------------

    def volumes_list(req: Request) -> Response:
        filters = req.filters()
        engine.containers(all=True)  # drops vanished containers first (their volumes)
        users = engine.volume_users()
        out = []
        for v in engine.volume_list():
            if filters.get("name") and not any(n in v.name for n in filters["name"]):
                continue
            if filters.get("dangling"):
                want = filters["dangling"][0].lower() in ("true", "1")
                if want == bool(users.get(v.name)):
                    continue
            out.append(v.inspect())
        return json_response({"Volumes": out, "Warnings": []})

    def volume_create(req: Request) -> Response:
        body = req.json_object()
        driver = body.get("Driver") or "local"
        if driver != "local":
            raise HttpError(400, f"volume driver {driver!r} is not supported: hv has 'local'")
        if body.get("DriverOpts"):
            raise HttpError(400, "driver options are not supported by hv's local driver")
        labels = body.get("Labels") or {}
        name = body.get("Name") or None
        if not isinstance(labels, dict) or not isinstance(name, str | None):
            raise HttpError(400, "Name must be a string and Labels an object")
        v = engine.volume_create(name, {str(k): str(v) for k, v in labels.items()})
        return json_response(v.inspect(), 201)

    def volume_get(req: Request, name: str) -> Response:
        return json_response(engine.volume(name).inspect())

    def volume_remove(req: Request, name: str) -> Response:
        engine.containers(all=True)
        engine.volume_remove(name, force=req.flag("force"))
        return Response(204)

    def volume_prune(req: Request) -> Response:
        filters = req.filters()
        everything = any(v.lower() in ("true", "1") for v in filters.get("all", []))
        engine.containers(all=True)
        names, space = engine.volume_prune(all=everything)
        return json_response({"VolumesDeleted": names or None, "SpaceReclaimed": space})

    NAME = r"(?P<name>.+)"
    return [
        ("GET", "/images/json", images_list),
        ("POST", "/images/prune", images_prune),
        ("GET", "/system/df", system_df),
        ("POST", "/images/create", image_pull),
        ("GET", "/images/get", image_save),
        ("POST", "/images/load", image_load),
        ("GET", f"/images/{NAME}/get", image_save),
        ("GET", f"/images/{NAME}/history", image_history),
        ("GET", f"/images/{NAME}/json", image_get),
        ("POST", f"/images/{NAME}/tag", image_tag),
        ("DELETE", f"/images/{NAME}", image_remove),
        ("GET", "/volumes", volumes_list),
        ("POST", "/volumes/create", volume_create),
        ("POST", "/volumes/prune", volume_prune),
        ("GET", r"/volumes/(?P<name>[^/]+)", volume_get),
        ("DELETE", r"/volumes/(?P<name>[^/]+)", volume_remove),
    ]


def _matches(pattern: str, tag: str) -> bool:
    """Docker's `reference` filter: a glob on the familiar name, with or without the tag."""
    from fnmatch import fnmatchcase

    name = tag.rsplit(":", 1)[0] if ":" in tag.split("/")[-1] else tag
    return fnmatchcase(tag, pattern) or fnmatchcase(name, pattern)
