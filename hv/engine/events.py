"""Docker's events without a daemon: every hv process appends what it did to one journal
(JSON lines under the state root, as podman's file events backend does), and `events`
reads it back, following it for new lines.

What is recorded is what an hv process did or saw: create, start, stop, kill, pause,
unpause, destroy, restart, die (when a foreground run, `wait`, `attach` or a restart watcher
saw the exit), exec_create/exec_start/exec_die, image pull/tag/untag/delete/load/save, volume
create/destroy. A detached container that exits with nobody watching has its `die` written
by the next hv command that waits on it.

A part of the facade (hv.engine.Engine mixes it in); `self` is the Engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Event:
    type: str  # container | image | volume | network
    action: str  # start, die, pull, ...
    id: str
    attributes: dict = field(default_factory=dict)
    time_ns: int = 0

    def to_docker(self) -> dict:
        """The JSON line of Docker's /events (and `docker events --format json`)."""
        out = {"Type": self.type, "Action": self.action,
               "Actor": {"ID": self.id, "Attributes": dict(self.attributes)},
               "scope": "local", "time": self.time_ns // 1_000_000_000,
               "timeNano": self.time_ns}
        if self.type == "container":  # the pre-1.22 fields the CLI's template still offers
            out.update(status=self.action, id=self.id, **(
                {"from": self.attributes["image"]} if "image" in self.attributes else {}))
        return out

    def matches(self, filters: dict[str, list[str]]) -> bool:
        """Docker's event filters: type, event/action, container/image/volume (id or name),
        label."""
        def one(key: str, values: list[str]) -> bool:
            if key == "type":
                return self.type in values
            if key in ("event", "action"):
                return self.action in values or self.action.split(":")[0] in values
            if key in ("container", "image", "volume", "network"):
                return self.type == key and any(
                    self.id.startswith(v) or self.attributes.get("name") == v for v in values)
            if key == "label":
                return any(self.attributes.get(k) == v if v else k in self.attributes
                           for k, _, v in (x.partition("=") for x in values))
            return True

        return all(one(k, v) for k, v in filters.items() if v)


class Events:
    def _event(self, type: str, action: str, id: str, **attributes: str) -> None:
        """Append one event (best effort: a full disk must not fail the operation)."""
        line = json.dumps({"type": type, "action": action, "id": id,
                           "attributes": {k: str(v) for k, v in attributes.items()},
                           "time_ns": time.time_ns()}, separators=(",", ":")) + "\n"
        with contextlib.suppress(OSError):
            fd = os.open(self.paths.events_log(), os.O_WRONLY | os.O_APPEND | os.O_CREAT
                         | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line.encode())  # one write of < 4 KiB: lines never interleave
            finally:
                os.close(fd)

    def _container_event(self, action: str, c, **extra: str) -> None:
        """With the container's labels (docker-compose filters its events by them)."""
        self._event("container", action, c.id, **{**self.labels(c.id), "image": c.record.image,
                                                   "name": c.name, **extra})

    def events(self, since: float | None = None, until: float | None = None,
               filters: dict[str, list[str]] | None = None, follow: bool = True,
               poll: float = 0.1, stop: Callable[[], bool] | None = None) -> Iterator[Event]:
        """Events from `since` (epoch seconds; None: only new ones when following, all
        otherwise) until `until` (None: forever when following, or until `stop()`)."""
        path = self.paths.events_log()
        filters = filters or {}
        lo = None if since is None else int(since * 1e9)
        hi = None if until is None else int(until * 1e9)
        offset = 0
        if since is None and follow:
            with contextlib.suppress(OSError):
                offset = path.stat().st_size
        partial = b""
        while True:
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                data = b""
            offset += len(data)
            *lines, partial = (partial + data).split(b"\n")
            for raw in lines:
                try:
                    d = json.loads(raw)
                    ev = Event(d["type"], d["action"], d["id"], d.get("attributes", {}),
                               int(d["time_ns"]))
                except (ValueError, KeyError, TypeError):
                    continue
                if lo is not None and ev.time_ns < lo:
                    continue
                if hi is not None and ev.time_ns > hi:
                    return
                if ev.matches(filters):
                    yield ev
            if not follow or (hi is not None and time.time_ns() > hi) or (stop and stop()):
                return
            time.sleep(poll)
