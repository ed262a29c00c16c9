"""`hv network create|ls|inspect|rm|prune|connect|disconnect`: Docker's verbs, exit 1 on
error as `docker network` does.

Only typer at module level; the engine loads inside the commands.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

NETWORK_COLUMNS = [("NETWORK ID", "ID"), ("NAME", "Name"), ("DRIVER", "Driver"),
                   ("SCOPE", "Scope")]


def _engine():
    from cli.session import engine

    return engine()


def _labels(items: list[str]) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in items)


def create(
    name: Annotated[str, typer.Argument(metavar="NETWORK")],
    driver: Annotated[str, typer.Option("-d", "--driver", help="driver (bridge)")] = "bridge",
    subnet: Annotated[list[str] | None, typer.Option("--subnet", help="IPv4 subnet in CIDR form")] = None,
    gateway: Annotated[list[str] | None, typer.Option("--gateway", help="IPv4 gateway of the subnet")] = None,
    internal: Annotated[bool, typer.Option("--internal", help="no outbound access")] = False,
    label: Annotated[list[str] | None, typer.Option("--label", help="set metadata")] = None,
) -> None:
    """Create a network."""
    from hv.errors import UsageError

    if len(subnet or []) > 1 or len(gateway or []) > 1:
        raise UsageError("hv networks take one IPv4 subnet", hint="give --subnet once",
                         exit_code=1)
    net = _engine().network_create(name, driver=driver, subnet=(subnet or [None])[0],
                                   gateway=(gateway or [None])[0], internal=internal,
                                   labels=_labels(list(label or [])))
    sys.stdout.write(net.id + "\n")


def _filters(items: list[str]):
    """Docker's `network ls -f`: name= (substring), id= (prefix), driver=, label=K[=V],
    dangling=true|false (user-defined networks without containers), type=custom|builtin."""
    from hv.errors import UsageError

    checks = []
    for f in items:
        key, eq, value = f.partition("=")
        key = key.strip().lower()
        if not eq:
            raise UsageError(f"bad format of filter (expected name=value): {f}",
                             hint="use -f name=NAME, -f driver=bridge, -f dangling=true",
                             exit_code=1)
        if key == "name":
            checks.append(lambda n, v=value: v in n.name)
        elif key == "id":
            checks.append(lambda n, v=value: n.id.startswith(v))
        elif key == "driver":
            checks.append(lambda n, v=value: n.driver == v)
        elif key == "label":
            k, has_v, val = value.partition("=")
            checks.append(lambda n, k=k, has_v=has_v, val=val:
                          k in n.labels and (not has_v or n.labels[k] == val))
        elif key == "dangling":
            if value.lower() not in ("true", "false", "1", "0"):
                raise UsageError(f"invalid filter 'dangling={value}'",
                                 hint="use dangling=true or dangling=false", exit_code=1)
            want = value.lower() in ("true", "1")
            checks.append(lambda n, want=want: (n.user_defined and not n.endpoints) == want)
        elif key == "type":
            if value not in ("custom", "builtin"):
                raise UsageError(f"invalid filter 'type={value}'",
                                 hint="use type=custom or type=builtin", exit_code=1)
            checks.append(lambda n, v=value: n.user_defined == (v == "custom"))
        else:
            raise UsageError(f"invalid filter '{key}'",
                             hint="filters: name, id, driver, label, dangling, type",
                             exit_code=1)
    return checks


def ls(
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="only network ids")] = False,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="full ids")] = False,
    filter: Annotated[list[str] | None, typer.Option("-f", "--filter", help="name=, driver=, label=, dangling=, id=, type=")] = None,
    format: Annotated[str | None, typer.Option("--format", help="table, json or a Go template")] = None,
) -> None:
    """List networks."""
    from cli.formatting import render
    from hv.timefmt import rfc3339

    checks = _filters(list(filter or []))
    engine = _engine()
    engine.containers(all=True)  # drops vanished `--rm -d` containers' endpoints first
    nets = [n for n in engine.network_list() if all(c(n) for c in checks)]
    nets.sort(key=lambda n: n.name)
    short = (lambda i: i) if no_trunc else (lambda i: i[:12])
    if quiet:
        sys.stdout.write("".join(short(n.id) + "\n" for n in nets))
        return
    rows = [{"ID": short(n.id), "Name": n.name, "Driver": n.driver, "Scope": "local",
             "IPv6": "false", "Internal": str(n.internal).lower(),
             "Labels": ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())),
             "CreatedAt": rfc3339(n.created)} for n in nets]
    render(sys.stdout, rows, NETWORK_COLUMNS, format)


def inspect(
    names: Annotated[list[str], typer.Argument(metavar="NETWORK...")],
    format: Annotated[str | None, typer.Option("-f", "--format", help="Go template")] = None,
) -> None:
    """Display detailed information on networks."""
    from cli.containers_view import write_inspect
    from cli.errors import print_error
    from hv.errors import HvError

    engine = _engine()
    docs, failed = [], False
    for name in names:
        try:
            docs.append(engine.network_inspect(name))
        except HvError as e:
            print_error(e)
            failed = True
    write_inspect(docs, format)
    if failed:
        raise typer.Exit(1)


def rm(
    names: Annotated[list[str], typer.Argument(metavar="NETWORK...")],
    force: Annotated[bool, typer.Option("-f", "--force", help="no error for a missing network")] = False,
) -> None:
    """Remove networks (never one with containers on it)."""
    from cli.errors import each
    from hv.errors import NetworkNotFound

    engine = _engine()

    def remove(name: str):
        try:
            return engine.network_remove(name)
        except NetworkNotFound:
            if force:
                return None
            raise

    each(names, remove)


def prune(
    force: Annotated[bool, typer.Option("-f", "--force", help="do not ask")] = False,
) -> None:
    """Remove all user-defined networks no container is on."""
    from cli.volume_cmds import _confirm

    if not _confirm("WARNING! This will remove all custom networks not used by at least one "
                    "container.", force, "network prune"):
        return
    names = _engine().network_prune()
    if names:
        sys.stdout.write("Deleted Networks:\n" + "".join(n + "\n" for n in names) + "\n")


def connect(
    network: Annotated[str, typer.Argument(metavar="NETWORK")],
    container: Annotated[str, typer.Argument(metavar="CONTAINER")],
    alias: Annotated[list[str] | None, typer.Option("--alias", help="network-scoped alias")] = None,
    ip: Annotated[str | None, typer.Option("--ip", help="IPv4 address")] = None,
) -> None:
    """Connect a (stopped) container to a network: its NIC comes at the next start."""
    _engine().network_connect(network, container, list(alias or []), ip)


def disconnect(
    network: Annotated[str, typer.Argument(metavar="NETWORK")],
    container: Annotated[str, typer.Argument(metavar="CONTAINER")],
    force: Annotated[bool, typer.Option("-f", "--force", help="no error when not connected")] = False,
) -> None:
    """Disconnect a (stopped) container from a network."""
    _engine().network_disconnect(network, container, force=force)


def register(app: typer.Typer) -> None:
    """`hv network ...`."""
    group = typer.Typer(help="Manage networks.", no_args_is_help=True)
    for name, func in (("create", create), ("ls", ls), ("list", ls), ("inspect", inspect),
                       ("rm", rm), ("remove", rm), ("prune", prune), ("connect", connect),
                       ("disconnect", disconnect)):
        group.command(name=name)(func)
    app.add_typer(group, name="network")
