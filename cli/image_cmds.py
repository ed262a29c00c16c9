"""Image commands: pull, images, rmi, tag, load, save, history (and `hv image ls|pull|...`).

Only typer is imported at module level; requests, rich and hv.images load inside the
commands so `hv --help` stays fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Annotated, TextIO

import typer

IMAGE_COLUMNS = [
    ("REPOSITORY", "Repository"),
    ("TAG", "Tag"),
    ("IMAGE ID", "ID"),
    ("CREATED", "CreatedSince"),
    ("SIZE", "Size"),
]
_PLAIN_SKIP = {"Downloading", "Extracting", "Building disk"}


def _engine():
    from cli.session import engine

    return engine()


# --- pull progress ------------------------------------------------------------------------------


@contextlib.contextmanager
def progress_renderer(
    stream: TextIO, before: Callable[[], None] | None = None
) -> Iterator[Callable[[object], None]]:
    """A PullEvent callback: rich bars (one per layer) on a terminal, Docker's lines otherwise."""
    if not stream.isatty():

        def plain(event) -> None:
            if before:
                before()
            if event.status in _PLAIN_SKIP:
                return
            stream.write(f"{event.layer}: {event.status}\n" if event.layer else event.status + "\n")
            stream.flush()

        yield plain
        return

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    console = Console(file=stream, highlight=False)
    progress = Progress(
        TextColumn("{task.fields[layer]}: {task.description}"),
        BarColumn(),
        DownloadColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, object] = {}
    after: list[str] = []  # Digest/Status go below the finished bars, as in Docker

    def fancy(event) -> None:
        if before:
            before()
        if not event.layer:
            if event.status.startswith(("Digest:", "Status:")):
                after.append(event.status)
            else:
                progress.console.print(event.status, markup=False)
            return
        task = tasks.get(event.layer)
        if task is None:
            task = tasks[event.layer] = progress.add_task(
                event.status, layer=event.layer, total=event.total or None
            )
        fields = {"description": event.status}
        if event.total:
            fields.update(total=event.total, completed=event.current)
        if event.status in ("Download complete", "Pull complete", "Already exists"):
            total = progress.tasks[tasks[event.layer]].total or 1
            fields.update(total=total, completed=total)
        progress.update(task, **fields)

    with progress:
        yield fancy
    for line in after:
        stream.write(line + "\n")
    stream.flush()


# --- commands -----------------------------------------------------------------------------------


def pull(
    name: Annotated[str, typer.Argument(metavar="NAME[:TAG|@DIGEST]")],
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="suppress verbose output")] = False,
) -> None:
    """Download an image from a registry."""
    engine = _engine()
    ref = engine.image_reference(name)
    if quiet:
        engine.pull_image(name)
    else:
        if ref.tag == "latest" and not ref.digest and not name.endswith(":latest"):
            sys.stdout.write("Using default tag: latest\n")
        with progress_renderer(sys.stdout) as callback:
            engine.pull_image(name, callback)
    sys.stdout.write(f"{ref}\n")


def _image_rows(images, no_trunc: bool) -> list[dict[str, str]]:
    from datetime import datetime

    from cli.formatting import human_duration, human_size
    from hv.engine import Engine

    now = datetime.now(UTC)
    rows = []
    for image in images:
        image_id = image.id if no_trunc else image.id.removeprefix("sha256:")[:12]
        digests: dict[str, str] = {}
        for rd in image.repo_digests:
            repo, _, digest = rd.partition("@")
            digests.setdefault(repo, digest)
        pairs = []
        for tag in image.repo_tags:
            ref = Engine.image_reference(tag)
            pairs.append((ref.familiar_name, ref.tag or "<none>"))
        if not pairs:
            pairs = [(repo, "<none>") for repo in digests] or [("<none>", "<none>")]
        if image.created:
            since = human_duration((now - image.created).total_seconds()) + " ago"
            created_at = image.created.strftime("%Y-%m-%d %H:%M:%S +0000 UTC")
        else:
            since = created_at = "N/A"
        size = human_size(image.size)
        for repo, tag in pairs:
            rows.append({
                "Containers": "N/A",
                "CreatedAt": created_at,
                "CreatedSince": since,
                "Digest": digests.get(repo, "<none>"),
                "ID": image_id,
                "Repository": repo,
                "SharedSize": "N/A",
                "Size": size,
                "Tag": tag,
                "UniqueSize": "N/A",
                "VirtualSize": size,
            })
    return rows


