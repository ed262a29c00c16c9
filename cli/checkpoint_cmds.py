"""`hv checkpoint create|ls|rm` and what `start --checkpoint` needs: Docker's experimental
checkpoint verbs (exit 1 on error, as docker's). Only typer at module level."""

from __future__ import annotations

import sys
from typing import Annotated

import typer


def _engine():
    from cli.session import engine

    return engine()


def create(
    container: Annotated[str, typer.Argument(metavar="CONTAINER")],
    checkpoint: Annotated[str, typer.Argument(metavar="CHECKPOINT")],
    leave_running: Annotated[bool, typer.Option("--leave-running", help="leave the container running after the checkpoint")] = False,
) -> None:
    """Create a checkpoint of a running container (its VM's memory, devices and disk)."""
    cp = _engine().checkpoint_create(container, checkpoint, leave_running=leave_running)
    sys.stdout.write(f"{cp.name}\n")


def ls(container: Annotated[str, typer.Argument(metavar="CONTAINER")]) -> None:
    """List a container's checkpoints."""
    import time

    from cli.formatting import human_size
    from hv.timefmt import human_duration

    cps = _engine().checkpoint_list(container)
    rows = [("CHECKPOINT NAME", "CREATED", "SIZE")] + [
        (cp.name, f"{human_duration(time.time() - cp.created)} ago", human_size(cp.size))
        for cp in cps]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        sys.stdout.write("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")


def rm(
    container: Annotated[str, typer.Argument(metavar="CONTAINER")],
    checkpoint: Annotated[str, typer.Argument(metavar="CHECKPOINT")],
) -> None:
    """Remove a checkpoint."""
    _engine().checkpoint_remove(container, checkpoint)


def register(app: typer.Typer) -> None:
    """`hv checkpoint ...`."""
    group = typer.Typer(help="Manage checkpoints (a running container's VM saved).",
                        no_args_is_help=True)
    for name, func in (("create", create), ("ls", ls), ("list", ls), ("rm", rm),
                       ("remove", rm)):
        group.command(name=name)(func)
    app.add_typer(group, name="checkpoint")
