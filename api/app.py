"""The Engine API's routes: Docker's paths (with or without `/vX.Y`) → the engine facade.

This module only translates: it parses what Docker's clients send, calls
`hv.engine.Engine`, and answers in Docker's shapes and status codes. The engine is made
here, once (`build`); everything the service remembers between requests lives on the
`Service` object (no module state).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from api import containers, images, networks, system
from api.http import HttpError, Request, Response, error_response
from hv.errors import HvError, NotModified

LOG = logging.getLogger("hv.api")

API_VERSION = (1, 50)
MIN_API_VERSION = (1, 24)
_VERSIONED = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")

Handler = Callable[..., Response]


@dataclass
class Route:
    method: str
    pattern: re.Pattern
    handler: Handler


class Live:
    """Streams in progress, so a resize reaches them: container id / exec id → streams."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, set] = {}

    def add(self, key: str, stream) -> None:
        with self._lock:
            self._by_key.setdefault(key, set()).add(stream)

    def remove(self, key: str, stream) -> None:
        with self._lock:
            streams = self._by_key.get(key)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    del self._by_key[key]

    def get(self, key: str) -> list:
        with self._lock:
            return list(self._by_key.get(key, ()))


class Reaper:
    """`AutoRemove` containers made through the API: dockerd removes them when they exit,
    so the service does, after reading their exit code (which `wait` then answers)."""

    # a client that created a container and never starts it: how long its exit waits
    UNSTARTED_GRACE = 60.0
    # after the start, how long the removal waits for a client's wait to be there
    WAITER_GRACE = 5.0

    def __init__(self, engine, unstarted: Callable[[str], bool] = lambda cid: False) -> None:
        self.engine = engine
        # created and not started by its client yet (Service.fresh): hv's create boots the
        # VM at once, and a warm one (the pool) may run a short command to its end before
        # the client's attach and start arrive; removing it then answered that attach 404
        self._unstarted = unstarted
        self._lock = threading.Lock()
        self._done: dict[str, threading.Event] = {}
        self._codes: dict[str, int | None] = {}
        self._readers: dict[str, int] = {}  # attach replays still reading the output
        self._waited: set[str] = set()  # containers a client waits on

    @contextlib.contextmanager
    def reading(self, cid: str) -> Iterator[None]:
        """While an attach replays a container's output, its removal waits (its folder
        holds the output)."""
        with self._lock:
            self._readers[cid] = self._readers.get(cid, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._readers[cid] -= 1

    def watch(self, container) -> None:
        with self._lock:
            self._done[container.id] = threading.Event()
        threading.Thread(target=self._run, args=(container,), daemon=True,
                         name=f"hv-api-reap-{container.short_id}").start()

    def _run(self, container) -> None:
        code = None
        try:
            code = self.engine.wait(container.id).status_code
        except HvError:
            pass
        finally:
            self._codes[container.id] = code
            deadline = time.monotonic() + self.UNSTARTED_GRACE
            while self._unstarted(container.id) and time.monotonic() < deadline:
                time.sleep(0.02)
            # the docker CLI sends its wait (condition=removed) from a goroutine, which may
            # arrive after the start; a container already done by then (warm, short) would
            # be gone and the wait answered 404
            deadline = time.monotonic() + self.WAITER_GRACE
            while container.id not in self._waited and time.monotonic() < deadline:
                time.sleep(0.02)
            deadline = time.monotonic() + 10
            while self._readers.get(container.id) and time.monotonic() < deadline:
                time.sleep(0.02)
            try:
                self.engine.finish_run(container)
            except HvError as e:
                LOG.warning("removing %s: %s", container.name, e)
            self._done[container.id].set()
            self._waited.discard(container.id)

    def watching(self, cid: str) -> bool:
        return cid in self._done

    def exit_code(self, cid: str, gone: Callable[[], bool]) -> int | None:
        """The exit code once the container exited and was removed (None: the client left)."""
        self._waited.add(cid)
        done = self._done[cid]
        while not done.wait(0.2):
            if gone():
                return None
        return self._codes.get(cid)


class Service:
    """The routes and what the service keeps between requests."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.live = Live()
        # one create at a time: Engine.create checks the name and picks a random one with
        # no lock, and makes an image's overlay template under a per-process temporary name
        # (two threads collided on it); a create is ~1 s and libvirt's root serializes the
        # boots anyway
        self.creating = threading.Lock()
        # created through the API and not started yet: hv's create boots the VM at once, so
        # an attach before `start` replays the output from the beginning
        self.fresh: set[str] = set()
        self.reaper = Reaper(engine, unstarted=lambda cid: cid in self.fresh)
        # created for a client that will attach stdin: the guest waits for that attach
        self.await_attach: set[str] = set()
        # copies out of a container still finishing (a stopped one's maintenance VM)
        self._copies: dict[str, list[threading.Event]] = {}
        self._copies_lock = threading.Lock()
        self.routes: list[Route] = []
        for module in (system, containers, images, networks):
            for method, path, handler in module.routes(self):
                self.routes.append(Route(method, re.compile(f"^{path}$"), handler))
        # requests whose body goes to the handler as a stream (an image tarball)
        self.streamed_bodies = [(method, re.compile(f"^{path}$"))
                                for method, path in images.STREAMED_BODIES]

    def streamed(self, method: str, target: str) -> bool:
        """Whether this request's body is streamed to its handler (api.http.Conn)."""
        path = target.partition("?")[0]
        m = _VERSIONED.match(path)
        if m:
            path = m.group(3)
        return any(method == want and pattern.match(path)
                   for want, pattern in self.streamed_bodies)

    def copying(self, cid: str) -> threading.Event:
        """An event to set when a copy out of `cid` is over (see `settle`)."""
        done = threading.Event()
        with self._copies_lock:
            pending = [e for e in self._copies.get(cid, []) if not e.is_set()]
            self._copies[cid] = pending + [done]
        return done

    def settle(self, cid: str, timeout: float = 120.0) -> None:
        """Wait for copies out of `cid` to be over: `docker cp` stops reading at the tar's
        end, and its next command (`start`) must not find the maintenance VM still up."""
        with self._copies_lock:
            pending = self._copies.pop(cid, [])
        deadline = time.monotonic() + timeout
        for e in pending:
            e.wait(max(0.0, deadline - time.monotonic()))

    # --- dispatch -------------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        m = _VERSIONED.match(req.path)
        if m:
            version = (int(m.group(1)), int(m.group(2)))
            if version < MIN_API_VERSION:
                raise HttpError(400, f"client version {m.group(1)}.{m.group(2)} is too old. "
                                "Minimum supported API version is 1.24, please upgrade your "
                                "client to a newer version")
            if version > API_VERSION:
                raise HttpError(400, f"client version {m.group(1)}.{m.group(2)} is too new. "
                                "Maximum supported API version is 1.50")
            req.version = version
            req.path = m.group(3)
        allowed = False
        for route in self.routes:
            match = route.pattern.match(req.path)
            if not match:
                continue
            if route.method != req.method and not (route.method == "GET" and
                                                   req.method == "HEAD"):
                allowed = True
                continue
            return route.handler(req, **match.groupdict())
        if allowed:
            raise HttpError(405, f"method {req.method} is not allowed on {req.path}")
        raise HttpError(404, f"page not found: {req.method} {req.path} is not an endpoint "
                        "hv implements")

    def on_error(self, req: Request | None, e: BaseException) -> Response:
        if isinstance(e, NotModified):
            return Response(304)
        if isinstance(e, HttpError):
            return error_response(e.status, e.message)
        if isinstance(e, HvError):
            return error_response(e.http_status, e.message)
        LOG.error("internal error on %s %s:\n%s", req.method if req else "?",
                  req.target if req else "?", traceback.format_exc())
        return error_response(500, f"internal error: {type(e).__name__}: {e}")


def build(config) -> Service:
    """The service over a new engine for `config` (hv.config.Config, built by the CLI from
    its flags and environment): the one place the API makes an Engine."""
    from hv.engine import Engine

    engine = Engine(config)
    engine.adopt_vms()
    threading.Thread(target=_reaper, args=(engine,), daemon=True, name="hv-api-reap").start()
    return Service(engine)


def _reaper(engine) -> None:
    """The adopted QEMUs' exits, reaped within 50 ms whatever the other threads do."""
    while True:
        with contextlib.suppress(OSError):
            engine.reap_vms()
        time.sleep(0.05)