def images(
    repository: Annotated[str | None, typer.Argument(metavar="[REPOSITORY[:TAG]]")] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="only show image IDs")] = False,
    all: Annotated[bool, typer.Option("-a", "--all", help="show all images")] = False,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="don't truncate output")] = False,
    digests: Annotated[bool, typer.Option("--digests", help="show digests")] = False,
    format: Annotated[str | None, typer.Option("--format", help="'table', 'json' or a Go "
                                               "template")] = None,
) -> None:
    """List images."""
    from cli.formatting import render

    rows = _image_rows(_engine().images.list(), no_trunc)
    if repository:
        repo, tag = repository, ""
        if repository.rfind(":") > repository.rfind("/"):
            repo, _, tag = repository.rpartition(":")
        rows = [r for r in rows if r["Repository"] == repo and (not tag or r["Tag"] == tag)]
    if quiet:
        sys.stdout.write("".join(r["ID"] + "\n" for r in rows))
        return
    columns = list(IMAGE_COLUMNS)
    if digests:
        columns.insert(2, ("DIGEST", "Digest"))
    render(sys.stdout, rows, columns, format)


def rmi(
    images: Annotated[list[str], typer.Argument(metavar="IMAGE...")],
    force: Annotated[bool, typer.Option("-f", "--force", help="force removal")] = False,
) -> None:
    """Remove one or more images."""
    from cli.errors import each

    engine = _engine()
    each(images, lambda name: [f"{kind}: {what}" for kind, what in
                               engine.remove_image(name, force)])


def tag(
    source: Annotated[str, typer.Argument(metavar="SOURCE_IMAGE[:TAG]")],
    target: Annotated[str, typer.Argument(metavar="TARGET_IMAGE[:TAG]")],
) -> None:
    """Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE."""
    _engine().tag_image(source, target)


def load(
    input: Annotated[str | None, typer.Option("-i", "--input", help="read from tar archive "
                                              "file, instead of STDIN")] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="suppress the load output")] = False,
) -> None:
    """Load an image from a docker-archive or OCI-archive tarball."""
    from pathlib import Path

    from hv.errors import UsageError

    if input is None and sys.stdin.isatty():
        raise UsageError("requested load from stdin, but stdin is empty",
                         hint="use 'hv load -i FILE' or pipe a tarball into 'hv load'")
    source = Path(input) if input is not None else sys.stdin.buffer
    # -q as docker's: no progress (hv shows none), the "Loaded image" lines all the same
    for line in _engine().image_load(source):
        sys.stdout.write(line + "\n")


def save(
    images: Annotated[list[str], typer.Argument(metavar="IMAGE...")],
    output: Annotated[str | None, typer.Option("-o", "--output", help="write to a file, "
                                               "instead of STDOUT")] = None,
    format: Annotated[str, typer.Option("--format", help="docker (docker-archive) or oci "
                                        "(OCI-archive)")] = "docker",
) -> None:
    """Save one or more images to a tar archive (streamed to STDOUT by default)."""
    from pathlib import Path

    from hv.errors import UsageError

    if output is None and sys.stdout.isatty():
        raise UsageError("cowardly refusing to save to a terminal",
                         hint="use the -o flag or redirect the output")
    engine = _engine()
    if output is not None:
        engine.image_save(images, Path(output), format)
    else:
        sys.stdout.flush()
        engine.image_save(images, sys.stdout.buffer, format)
        sys.stdout.buffer.flush()


HISTORY_COLUMNS = [
    ("IMAGE", "ID"),
    ("CREATED", "CreatedSince"),
    ("CREATED BY", "CreatedBy"),
    ("SIZE", "Size"),
    ("COMMENT", "Comment"),
]


def _ellipsis(text: str, width: int) -> str:
    """docker/cli's formatter.Ellipsis: at most `width` characters, the last one '…'."""
    return text if len(text) <= width else text[:width - 1] + "…"


