"""The `hv` command: parse flags, call hv.engine, render. Nothing else lives here.

Heavy modules (libvirt, requests, rich tables) are imported inside the commands, so
`hv --help` and `hv ps` start fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from cli.args import command_name
from cli.errors import each, print_error

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


@app.callback()
def _global(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option("-H", "--host", envvar="HV_HOST",
                                             help="libvirt URI (default: embedded driver)")] = None,
    debug: Annotated[bool, typer.Option("-D", "--debug", help="show stack traces")] = False,
) -> None:
    session = ctx.find_root().obj
    if host and host != session.host:
        session.host = host  # before the Config is built: every command reads it later
        session._config = session._engine = None
    session.debug = debug


def _engine():
    from cli.session import engine

    return engine()


def _warnings(warnings: list[str]) -> None:
    for text in warnings:
        sys.stderr.write(f"{text}\n")
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
    interactive: Annotated[bool, typer.Option("-i", "--interactive", help="keep STDIN open")] = False,
    tty: Annotated[bool, typer.Option("-t", "--tty", help="allocate a pseudo-TTY")] = False,
    publish: Annotated[list[str] | None, typer.Option("-p", "--publish", help="[IP:][HOSTPORT:]CONTAINERPORT[/PROTO]")] = None,
    publish_all: Annotated[bool, typer.Option("-P", "--publish-all", help="publish all exposed ports")] = False,
    restart: Annotated[str | None, typer.Option("--restart", help="no, on-failure[:N], always, unless-stopped")] = None,
    volume: Annotated[list[str] | None, typer.Option("-v", "--volume", help="bind mount or volume: SOURCE:TARGET[:ro], NAME:TARGET, TARGET")] = None,
    mount: Annotated[list[str] | None, typer.Option("--mount", help="type=bind|volume,source=...,target=...[,readonly]")] = None,
    network: Annotated[list[str] | None, typer.Option("--network", "--net", help="connect to a network: NAME, bridge (the default) or none")] = None,
    network_alias: Annotated[list[str] | None, typer.Option("--network-alias", help="a name the container also has on its (user-defined) network")] = None,
    ip: Annotated[str | None, typer.Option("--ip", help="IPv4 address on the network (user subnets only)")] = None,
    dns: Annotated[list[str] | None, typer.Option("--dns", help="set custom DNS servers")] = None,
    dns_search: Annotated[list[str] | None, typer.Option("--dns-search", help="set custom DNS search domains")] = None,
    dns_option: Annotated[list[str] | None, typer.Option("--dns-option", help="set DNS options")] = None,
    add_host: Annotated[list[str] | None, typer.Option("--add-host", help="an /etc/hosts entry, NAME:IP")] = None,
    label: Annotated[list[str] | None, typer.Option("-l", "--label", help="set metadata on the container, KEY=VALUE")] = None,
    cidfile: Annotated[str | None, typer.Option("--cidfile", help="write the container ID to the file")] = None,
    device: Annotated[list[str] | None, typer.Option("--device", help="not supported: a VM has no host devices")] = None,
    privileged: Annotated[bool, typer.Option("--privileged", help="accepted: the container already has its whole VM")] = False,
    stop_signal: Annotated[str | None, typer.Option("--stop-signal", help="signal to stop the container")] = None,
    stop_timeout: Annotated[int | None, typer.Option("--stop-timeout", help="seconds to wait before killing it at stop")] = None,
    tmpfs: Annotated[list[str] | None, typer.Option("--tmpfs", help="mount a tmpfs directory, PATH[:OPTIONS]")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="mount the container's root filesystem read-only")] = False,
) -> None:
    """Create and start a container (a VM) from an image."""
    opts = _run_options(dict(locals()))
    engine = _engine()
    from cli.progress import pull_progress

    if interactive and not detach:  # a terminal's stream: create, then attach (docker's order)
        with pull_progress() as progress:
            created = engine.create(opts, progress=progress)
        _warnings(created.warnings)
        _write_cidfile(cidfile, created.container.id)
        raise typer.Exit(_attach_until_exit(engine, created.container, tty, stdin_open=True))
    import contextlib

    with contextlib.ExitStack() as pulling:
        progress = pulling.enter_context(pull_progress())

        def created(c) -> None:
            pulling.close()  # the pull's display ends before the container's output
            _warnings(c.warnings)
            _write_cidfile(cidfile, c.container.id)

        result = engine.run(opts, progress, on_created=created, on_output=_show_line)
    if detach:
        sys.stdout.write(result.container.id + "\n")
        return
    raise typer.Exit(result.exit_code)


def _run_options(flags: dict):
    """`run`'s and `create`'s flags as the engine's RunOptions (checked: --device, --label,
    --cidfile's file)."""
    from hv.errors import UsageError
    from hv.spec import RunOptions

    if flags.get("device"):
        raise UsageError(f"--device {flags['device'][0]}: a container is a VM here, with no "
                         "host devices to pass through",
                         hint="leave --device out (a volume or bind mount shares files)")
    cidfile = flags.get("cidfile")
    if cidfile and os.path.exists(cidfile):
        raise UsageError(f"container ID file found, make sure the other container isn't "
                         f"running or delete {cidfile}", hint=f"rm {cidfile}")
    labels = {}
    for item in flags.get("label") or []:
        key, _, value = item.partition("=")
        if not key:
            raise UsageError(f'invalid argument "{item}" for "-l, --label" flag',
                             hint="use KEY=VALUE")
        labels[key] = value
    g = flags.get
    return RunOptions(
        image=g("image"), args=list(g("command") or []), name=g("name"),
        detach=bool(g("detach")), auto_remove=bool(g("rm")), env=list(g("env") or []),
        env_files=list(g("env_file") or []), workdir=g("workdir"), user=g("user"),
        entrypoint=g("entrypoint"), hostname=g("hostname"), memory=g("memory"),
        cpus=g("cpus"), publish=list(g("publish") or []), publish_all=bool(g("publish_all")),
        tty=bool(g("tty")), interactive=bool(g("interactive")), restart=g("restart"),
        volumes=list(g("volume") or []), mounts=list(g("mount") or []),
        networks=list(g("network") or []), network_aliases=list(g("network_alias") or []),
        ip=g("ip"), dns=list(g("dns") or []), dns_search=list(g("dns_search") or []),
        dns_options=list(g("dns_option") or []), add_hosts=list(g("add_host") or []),
        labels=labels, stop_signal=g("stop_signal"), stop_timeout=g("stop_timeout"),
        tmpfs=list(g("tmpfs") or []), read_only=bool(g("read_only")),
    )


