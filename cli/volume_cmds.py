"""`hv volume create|ls|inspect|rm|prune` and `hv system df|prune`.

Only typer at module level; hv.volumes and the engine load inside the commands.
"""

from __future__ import annotations

import re
import sys
from typing import Annotated

import typer

VOLUME_COLUMNS = [("DRIVER", "Driver"), ("VOLUME NAME", "Name")]
DF_COLUMNS = [("TYPE", "Type"), ("TOTAL", "TotalCount"), ("ACTIVE", "Active"),
              ("SIZE", "Size"), ("RECLAIMABLE", "Reclaimable")]


def _engine():
    from cli.session import engine

    return engine()


def _users() -> dict[str, list[str]]:
    """Volume -> containers using it, after the engine dropped vanished containers."""
    engine = _engine()
    engine.containers(all=True)  # garbage-collects exited `--rm -d` containers first
    return engine.volume_users()


def _confirm(warning: str, force: bool, what: str) -> bool:
    """Docker's prompt on a terminal; without one, -f is required (nothing is assumed)."""
    from hv.errors import UsageError

    if force:
        return True
    if not sys.stdin.isatty():
        raise UsageError(f"{what} needs confirmation, and there is no terminal to ask on",
                         hint=f"run 'hv {what} -f' to remove without asking")
    sys.stdout.write(f"{warning}\nAre you sure you want to continue? [y/N] ")
    sys.stdout.flush()
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


# --- volume ----------------------------------------------------------------------------------


def create(
    name: Annotated[str | None, typer.Argument(metavar="[VOLUME]")] = None,
    driver: Annotated[str, typer.Option("-d", "--driver", help="volume driver")] = "local",
    label: Annotated[list[str] | None, typer.Option("--label", help="set metadata")] = None,
    opt: Annotated[list[str] | None, typer.Option("-o", "--opt", help="driver options")] = None,
) -> None:
    """Create a volume."""
    from hv.errors import UsageError

    if driver != "local":
        raise UsageError(f"volume driver {driver!r} is not supported",
                         hint="hv has the 'local' driver only")
    if opt:
        raise UsageError("driver options (-o) are not supported by hv's local driver",
                         hint="create the volume without -o")
    labels = dict(item.partition("=")[::2] for item in (label or []))
    sys.stdout.write(_engine().volume_create(name, labels).name + "\n")


def _volume_filter(filters: list[str]):
    from hv.errors import UsageError

    checks = []
    for f in filters:
        key, eq, value = f.partition("=")
        key = key.strip().lower()
        if not eq:
            raise UsageError(f"bad format of filter (expected name=value): {f}",
                             hint="use -f dangling=true, -f name=NAME, -f label=KEY[=VALUE]")
        if key == "dangling":
            if value.lower() not in ("true", "false", "1", "0"):
                raise UsageError(f"invalid filter 'dangling={value}'",
                                 hint="use dangling=true or dangling=false")
            want = value.lower() in ("true", "1")
            checks.append(lambda v, used, want=want: (not used.get(v.name)) == want)
        elif key == "name":
            def by_name(v, used, value=value):
                try:
                    return re.search(value, v.name) is not None
                except re.error:
                    return value in v.name
            checks.append(by_name)
        elif key == "driver":
            checks.append(lambda v, used, value=value: v.driver == value)
        elif key == "label":
            k, has_v, val = value.partition("=")
            checks.append(lambda v, used, k=k, has_v=has_v, val=val:
                          k in v.labels and (not has_v or v.labels[k] == val))
        else:
            raise UsageError(f"invalid filter '{key}'",
                             hint="filters: dangling, name, driver, label")
    return checks


def ls(
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="only volume names")] = False,
    filter: Annotated[list[str] | None, typer.Option("-f", "--filter", help="dangling=true|false, name=, driver=, label=")] = None,
    format: Annotated[str | None, typer.Option("--format", help="table, json or a Go template")] = None,
) -> None:
    """List volumes."""
    from cli.formatting import render

    checks = _volume_filter(list(filter or []))
    used = _users()
    vols = [v for v in _engine().volume_list() if all(c(v, used) for c in checks)]
    if quiet:
        sys.stdout.write("".join(v.name + "\n" for v in vols))
        return
    rows = [{"Driver": v.driver, "Name": v.name, "Mountpoint": str(v.mountpoint),
             "Scope": "local", "Labels": ",".join(f"{k}={x}" for k, x in v.labels.items()),
             "Links": str(len(used.get(v.name, []))), "Size": "N/A"} for v in vols]
    render(sys.stdout, rows, VOLUME_COLUMNS, format)