def history_rows(rows, human: bool, no_trunc: bool, now=None) -> list[dict[str, str]]:
    """docker/cli's historyContext fields for the facade's HistoryRows."""
    from datetime import datetime, timedelta

    from cli.formatting import human_duration, human_size

    now = now or datetime.now(UTC)
    out = []
    for row in rows:
        created = datetime.fromtimestamp(row.created, UTC)
        local = created.astimezone()  # Go's time.Unix(…).Format(time.RFC3339): local time
        created_at = local.isoformat(timespec="seconds")
        if local.utcoffset() == timedelta(0):
            created_at = created_at[:-6] + "Z"
        since = human_duration((now - created).total_seconds()) + " ago" if human \
            else created_at
        image_id = row.id
        created_by = row.created_by.replace("\t", " ")
        if not no_trunc:
            if ":" in image_id:
                image_id = image_id.partition(":")[2]
            image_id = image_id[:12]
            created_by = _ellipsis(created_by, 45)
        out.append({
            "ID": image_id,
            "CreatedSince": since,
            "CreatedAt": created_at,
            "CreatedBy": created_by,
            "Size": human_size(row.size) if human else str(row.size),
            "Comment": row.comment,
        })
    return out


def _human_flag(args: list[str]) -> tuple[bool, list[str]]:
    """docker/cli's `-H, --human` (a Go bool flag: `-H`, `-H=false`, `--human=0`) out of
    the words click left; the other words."""
    from hv.errors import UsageError

    human, rest = True, []
    for arg in args:
        flag, eq, value = arg.partition("=")
        if flag not in ("-H", "--human"):
            if arg.startswith("-") and arg != "-":
                raise UsageError(f"unknown flag: {arg}", hint="see 'hv history --help'")
            rest.append(arg)
            continue
        if not eq:
            human = True
        elif value.lower() in ("1", "t", "true"):
            human = True
        elif value.lower() in ("0", "f", "false"):
            human = False
        else:
            raise UsageError(f'invalid argument "{value}" for "-H, --human" flag: '
                             f'strconv.ParseBool: parsing "{value}": invalid syntax',
                             hint="use -H=false for dates and sizes in full")
    if len(rest) != 1:
        raise UsageError('"hv history" requires exactly 1 argument',
                         hint="usage: hv history [OPTIONS] IMAGE")
    return human, rest


def history(
    args: Annotated[list[str], typer.Argument(metavar="IMAGE", help="the image")],
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="don't truncate output")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="only show image IDs")] = False,
    format: Annotated[str | None, typer.Option("--format", help="'table', 'json' or a Go "
                                               "template")] = None,
) -> None:
    """Show the history of an image.

    -H, --human BOOL: print sizes and dates in human readable format (default true;
    -H=false prints them in full).
    """
    from cli.formatting import render

    is_human, (image,) = _human_flag(args)
    rows = history_rows(_engine().image_history(image), is_human, no_trunc)
    if quiet and (format or "table").strip() == "table":  # docker/cli's NewHistoryFormat
        render(sys.stdout, rows, [("IMAGE", "ID")], "{{.ID}}")
        return
    columns = list(HISTORY_COLUMNS)
    if not is_human:
        columns[1] = ("CREATED AT", "CreatedAt")
    render(sys.stdout, rows, columns, format)


def inspect(images: Annotated[list[str], typer.Argument(metavar="IMAGE...")]) -> None:
    """Display detailed information on one or more images."""
    import json

    store = _engine().images
    sys.stdout.write(json.dumps([store.get(name).inspect() for name in images], indent=4) + "\n")


# `history -H=false`: click would refuse a value for a flag, so its words come through
_CONTEXT = {"history": {"ignore_unknown_options": True}}


def register(app: typer.Typer) -> None:
    """Add the image commands to the top-level app, plus the `hv image ...` group."""
    for name, func in (("pull", pull), ("images", images), ("rmi", rmi), ("tag", tag),
                       ("load", load), ("save", save), ("history", history)):
        app.command(name=name, context_settings=_CONTEXT.get(name))(func)
    group = typer.Typer(help="Manage images.", no_args_is_help=True)
    for name, func in (("ls", images), ("list", images), ("pull", pull), ("rm", rmi),
                       ("tag", tag), ("load", load), ("save", save), ("inspect", inspect),
                       ("history", history)):
        group.command(name=name, context_settings=_CONTEXT.get(name))(func)
    app.add_typer(group, name="image")