def _write_cidfile(path: str | None, cid: str) -> None:
    if path:
        with open(path, "x") as f:  # checked before the create; a race loses here
            f.write(cid)


def create(**flags) -> None:
    """Create a container (a VM, defined and not booted) from an image; `hv start` boots it."""
    opts = _run_options(flags)
    from cli.progress import pull_progress

    engine = _engine()
    with pull_progress() as progress:
        created = engine.create(opts, progress=progress, start=False)
    _warnings(created.warnings)
    _write_cidfile(flags.get("cidfile"), created.container.id)
    sys.stdout.write(created.container.id + "\n")


def _create_signature() -> None:
    """`create` takes `run`'s flags but -d (typer reads the signature and the hints)."""
    import inspect
    import typing

    hints = typing.get_type_hints(run, include_extras=True)
    sig = inspect.signature(run)
    create.__signature__ = sig.replace(parameters=[
        p.replace(annotation=hints[p.name]) for p in sig.parameters.values()
        if p.name != "detach"], return_annotation=None)
    create.__annotations__ = {k: v for k, v in hints.items() if k != "detach"}
    app.command(context_settings={"allow_interspersed_args": False})(create)


def _show_line(line) -> None:
    """A line of the container's output on our stdout or stderr, as it came."""
    stream = sys.stdout.buffer if line.stream == 1 else sys.stderr.buffer
    stream.write(line.data)
    stream.flush()


