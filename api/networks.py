"""/networks: Docker's network endpoints over the facade's `network_*` verbs.

Statuses as dockerd answers: a duplicate name 409, no such network 404, removing a network
with endpoints or a predefined one 403 (libnetwork's errors are Forbidden), connecting a
container twice 403. Connect/disconnect of a running container hot-plugs or unplugs its NIC
(the facade's; docs/networks.md) — except on a container created through the API and not
started yet (`Service.fresh`): hv's create booted its VM already, so that VM is stopped, the
endpoint changed, and `start` boots it again with its networks (compose and docker-py
connect between create and start, and expect the command to start on those networks).
"""

from __future__ import annotations

import contextlib

from api.http import HttpError, Request, Response, json_response
from hv.errors import Conflict, HvError, UsageError


def _forbidden(e: Conflict) -> HttpError:
    return HttpError(403, e.message)


def routes(svc) -> list:
    engine = svc.engine
    ID = r"(?P<ref>[^/]+)"

    def list_(req: Request) -> Response:
        checks = _filters(req.filters())
        nets = [n for n in engine.network_list() if all(c(n) for c in checks)]
        return json_response([n.to_inspect() for n in nets])

    def inspect(req: Request, ref: str) -> Response:
        return json_response(engine.network_inspect(ref))

    def create(req: Request) -> Response:
        body = req.json_object()
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            raise HttpError(400, "network name is required")
        ipam = body.get("IPAM") or {}
        if not isinstance(ipam, dict):
            raise HttpError(400, "invalid IPAM: want an object")
        config = ipam.get("Config") or []
        if not isinstance(config, list) or not all(isinstance(c, dict) for c in config):
            raise HttpError(400, "invalid IPAM.Config: want a list of objects")
        v4 = [c for c in config if ":" not in (c.get("Subnet") or "")]
        if len(v4) > 1 or len(config) > len(v4):
            raise HttpError(400, "hv networks take one IPv4 subnet (IPAM.Config: one entry)")
        if body.get("EnableIPv6"):
            raise HttpError(400, "hv networks are IPv4 only (EnableIPv6)")
        labels = body.get("Labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise HttpError(400, "invalid Labels: want an object of strings")
        first = v4[0] if v4 else {}
        net = engine.network_create(
            name, driver=body.get("Driver") or "bridge", subnet=first.get("Subnet") or None,
            gateway=first.get("Gateway") or None, internal=bool(body.get("Internal")),
            labels=labels)
        return json_response({"Id": net.id, "Warning": ""}, 201)

    def remove(req: Request, ref: str) -> Response:
        try:
            engine.network_remove(ref)
        except Conflict as e:  # predefined, or active endpoints: Forbidden in dockerd
            raise _forbidden(e) from None
        return Response(204)

    def prune(req: Request) -> Response:
        if req.filters():
            raise HttpError(400, "hv's network prune takes no filters yet")
        return json_response({"NetworksDeleted": engine.network_prune()})

    def connect(req: Request, ref: str) -> Response:
        body = req.json_object()
        container = _container(body)
        cfg = body.get("EndpointConfig") or {}
        if not isinstance(cfg, dict):
            raise HttpError(400, "invalid EndpointConfig: want an object")
        aliases = cfg.get("Aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise HttpError(400, "invalid EndpointConfig.Aliases: want a list of strings")
        ip = (cfg.get("IPAMConfig") or {}).get("IPv4Address") or None
        engine.network(ref)  # 404 before anything is stopped
        c = _unstarted(engine, svc, container)
        try:
            engine.network_connect(ref, c.id, aliases, ip)
        except Conflict as e:
            if "already exists" in e.message:
                raise _forbidden(e) from None
            raise
        return Response(200)

    def disconnect(req: Request, ref: str) -> Response:
        body = req.json_object()
        container = _container(body)
        engine.network(ref)
        c = _unstarted(engine, svc, container)
        engine.network_disconnect(ref, c.id, force=bool(body.get("Force")))
        return Response(200)

    return [
        ("GET", "/networks", list_),
        ("POST", "/networks/create", create),
        ("POST", "/networks/prune", prune),
        ("GET", f"/networks/{ID}", inspect),
        ("DELETE", f"/networks/{ID}", remove),
        ("POST", f"/networks/{ID}/connect", connect),
        ("POST", f"/networks/{ID}/disconnect", disconnect),
    ]


def _container(body: dict) -> str:
    c = body.get("Container")
    if not isinstance(c, str) or not c:
        raise HttpError(400, "Container is required")
    return c


def _unstarted(engine, svc, ref: str):
    """The container; when the API created it and nobody started it yet, its VM (booted by
    hv's create) is stopped first, so the change applies at `start` (see the docstring),
    unless it is AutoRemove (a stop would remove it): then the NIC is hot-plugged."""
    c = engine.container(ref)
    if c.id in svc.fresh and c.active:
        if svc.reaper.watching(c.id):  # AutoRemove: stopping it would remove it, so the
            return c                     # NIC is hot-plugged into the running VM instead
        svc.fresh.discard(c.id)
        svc.await_attach.discard(c.id)
        with contextlib.suppress(HvError):
            engine.kill(c.id, "KILL")
        c = engine.container(c.id)
    return c


def _filters(filters: dict[str, list[str]]) -> list:
    """Docker's /networks filters: name (substring), id (prefix), driver, label=K[=V],
    type=custom|builtin, dangling=true|false."""
    checks = []
    for key, values in filters.items():
        if key == "name":
            checks.append(lambda n, vs=values: any(v in n.name for v in vs))
        elif key == "id":
            checks.append(lambda n, vs=values: any(n.id.startswith(v) for v in vs))
        elif key == "driver":
            checks.append(lambda n, vs=values: n.driver in vs)
        elif key == "label":
            for value in values:
                k, has_v, val = value.partition("=")
                checks.append(lambda n, k=k, has_v=has_v, val=val:
                              k in n.labels and (not has_v or n.labels[k] == val))
        elif key == "type":
            bad = [v for v in values if v not in ("custom", "builtin")]
            if bad:
                raise UsageError(f"invalid filter 'type={bad[0]}'")
            checks.append(lambda n, vs=values: ("custom" if n.user_defined else "builtin")
                          in vs)
        elif key == "dangling":
            if len(values) != 1 or values[0].lower() not in ("true", "false", "1", "0"):
                raise UsageError(f"invalid filter 'dangling={','.join(values)}'")
            want = values[0].lower() in ("true", "1")
            checks.append(lambda n, want=want: (n.user_defined and not n.endpoints) == want)
        else:
            raise UsageError(f"invalid filter '{key}'")
    return checks
