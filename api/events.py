"""GET /events: Docker's event stream, for docker-compose and `docker events`.

Container events come from watching the container table (create, start, die with its
exit code, pause, unpause, destroy), so what the `hv` CLI does on the same root shows too;
image and volume events are published by the service's own handlers (`Bus.publish`). A
stream stays open until the client leaves or `until` passes; `since` replays what the bus
still holds (the last 1000 events of this service). The table is looked at twice a
second: a pause undone within that time shows no event.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator

POLL = 0.5


def event(kind: str, action: str, actor_id: str, attributes: dict[str, str],
          ts_ns: int | None = None) -> dict:
    ts_ns = time.time_ns() if ts_ns is None else ts_ns
    ev = {"Type": kind, "Action": action,
          "Actor": {"ID": actor_id, "Attributes": attributes},
          "scope": "local", "time": ts_ns // 1_000_000_000, "timeNano": ts_ns}
    if kind == "container":  # the pre-1.22 fields, still read by docker-compose v1
        ev.update(status=action, id=actor_id, **{"from": attributes.get("image", "")})
    return ev


class Bus:
    """Events the service's handlers publish, kept for `since` and woken listeners."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: deque[dict] = deque(maxlen=1000)

    def publish(self, kind: str, action: str, actor_id: str,
                attributes: dict[str, str] | None = None) -> None:
        with self._cond:
            self._events.append(event(kind, action, actor_id, dict(attributes or {})))
            self._cond.notify_all()

    def after(self, ts_ns: int) -> list[dict]:
        with self._cond:
            return [e for e in self._events if e["timeNano"] > ts_ns]

    def wait(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)


def _state(c) -> str:
    return c.state().status


def _attributes(c, labels: dict[str, str]) -> dict[str, str]:
    return {**labels, "image": c.record.image, "name": c.name}


def _matches(ev: dict, filters: dict[str, list[str]]) -> bool:
    attrs = ev["Actor"]["Attributes"]
    checks = {
        "type": lambda v: ev["Type"] == v,
        "event": lambda v: ev["Action"] == v,
        "container": lambda v: ev["Type"] == "container" and (
            ev["Actor"]["ID"].startswith(v) or attrs.get("name") == v),
        "image": lambda v: attrs.get("image") == v or (
            ev["Type"] == "image" and ev["Actor"]["ID"] == v),
        "volume": lambda v: ev["Type"] == "volume" and ev["Actor"]["ID"] == v,
        "label": lambda v: attrs.get(v.partition("=")[0]) == v.partition("=")[2]
        if "=" in v else v in attrs,
    }
    for key, values in filters.items():
        check = checks.get(key)
        if check is None:
            continue
        if key == "label":
            if not all(check(v) for v in values):
                return False
        elif not any(check(v) for v in values):
            return False
    return True


def stream(engine, bus: Bus, labels_of, filters: dict[str, list[str]], since: float,
           until: float, gone) -> Iterator[bytes]:
    """JSON lines until `until` (0: none) or the client leaves."""
    start_ns = time.time_ns()
    yield b""  # the headers go at once
    if since:
        for ev in bus.after(int(since * 1e9)):
            if _matches(ev, filters):
                yield json.dumps(ev).encode() + b"\n"
    seen_bus = start_ns
    known = {c.id: (c, _state(c)) for c in engine.containers(all=True)}
    while True:
        if until and time.time() >= until:
            return
        if gone():
            return
        out: list[dict] = []
        for ev in bus.after(seen_bus):
            seen_bus = max(seen_bus, ev["timeNano"])
            out.append(ev)
        now = {c.id: c for c in engine.containers(all=True)}
        for cid, c in now.items():
            st = _state(c)
            before = known.get(cid)
            attrs = _attributes(c, labels_of(cid))
            if before is None:
                out.append(event("container", "create", cid, attrs))
                if st in ("running", "paused"):
                    out.append(event("container", "start", cid, attrs))
                    st = "running"  # (QEMU starts paused: not a `pause` of the user's)
            elif before[1] != st:
                old = before[1]
                if st == "running" and old == "paused":
                    out.append(event("container", "unpause", cid, attrs))
                elif st == "paused":
                    out.append(event("container", "pause", cid, attrs))
                elif st == "running":
                    out.append(event("container", "start", cid, attrs))
                elif old in ("running", "paused"):
                    code = str(c.state().exit_code)
                    out.append(event("container", "die", cid, {**attrs, "exitCode": code}))
            known[cid] = (c, st)
        for cid in [cid for cid in known if cid not in now]:
            c, st = known.pop(cid)
            attrs = _attributes(c, {})
            if st in ("running", "paused"):
                out.append(event("container", "die", cid, attrs))
            out.append(event("container", "destroy", cid, attrs))
        for ev in out:
            if _matches(ev, filters):
                yield json.dumps(ev).encode() + b"\n"
        bus.wait(POLL)
