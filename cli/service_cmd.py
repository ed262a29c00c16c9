"""`hv system service [ADDRESS]`: serve Docker's Engine API in the foreground.

The CLI's Config (its flags and environment, read once) goes to api/, which reads none.
"""

from __future__ import annotations

import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "warn": logging.WARNING, "error": logging.ERROR}


def _default_address(config) -> str:
    return f"unix://{config.root / 'hv.sock'}"


def service(
    address: Annotated[str | None, typer.Argument(
        help="unix:///path/to.sock, tcp://127.0.0.1:PORT, or tcp://HOST:PORT with all three "
             "--tls-* files (mutual TLS); default: unix://STATE_ROOT/hv.sock (STATE_ROOT is "
             "$HV_ROOT, /var/lib/hv as root)")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error")] = "info",
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", help="the server's TLS certificate (PEM), as dockerd's --tlscert")] = None,
    tls_key: Annotated[Path | None, typer.Option(
        "--tls-key", help="the server's TLS private key (PEM), as dockerd's --tlskey")] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        "--tls-ca", help="accept only clients with a certificate signed by this CA (PEM): "
                         "mutual TLS, as dockerd's --tlsverify --tlscacert")] = None,
    pool: Annotated[int | None, typer.Option(
        "--pool", help="pooled VMs kept booted per image for warm starts (default $HV_POOL, "
                       "else 0; each idle one holds about 150 MB of host memory under TCG); the "
                       "service empties its pool when it stops")] = None,
) -> None:
    """Serve Docker's Engine API (docker, docker-py, docker-compose) until SIGTERM/^C.

    Containers are VMs of their own: they keep running when the service stops.

    TCP is loopback only unless the service has mutual TLS: a non-loopback address needs
    --tls-cert, --tls-key and --tls-ca (clients then need a certificate from that CA:
    docker --tlsverify, DOCKER_TLS_VERIFY=1). --tls-cert and --tls-key alone encrypt a
    loopback address without authenticating clients. TLS 1.2 or newer.
    """
    from hv.errors import UsageError

    level = LEVELS.get(log_level.lower())
    if level is None:
        raise UsageError(f"invalid --log-level {log_level!r}", hint="use debug, info, warning or error")
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    from api.app import build
    from api.server import Server, TlsFiles, parse_address, tls_context
    from cli.errors import print_error
    from cli.session import current

    config = current().config
    if pool is not None:
        if pool < 0:
            raise UsageError(f"invalid --pool {pool}", hint="give 0 or more VMs")
        config = replace(config, pool=pool)
    tls = TlsFiles(tls_cert, tls_key, tls_ca)
    try:
        addr = parse_address(address or _default_address(config), tls)
        context = tls_context(tls) if addr.tls else None  # bad files: refused before listening
    except UsageError as e:
        print_error(e)  # dockerd's exit code for a configuration it refuses to serve
        raise typer.Exit(125) from None
    svc = build(config)
    server = Server(addr, svc.handle, svc.on_error, svc.streamed, context)

    def stop(_signum, _frame) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if addr.tls:
        logging.getLogger("hv.api").info(
            "listening on %s with TLS%s (export DOCKER_HOST=%s DOCKER_TLS_VERIFY=1)", addr,
            ", client certificates required" if tls.mutual else "", addr)
    else:
        logging.getLogger("hv.api").info("listening on %s (export DOCKER_HOST=%s)", addr, addr)
    server.serve_forever()
    if config.pool:
        svc.engine.drain_pool()  # the pool it made goes with it
    logging.getLogger("hv.api").info("stopped; containers keep running")


def register(app: typer.Typer) -> None:
    """Add `service` to the `hv system` group (made by cli.volume_cmds)."""
    group = next(g for g in app.registered_groups if g.name == "system")
    group.typer_instance.command(name="service")(service)
