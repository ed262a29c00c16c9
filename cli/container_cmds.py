"""`hv container …` (Docker's management group over the top-level verbs), `container prune`,
`hv info` / `hv system info`, and `hv search` (answered: there is no index offline)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer


def _engine():
    from cli.session import engine

    return engine()


def prune(
    force: Annotated[bool, typer.Option("-f", "--force", help="do not ask")] = False,
) -> None:
    """Remove all stopped containers."""
    from cli.formatting import human_size
    from cli.volume_cmds import _confirm

    if not _confirm("WARNING! This will remove all stopped containers.\n", force,
                    "container prune"):
        return
    engine = _engine()
    removed, freed = [], 0
    for c in engine.containers(all=True):
        if c.active:
            continue
        freed += engine.container_size(c.id)
        engine.remove(c.id)
        removed.append(c.id)
    if removed:
        sys.stdout.write("Deleted Containers:\n" + "".join(f"{i}\n" for i in removed) + "\n")
    sys.stdout.write(f"Total reclaimed space: {human_size(freed)}\n")


def info_doc(engine) -> dict:
    """`docker info`'s fields (the Engine API's names), plus the hypervisor's."""
    from hv import __version__

    facts = engine.host_facts()
    cs = engine.containers(all=True)
    running = sum(1 for c in cs if c.active and not c.paused)
    paused = sum(1 for c in cs if c.paused)
    kind = {"hv": "hv's own", "cloud": "Debian's cloud kernel"}.get(facts.guest_kernel_kind, "")
    return {
        "Containers": len(cs), "ContainersRunning": running, "ContainersPaused": paused,
        "ContainersStopped": len(cs) - running - paused, "Images": len(engine.images.list()),
        "ServerVersion": f"hv {__version__}", "Driver": "qcow2", "DefaultRuntime": "hv",
        "Runtimes": {"hv": {"path": "qemu-system-x86_64 (libvirt)"}}, "Isolation": "vm",
        "Accelerator": facts.accelerator.upper(), "AcceleratorReason": facts.accelerator_reason,
        "GuestKernel": facts.guest_kernel + (f" ({kind})" if kind else ""),
        "KernelVersion": facts.host_kernel, "OperatingSystem": facts.operating_system,
        "OSType": "linux", "Architecture": "x86_64", "NCPU": facts.ncpu,
        "MemTotal": facts.mem_total, "Name": facts.hostname, "DockerRootDir": facts.state_root,
        "WarmPool": engine.pool_status(),
    }


def info(
    format: Annotated[str | None, typer.Option("-f", "--format", help="a Go template, or json")] = None,
) -> None:
    """Display system-wide information: the hypervisor, accelerator, guest kernel, counts."""
    import json

    from cli.containers_view import check_template
    from cli.formatting import human_size

    tmpl = check_template(format)
    doc = info_doc(_engine())
    if format == "json":
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    if tmpl is not None:
        sys.stdout.write(tmpl.execute(doc) + "\n")
        return
    accel = doc["Accelerator"] + ("" if doc["Accelerator"] == "KVM"
                                  else f" ({doc['AcceleratorReason']})")
    lines = [
        "Server:",
        f" Containers: {doc['Containers']}",
        f"  Running: {doc['ContainersRunning']}",
        f"  Paused: {doc['ContainersPaused']}",
        f"  Stopped: {doc['ContainersStopped']}",
        f" Images: {doc['Images']}",
        f" Server Version: {doc['ServerVersion']}",
        f" Storage Driver: {doc['Driver']}",
        " Runtimes: hv",
        f" Default Runtime: {doc['DefaultRuntime']}",
        " Isolation: vm (every container is a virtual machine: its own guest kernel)",
        f" Accelerator: {accel}",
        f" Warm Pool: {doc['WarmPool']['Size']} per image (HV_POOL), "
        f"{doc['WarmPool']['Ready']} of {doc['WarmPool']['VMs']} pooled VMs ready",
        f" Guest Kernel: {doc['GuestKernel'] or '(not built: run make setup)'}",
        f" Kernel Version: {doc['KernelVersion']}",
        f" Operating System: {doc['OperatingSystem']}",
        f" OSType: {doc['OSType']}",
        f" Architecture: {doc['Architecture']}",
        f" CPUs: {doc['NCPU']}",
        f" Total Memory: {human_size(doc['MemTotal'])}",
        f" Name: {doc['Name']}",
        f" Docker Root Dir: {doc['DockerRootDir']}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


def search(term: Annotated[str, typer.Argument(help="what to look for")]) -> None:
    """Search Docker Hub for images (not available: hv works offline)."""
    from hv.errors import UsageError

    raise UsageError(f"cannot search for {term!r}: hv has no registry index to search (Docker "
                     "Hub's search API is not a registry endpoint, and hv works offline)",
                     hint=f"pull a known name ('hv pull {term}') or list local images with "
                          "'hv images'", exit_code=1)


# `hv container VERB` = the top-level verb (docker/cli's aliases)
_CONTAINER_VERBS = [
    ("ls", "ps"), ("list", "ps"), ("ps", "ps"), ("run", "run"), ("create", "create"),
    ("start", "start"), ("stop", "stop"), ("restart", "restart"), ("kill", "kill"),
    ("rm", "rm"), ("remove", "rm"), ("inspect", "inspect"), ("logs", "logs"),
    ("exec", "exec"), ("attach", "attach"), ("cp", "cp"), ("top", "top"),
    ("stats", "stats"), ("port", "port"), ("wait", "wait"), ("rename", "rename"),
    ("pause", "pause"), ("unpause", "unpause"),
]


def register(app: typer.Typer) -> None:
    """`hv info`, `hv system info` (the system group exists already), `hv search`."""
    app.command(name="info")(info)
    app.command(name="search")(search)
    for g in app.registered_groups:
        if g.name == "system":
            g.typer_instance.command(name="info")(info)


def register_group(app: typer.Typer) -> None:
    """`hv container …`: every top-level container verb under its Docker names."""
    by_name = {(c.name or c.callback.__name__.replace("_", "-")): c
               for c in app.registered_commands}
    group = typer.Typer(help="Manage containers.", no_args_is_help=True)
    for verb, top in _CONTAINER_VERBS:
        cmd = by_name.get(top)
        if cmd is not None:
            group.command(name=verb, context_settings=cmd.context_settings,
                          help=cmd.help)(cmd.callback)
    group.command(name="prune")(prune)
    app.add_typer(group, name="container")
