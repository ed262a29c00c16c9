"""`hv system service [ADDRESS]`: serve Docker's Engine API in the foreground.

The CLI's Config (its flags and environment, read once) goes to api/, which reads none.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Annotated

import typer

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "warn": logging.WARNING, "error": logging.ERROR}


def _default_address(config) -> str:
    return f"unix://{config.root / 'hv.sock'}"


def service(
    address: Annotated[str | None, typer.Argument(
        help="unix:///path/to.sock or tcp://127.0.0.1:PORT (loopback only: no TLS yet); "
             "default: unix://STATE_ROOT/hv.sock (STATE_ROOT is $HV_ROOT, /var/lib/hv as root)")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error")] = "info",
) -> None:
    """Serve Docker's Engine API (docker, docker-py, docker-compose) until SIGTERM/^C.

    Containers are VMs of their own: they keep running when the service stops.
    """
    from hv.errors import UsageError

    level = LEVELS.get(log_level.lower())
    if level is None:
        raise UsageError(f"invalid --log-level {log_level!r}", hint="use debug, info, warning or error")
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    from api.app import build
    from api.server import Server, parse_address
    from cli.session import current

    config = current().config
    addr = parse_address(address or _default_address(config))
    svc = build(config)
    server = Server(addr, svc.handle, svc.on_error)

    def stop(_signum, _frame) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.getLogger("hv.api").info("listening on %s (export DOCKER_HOST=%s)", addr, addr)
    server.serve_forever()
    logging.getLogger("hv.api").info("stopped; containers keep running")


def register(app: typer.Typer) -> None:
    """Add `service` to the `hv system` group (made by cli.volume_cmds)."""
    group = next(g for g in app.registered_groups if g.name == "system")
    group.typer_instance.command(name="service")(service)