def inspect(
    names: Annotated[list[str], typer.Argument(metavar="VOLUME...")],
    format: Annotated[str | None, typer.Option("-f", "--format", help="Go template")] = None,
) -> None:
    """Display detailed information on volumes."""

    from cli.containers_view import write_inspect
    from cli.errors import print_error
    from hv.errors import HvError

    docs, failed = [], False
    for name in names:
        try:
            docs.append(_engine().volume(name).inspect())
        except HvError as e:
            print_error(e)
            failed = True
    write_inspect(docs, format)
    if failed:
        raise typer.Exit(1)


def rm(
    names: Annotated[list[str], typer.Argument(metavar="VOLUME...")],
    force: Annotated[bool, typer.Option("-f", "--force", help="no error for a missing volume "
                                        "(a volume in use is still refused, as in Docker)")] = False,
) -> None:
    """Remove volumes (never one a container uses)."""
    from cli.errors import each

    engine = _engine()
    engine.containers(all=True)  # drop vanished `--rm -d` containers first
    each(names, lambda name: engine.volume_remove(name, force=force))


def _reclaimed(n: int) -> str:
    from cli.formatting import human_size

    return f"Total reclaimed space: {human_size(n)}\n"


def prune(
    all: Annotated[bool, typer.Option("-a", "--all", help="all unused volumes, not just "
                                      "anonymous ones")] = False,
    force: Annotated[bool, typer.Option("-f", "--force", help="do not ask")] = False,
) -> None:
    """Remove unused volumes: anonymous ones, or all unused with -a (Docker >= 23)."""

    what = "all local volumes" if all else "anonymous local volumes"
    if not _confirm(f"WARNING! This will remove {what} not used by at least one container.",
                    force, "volume prune"):
        return
    _users()
    names, freed = _engine().volume_prune(all=all)
    if names:
        sys.stdout.write("Deleted Volumes:\n" + "".join(n + "\n" for n in names) + "\n")
    sys.stdout.write(_reclaimed(freed))


# --- system --------------------------------------------------------------------------------


def system_prune(
    all: Annotated[bool, typer.Option("-a", "--all", help="remove all unused images, not "
                                      "just dangling ones")] = False,
    volumes: Annotated[bool, typer.Option("--volumes", help="prune anonymous volumes")] = False,
    force: Annotated[bool, typer.Option("-f", "--force", help="do not ask")] = False,
) -> None:
    """Remove stopped containers, unused networks, dangling (-a: unused) images, (--volumes)
    anonymous volumes."""

    items = ["all stopped containers", "all networks not used by at least one container"]
    if volumes:
        items.append("all anonymous volumes not used by at least one container")
    items.append("all images without at least one container associated to them" if all
                 else "all dangling images")
    warning = "WARNING! This will remove:\n" + "".join(f"  - {i}\n" for i in items)
    if not _confirm(warning, force, "system prune"):
        return
    rep = _engine().system_prune(all_images=all, with_volumes=volumes)
    out = sys.stdout
    if rep.containers:
        out.write("Deleted Containers:\n" + "".join(c + "\n" for c in rep.containers) + "\n")
    if rep.networks:
        out.write("Deleted Networks:\n" + "".join(n + "\n" for n in rep.networks) + "\n")
    if rep.volumes:
        out.write("Deleted Volumes:\n" + "".join(v + "\n" for v in rep.volumes) + "\n")
    if rep.images:
        out.write("Deleted Images:\n" + "".join(f"{k}: {w}\n" for k, w in rep.images) + "\n")
    out.write(_reclaimed(rep.reclaimed))


def system_df(
    format: Annotated[str | None, typer.Option("--format", help="table, json or a Go template")] = None,
) -> None:
    """Show hv's disk usage: images, containers, local volumes."""
    from cli.formatting import human_size, render

    rows = []
    for r in _engine().system_df():
        free = human_size(r["Reclaimable"])
        if r["Size"] > 0:
            free += f" ({r['Reclaimable'] * 100 // r['Size']}%)"
        rows.append({"Type": r["Type"], "TotalCount": str(r["TotalCount"]),
                     "Active": str(r["Active"]), "Size": human_size(r["Size"]),
                     "Reclaimable": free})
    render(sys.stdout, rows, DF_COLUMNS, format)


def register(app: typer.Typer) -> None:
    """`hv volume ...` and `hv system ...`."""
    group = typer.Typer(help="Manage volumes.", no_args_is_help=True)
    for name, func in (("create", create), ("ls", ls), ("list", ls), ("inspect", inspect),
                       ("rm", rm), ("remove", rm), ("prune", prune)):
        group.command(name=name)(func)
    app.add_typer(group, name="volume")
    sysgroup = typer.Typer(help="Manage hv.", no_args_is_help=True)
    sysgroup.command(name="df")(system_df)
    sysgroup.command(name="prune")(system_prune)
    app.add_typer(sysgroup, name="system")