def _attach_until_exit(engine, container, use_tty: bool, stdin_open: bool) -> int:
    """`run -i[t]` / `start -a`: attach; the container's exit code (or 0 when detached)."""
    from cli.streams import pump_attach

    stream = engine.attach(container.name)
    try:
        code = pump_attach(stream, stdin_open=stdin_open, use_tty=use_tty)
    except KeyboardInterrupt:
        engine.stop_now(container)
        return 130
    finally:
        stream.close()
    if code is None:  # detached, or the guest vanished
        if engine.container_running(container):
            return 0
        code = engine.exit_code(container)
    else:  # the exit frame comes before the power-off: return once it is stopped, as
        engine.exit_code(container)  # Docker does (a `start -ai` right after saw it running)
    engine.finish_run(container)
    return code


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
    since: Annotated[str | None, typer.Option("--since", help="show logs since a timestamp (2013-01-02T13:23:37Z) or relative (42m)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="show logs before a timestamp or relative (42m)")] = None,
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
    from cli.events_cmd import parse_time

    lo = parse_time(since) if since else None
    hi = parse_time(until) if until else None
    engine = _engine()
    out, err = sys.stdout.buffer, sys.stderr.buffer
    for line in engine.logs(container, follow=follow, tail=n, since=lo, until=hi):
        stream = out if line.stream == 1 else err
        if timestamps:
            from cli.containers_view import log_timestamp

            stream.write(log_timestamp(line.ts_ns).encode() + b" ")
        stream.write(line.data)
        stream.flush()


@app.command()
def wait(containers: Annotated[list[str], typer.Argument()]) -> None:
    """Block until containers stop, then print their exit codes."""
    engine = _engine()
    each(containers, lambda ref: str(engine.wait(ref).status_code))


@app.command()
def rm(
    containers: Annotated[list[str], typer.Argument()],
    force: Annotated[bool, typer.Option("-f", "--force", help="kill a running container first")] = False,
    volumes: Annotated[bool, typer.Option("-v", "--volumes", help="remove anonymous volumes")] = False,
) -> None:
    """Remove containers."""
    engine = _engine()
    each(containers, lambda ref: engine.remove(ref, force=force, volumes=volumes))


@app.command()
def inspect(
    names: Annotated[list[str], typer.Argument()],
    format: Annotated[str | None, typer.Option("-f", "--format", help="Go template")] = None,
    type: Annotated[str | None, typer.Option("--type", help="container or image")] = None,
) -> None:
    """Low-level information on containers and images, as JSON."""

    from cli.containers_view import check_template, write_inspect
    from hv.errors import HvError, NotFound

    if format:
        check_template(format)  # Docker parses the template before any look-up
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
    write_inspect(docs, format)
    if failed:
        raise typer.Exit(1)


# --- into the guest ----------------------------------------------------------------------------


@app.command(name="exec", context_settings={"allow_interspersed_args": False})
def exec_(
    container: Annotated[str, typer.Argument()],
    command: Annotated[list[str], typer.Argument(help="command and arguments")],
    interactive: Annotated[bool, typer.Option("-i", "--interactive", help="keep STDIN open")] = False,
    tty: Annotated[bool, typer.Option("-t", "--tty", help="allocate a pseudo-TTY")] = False,
    detach: Annotated[bool, typer.Option("-d", "--detach", help="run in the background")] = False,
    env: Annotated[list[str] | None, typer.Option("-e", "--env", help="set environment variables")] = None,
    env_file: Annotated[list[str] | None, typer.Option("--env-file", help="read in a file of environment variables")] = None,
    workdir: Annotated[str | None, typer.Option("-w", "--workdir", help="working directory")] = None,
    user: Annotated[str | None, typer.Option("-u", "--user", help="user[:group] or uid[:gid]")] = None,
) -> None:
    """Run a command in a running container."""
    from cli.streams import pump_exec, window

    engine = _engine()
    stream = engine.exec(container, list(command), list(env or []), list(env_file or []),
                         workdir, user, tty=tty, stdin=interactive,
                         size=window() if tty else None)
    try:
        if detach:
            stream.close_stdin()
            return
        code = pump_exec(stream, interactive=interactive, use_tty=tty)
    finally:
        stream.close()
    # no status: the guest went away under the command (killed, stopped): 137, as Docker's
    raise typer.Exit(137 if code is None else code)


@app.command()
def cp(
    src: Annotated[str, typer.Argument(help="CONTAINER:SRC_PATH, SRC_PATH or -")],
    dest: Annotated[str, typer.Argument(help="CONTAINER:DEST_PATH, DEST_PATH or -")],
    archive: Annotated[bool, typer.Option("-a", "--archive", help="keep uid/gid")] = False,
    follow_link: Annotated[bool, typer.Option("-L", "--follow-link", help="follow symlinks in SRC_PATH")] = False,
) -> None:
    """Copy files between a container and the local filesystem (also stopped containers)."""
    _engine().copy(src, dest, follow=follow_link, archive=archive,
                   stdin=sys.stdin.buffer, stdout=sys.stdout.buffer)


@app.command()
def attach(
    container: Annotated[str, typer.Argument()],
    no_stdin: Annotated[bool, typer.Option("--no-stdin", help="do not attach STDIN")] = False,
) -> None:
    """Attach to a running container's main process (detach with ctrl-p ctrl-q)."""
    engine = _engine()
    c = engine.container(container)
    raise typer.Exit(_attach_until_exit(engine, c, c.record.tty,
                                        stdin_open=c.record.stdin_open and not no_stdin))


def _each(containers: list[str], action) -> None:
    """Act on every container, printing its name as Docker does."""
    def one(ref: str) -> str:
        action(ref)
        return ref

    each(containers, one)


@app.command()
def stop(
    containers: Annotated[list[str], typer.Argument()],
    time: Annotated[int | None, typer.Option("-t", "--time", help="seconds to wait before killing (default: the container's --stop-timeout, else 10)")] = None,
) -> None:
    """Stop running containers (SIGTERM, then SIGKILL after the grace period)."""
    engine = _engine()
    _each(containers, lambda ref: engine.stop(ref, time))


@app.command()
def start(
    containers: Annotated[list[str], typer.Argument()],
    attach: Annotated[bool, typer.Option("-a", "--attach", help="attach STDOUT/STDERR")] = False,
    interactive: Annotated[bool, typer.Option("-i", "--interactive", help="attach STDIN")] = False,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="restore from this checkpoint")] = None,
) -> None:
    """Start stopped containers."""
    from hv.errors import UsageError

    engine = _engine()
    if checkpoint is not None:
        if len(containers) > 1 or attach or interactive:
            raise UsageError("--checkpoint restores one container, without -a/-i",
                             hint="hv start --checkpoint NAME CONTAINER")
        engine.start_from_checkpoint(containers[0], checkpoint)
        return
    if (attach or interactive) and len(containers) > 1:
        raise UsageError("you cannot start and attach multiple containers at once",
                         hint="start them without -a/-i, or one at a time")
    if attach and not interactive and not engine.container(containers[0]).active:
        # this boot's output from its first line to the exit, as a foreground run
        result = engine.start_follow(containers[0], on_output=_show_line)
        raise typer.Exit(result.exit_code)
    if attach or interactive:
        c = engine.container(containers[0])
        if c.active:
            engine.wait_started(c)
        else:  # the main process waits for this attach, as `run -i`'s does
            c = engine.start(containers[0], wait_attach=True)
        raise typer.Exit(_attach_until_exit(engine, c, c.record.tty, stdin_open=interactive))

    def one(ref: str) -> None:
        engine.wait_started(engine.start(ref))

    _each(containers, one)


