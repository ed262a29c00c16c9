"""The `hv` command: parse flags, call hv.engine, render. Nothing else lives here.

Heavy modules (libvirt, requests, rich tables) are imported inside the commands, so
`hv --help` and `hv ps` start fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from cli.errors import print_error

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["--help"]},
    help="Docker's commands; every container is a small QEMU/KVM virtual machine.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Commands whose failures Docker reports with 125 (the CLI itself failed to create/run);
# for the others an error from the engine is 1, as `docker rm nosuch` is.
RUN_LIKE = {"run"}
STATE = {"debug": False, "command": ""}


@app.callback()
def _global(
    host: Annotated[str | None, typer.Option("-H", "--host", envvar="HV_HOST",
                                             help="libvirt URI (default: embedded driver)")] = None,
    debug: Annotated[bool, typer.Option("-D", "--debug", help="show stack traces")] = False,
) -> None:
    if host:
        os.environ["HV_HOST"] = host
    STATE["debug"] = debug


def _engine():
    from hv.engine import Engine

    return Engine()


def _notices(engine) -> None:
    for text in engine.notices:
        sys.stderr.write(f"{text}\n")
    engine.notices.clear()
    sys.stderr.flush()


# --- run ------------------------------------------------------------------------------------


@app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": False})
def run(
    image: Annotated[str, typer.Argument(help="image to run")],
    command: Annotated[list[str] | None, typer.Argument(help="command and arguments")] = None,
    detach: Annotated[bool, typer.Option("-d", "--detach", help="run in the background, print the id")] = False,
    name: Annotated[str | None, typer.Option("--name", help="container name")] = None,
    rm: Annotated[bool, typer.Option("--rm", help="remove the container when it exits")] = False,
    env: Annotated[list[str] | None, typer.Option("-e", "--env", help="set environment variables")] = None,
    env_file: Annotated[list[str] | None, typer.Option("--env-file", help="read in a file of environment variables")] = None,
    workdir: Annotated[str | None, typer.Option("-w", "--workdir", help="working directory inside the container")] = None,
    user: Annotated[str | None, typer.Option("-u", "--user", help="user[:group] or uid[:gid]")] = None,
    entrypoint: Annotated[str | None, typer.Option("--entrypoint", help="override the image's ENTRYPOINT")] = None,
    hostname: Annotated[str | None, typer.Option("-h", "--hostname", help="container host name")] = None,
    memory: Annotated[str | None, typer.Option("-m", "--memory", help="VM memory (e.g. 512m, 1g)")] = None,
    cpus: Annotated[str | None, typer.Option("--cpus", help="number of CPUs")] = None,
) -> None:
    """Create and start a container (a VM) from an image."""
    from hv.spec import RunOptions

    opts = RunOptions(
        image=image, args=list(command or []), name=name, detach=detach, auto_remove=rm,
        env=list(env or []), env_files=list(env_file or []), workdir=workdir, user=user,
        entrypoint=entrypoint, hostname=hostname, memory=memory, cpus=cpus,
    )
    engine = _engine()
    from cli.progress import pull_progress

    with pull_progress(engine) as progress:
        container = engine.create(opts, progress=progress)
    _notices(engine)
    if detach:
        engine.wait_started(container)
        sys.stdout.write(container.id + "\n")
        return
    out, err = sys.stdout.buffer, sys.stderr.buffer

    def show(line) -> None:
        stream = out if line.stream == 1 else err
        stream.write(line.data)
        stream.flush()

    try:
        code = engine.follow(container, show)
    except KeyboardInterrupt:
        engine.stop_now(container)
        raise typer.Exit(130) from None
    finally:
        pass
    engine.finish_run(container)
    raise typer.Exit(code)


# --- ps -------------------------------------------------------------------------------------

PS_COLUMNS = [
    ("CONTAINER ID", "ID"), ("IMAGE", "Image"), ("COMMAND", "Command"),
    ("CREATED", "RunningFor"), ("STATUS", "Status"), ("PORTS", "Ports"), ("NAMES", "Names"),
]


@app.command()
def ps(
    all: Annotated[bool, typer.Option("-a", "--all", help="show all containers")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="only ids")] = False,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="do not truncate output")] = False,
    last: Annotated[int, typer.Option("-n", "--last", help="show n last created containers")] = -1,
    latest: Annotated[bool, typer.Option("-l", "--latest", help="show the latest created container")] = False,
    filter: Annotated[list[str] | None, typer.Option("-f", "--filter", help="name=, status=, ancestor=, id=, exited=")] = None,
    format: Annotated[str | None, typer.Option("--format", help="table, json or a Go template")] = None,
) -> None:
    """List containers."""
    from cli.containers_view import ps_rows, select

    engine = _engine()
    cs = engine.containers(all=True)
    cs = select(cs, all=all or last >= 0 or latest, filters=list(filter or []),
                last=1 if latest else last)
    rows = ps_rows(cs, no_trunc=no_trunc)
    if quiet:
        for r in rows:
            sys.stdout.write(r["ID"] + "\n")
        return
    from cli.formatting import render

    render(sys.stdout, rows, PS_COLUMNS, format)


# --- logs / wait / rm / inspect ---------------------------------------------------------------


@app.command()
def logs(
    container: Annotated[str, typer.Argument()],
    follow: Annotated[bool, typer.Option("-f", "--follow", help="follow log output")] = False,
    tail: Annotated[str, typer.Option("-n", "--tail", help="lines from the end ('all')")] = "all",
    timestamps: Annotated[bool, typer.Option("-t", "--timestamps", help="show timestamps")] = False,
) -> None:
    """Fetch the output of a container."""
    from hv.errors import UsageError

    if tail == "all":
        n = None
    else:
        try:
            n = int(tail)
        except ValueError:
            raise UsageError(f'invalid value for --tail: "{tail}"', hint="use a number or 'all'") from None
        n = None if n < 0 else n
    engine = _engine()
    out, err = sys.stdout.buffer, sys.stderr.buffer
    for line in engine.logs(container, follow=follow, tail=n):
        stream = out if line.stream == 1 else err
        if timestamps:
            from cli.containers_view import log_timestamp

            stream.write(log_timestamp(line.ts_ns).encode() + b" ")
        stream.write(line.data)
        stream.flush()


@app.command()
def wait(containers: Annotated[list[str], typer.Argument()]) -> None:
    """Block until containers stop, then print their exit codes."""
    from hv.errors import HvError

    engine = _engine()
    failed = False
    for ref in containers:
        try:
            sys.stdout.write(f"{engine.wait(ref)}\n")
            sys.stdout.flush()
        except HvError as e:
            print_error(e)
            failed = True
    if failed:
        raise typer.Exit(1)


@app.command()
def rm(
    containers: Annotated[list[str], typer.Argument()],
    force: Annotated[bool, typer.Option("-f", "--force", help="kill a running container first")] = False,
    volumes: Annotated[bool, typer.Option("-v", "--volumes", help="remove anonymous volumes")] = False,
) -> None:
    """Remove containers."""
    from hv.errors import HvError

    engine = _engine()
    failed = False
    for ref in containers:
        try:
            sys.stdout.write(engine.remove(ref, force=force) + "\n")
            sys.stdout.flush()
        except HvError as e:
            print_error(e)
            failed = True
    if failed:
        raise typer.Exit(1)


@app.command()
def inspect(
    names: Annotated[list[str], typer.Argument()],
    format: Annotated[str | None, typer.Option("-f", "--format", help="Go template")] = None,
    type: Annotated[str | None, typer.Option("--type", help="container or image")] = None,
) -> None:
    """Low-level information on containers and images, as JSON."""
    import json

    from cli.containers_view import apply_template
    from hv.errors import HvError, NotFound

    engine = _engine()
    docs, failed = [], False
    for ref in names:
        doc = None
        try:
            if type in (None, "container"):
                try:
                    doc = engine.container(ref).inspect()
                except NotFound:
                    if type == "container":
                        raise
            if doc is None and type in (None, "image"):
                doc = engine.images.get(ref).inspect()
        except NotFound:
            print_error(NotFound(f"No such object: {ref}", hint="check 'hv ps -a' and 'hv images'"))
            failed = True
            continue
        except HvError as e:
            print_error(e)
            failed = True
            continue
        docs.append(doc)
    if format:
        for doc in docs:
            sys.stdout.write(apply_template(format, doc) + "\n")
    else:
        sys.stdout.write(json.dumps(docs, indent=4) + "\n")
    if failed:
        raise typer.Exit(1)


@app.command()
def version() -> None:
    """Show the hv version."""
    from hv import __version__

    sys.stdout.write(f"hv version {__version__}\n")


def _register_extras() -> None:
    try:
        from cli import image_cmds
    except ImportError:  # pragma: no cover - during bootstrap
        return
    image_cmds.register(app)


_register_extras()


def main(argv: list[str] | None = None) -> None:
    try:  # typer >= 0.25 vendors click
        from typer import _click as click
    except ImportError:  # pragma: no cover
        import click

    from hv.errors import HvError

    args = sys.argv[1:] if argv is None else argv
    STATE["command"] = next((a for a in args if not a.startswith("-")), "")
    try:
        rv = app(args=args, prog_name="hv", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        code = 130
    except click.exceptions.UsageError as e:
        sys.stderr.write(f"Error: {e.format_message()}\n")
        path = e.ctx.command_path if e.ctx else "hv"
        cmd = f"hv {path.split(' ', 1)[1]} --help" if " " in path else "hv --help"
        sys.stderr.write(f"hint: see '{cmd}'\n")
        code = 125
    except HvError as e:
        if STATE["debug"]:
            import traceback

            traceback.print_exc()
        print_error(e)
        code = e.exit_code
        if code == 125 and STATE["command"] not in RUN_LIKE:
            code = 1
    except KeyboardInterrupt:
        sys.stderr.write("Error: interrupted\n")
        code = 130
    except BrokenPipeError:
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