@app.command()
def restart(
    containers: Annotated[list[str], typer.Argument()],
    time: Annotated[int | None, typer.Option("-t", "--time", help="seconds to wait before killing (default: the container's --stop-timeout, else 10)")] = None,
) -> None:
    """Restart containers (the disk and its changes survive)."""
    engine = _engine()
    _each(containers, lambda ref: engine.wait_started(engine.restart(ref, time)))


@app.command()
def kill(
    containers: Annotated[list[str], typer.Argument()],
    signal: Annotated[str, typer.Option("-s", "--signal", help="signal to send")] = "KILL",
) -> None:
    """Send a signal to the main process of running containers."""
    engine = _engine()
    _each(containers, lambda ref: engine.kill(ref, signal))


@app.command()
def rename(
    container: Annotated[str, typer.Argument(help="the container")],
    new_name: Annotated[str, typer.Argument(help="its new name")],
) -> None:
    """Rename a container (running or not)."""
    _engine().rename(container, new_name)


@app.command()
def pause(containers: Annotated[list[str], typer.Argument()]) -> None:
    """Pause all processes (the VM's vCPUs) of containers."""
    engine = _engine()
    _each(containers, lambda ref: engine.pause(ref, True))


@app.command()
def unpause(containers: Annotated[list[str], typer.Argument()]) -> None:
    """Unpause paused containers."""
    engine = _engine()
    _each(containers, lambda ref: engine.pause(ref, False))


@app.command()
def port(
    container: Annotated[str, typer.Argument()],
    private: Annotated[str | None, typer.Argument(help="PRIVATE_PORT[/PROTO]")] = None,
) -> None:
    """List port mappings of a container."""
    from hv.errors import NotFound

    engine = _engine()
    c, bound = engine.ports(container)
    if private:
        num, _, proto = private.partition("/")
        bound = [b for b in bound if str(b["container_port"]) == num
                 and b["proto"] == (proto or "tcp")]
        if not bound:
            raise NotFound(f"No public port '{num}/{proto or 'tcp'}' published for {c.name}",
                           hint=f"see 'hv port {c.name}'")
        for b in bound:
            sys.stdout.write(f"{b['host_ip']}:{b['host_port']}\n")
        return
    for b in bound:
        sys.stdout.write(f"{b['container_port']}/{b['proto']} -> {b['host_ip']}:{b['host_port']}\n")


@app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def top(
    container: Annotated[str, typer.Argument()],
    ps_args: Annotated[list[str] | None, typer.Argument(help="ps options")] = None,
) -> None:
    """Display the running processes of a container (all processes of its VM)."""
    sys.stdout.write(_engine().top(container, list(ps_args or [])))


@app.command()
def stats(
    containers: Annotated[list[str] | None, typer.Argument()] = None,
    all: Annotated[bool, typer.Option("-a", "--all", help="show all containers")] = False,
    no_stream: Annotated[bool, typer.Option("--no-stream", help="one sample, then exit")] = False,
    format: Annotated[str | None, typer.Option("--format", help="table, json or a Go template")] = None,
) -> None:
    """CPU and memory use of containers (QEMU process, from libvirt)."""
    import time as _time

    from cli.containers_view import stats_rows
    from cli.formatting import render

    engine = _engine()
    cols = [("CONTAINER ID", "ID"), ("NAME", "Name"), ("CPU %", "CPUPerc"),
            ("MEM USAGE / LIMIT", "MemUsage"), ("MEM %", "MemPerc"), ("NET I/O", "NetIO"),
            ("BLOCK I/O", "BlockIO"), ("PIDS", "PIDs")]
    while True:
        rows = stats_rows(engine.stats(list(containers or []), all=all))
        if not no_stream and sys.stdout.isatty():
            sys.stdout.write("\x1b[2J\x1b[H")
        render(sys.stdout, rows, cols, format)
        sys.stdout.flush()
        if no_stream:
            return
        _time.sleep(0.5)


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
    __import__("cli.volume_cmds").volume_cmds.register(app)  # hv volume, hv system
    __import__("cli.service_cmd").service_cmd.register(app)  # hv system service
    __import__("cli.compare_cmd").compare_cmd.register(app)  # hv compare
    __import__("cli.events_cmd").events_cmd.register(app)  # hv events
    __import__("cli.network_cmds").network_cmds.register(app)  # hv network
    __import__("cli.checkpoint_cmds").checkpoint_cmds.register(app)  # hv checkpoint


_register_extras()
__import__("cli.container_cmds").container_cmds.register(app)  # info, search, system info
_LAZY = {"create", "container"}  # made on demand: `create`'s signature costs ~4 ms


def _register_lazy() -> None:
    """`hv create` (run's flags: their type hints evaluated) and `hv container …` (over
    every top-level verb), for the commands that need them and for the whole app."""
    if any((c.name or c.callback.__name__) == "create" for c in app.registered_commands):
        return
    _create_signature()
    __import__("cli.container_cmds").container_cmds.register_group(app)


def _names() -> set[str]:
    return {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands} \
        | {g.name for g in app.registered_groups}


def _only(name: str) -> typer.Typer:
    """`app` with just the named command (or group): typer builds a click command, with
    its type hints evaluated, for every registered one on each call (~50 ms for all of
    hv's); unknown names and `--help` get the whole app and its messages."""
    import copy

    if name in _LAZY or name not in _names():
        _register_lazy()
    cmds = [c for c in app.registered_commands
            if (c.name or c.callback.__name__.replace("_", "-")) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not (cmds or groups):
        return app
    only = copy.copy(app)
    only.registered_commands, only.registered_groups = cmds, groups
    return only


def main(argv: list[str] | None = None, session=None) -> None:
    """`session`: one the console script made already (hv.engine opened early for run)."""
    try:  # typer >= 0.25 vendors click
        from typer import _click as click
    except ImportError:  # pragma: no cover
        import click

    from cli.session import Session
    from hv.errors import HvError

    args = sys.argv[1:] if argv is None else argv
    session = session or Session()
    session.command = command_name(args)
    try:
        rv = _only(session.command)(args=args, prog_name="hv", standalone_mode=False,
                                    obj=session)
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
        if session.debug:
            import traceback

            traceback.print_exc()
        print_error(e)
        code = e.exit_code
        if code == 125 and session.command not in RUN_LIKE:
            code = 1
    except KeyboardInterrupt:
        sys.stderr.write("Error: interrupted\n")
        code = 130
    except BrokenPipeError:
        code = 0
    except OSError as e:
        # a full disk, a read-only state root...: what the user can act on, not a bug
        if session.debug:
            raise
        from hv.errors import from_os_error

        err = from_os_error(e, session.config.root)
        print_error(err)
        code = 125 if session.command in RUN_LIKE else 1
    except Exception as e:  # noqa: BLE001 - a bug: still one line and a hint
        if session.debug:
            raise
        sys.stderr.write(f"Error: internal error: {type(e).__name__}: {e}\n")
        sys.stderr.write("hint: run again with --debug for the stack trace, and report it\n")
        code = 125
    _exit(code)


def _exit(code: int) -> None:
    """Exit without the interpreter's teardown of every module (~20 ms on each command);
    everything hv writes is closed by then, only the standard streams need a flush."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
