"""`hv compare IMAGE`: the course's Process vs Container vs VM table, measured here.

Parses the flags, shows progress on stderr, calls hv.compare, renders the result (a rich
table, markdown or JSON) and optionally the PNG. Heavy imports stay inside the command.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

FORMATS = ("table", "markdown", "json")


def compare(
    image: Annotated[str, typer.Argument(help="image whose binaries run in all three columns")],
    repeats: Annotated[int, typer.Option("-n", "--repeats", help="runs per column (median and min-max)")] = 3,
    size: Annotated[int, typer.Option("--size", help="MB written and read back by the disk I/O test")] = 32,
    compute_size: Annotated[int, typer.Option("--compute-size", help="MB of zeros hashed by md5sum for the compute test")] = 128,
    only: Annotated[str | None, typer.Option("--only", help="columns: process,container,vm")] = None,
    runtime: Annotated[str | None, typer.Option("--runtime", help="OCI runtime for the container column: crun or runc (default: crun if installed, else runc; HV_OCI_RUNTIME=none disables)")] = None,
    memory: Annotated[str | None, typer.Option("-m", "--memory", help="the VM's RAM (as hv run -m)")] = None,
    format: Annotated[str, typer.Option("--format", help="table, markdown or json")] = "table",
    plot: Annotated[str | None, typer.Option("--plot", help="also write bar charts to this PNG file")] = None,
    no_warmup: Annotated[bool, typer.Option("--no-warmup", help="skip the untimed warm-up run of each column")] = False,
) -> None:
    """Run one workload as a process, a namespace container and an hv VM; compare them."""
    from cli.session import engine
    from hv.compare.runner import Options, parse_only
    from hv.compare.runner import compare as run_compare
    from hv.errors import UsageError

    fmt = format.strip().lower()
    if fmt not in FORMATS:
        raise UsageError(f"--format: unknown format {format!r}", hint="use table, markdown or json")
    if runtime is not None and runtime.strip().lower() not in ("crun", "runc"):
        raise UsageError(f"--runtime: unknown OCI runtime {runtime!r}", hint="use crun or runc")
    if plot:
        _check_matplotlib()
    opts = Options(image=image, repeats=repeats, io_mb=size, compute_mb=compute_size,
                   only=parse_only(only), runtime=runtime, memory=memory, warmup=not no_warmup)
    _sigterm_as_interrupt()
    with _progress() as progress:
        doc = run_compare(engine(), opts, progress)
    out = sys.stdout
    if fmt == "json":
        import json

        out.write(json.dumps(doc, indent=2) + "\n")
    elif fmt == "markdown":
        from hv.compare.report import markdown

        out.write(markdown(doc))
    else:
        _table(doc)
    if plot:
        from hv.compare.report import plot as write_plot

        write_plot(doc, plot)
        sys.stderr.write(f"plot written to {plot}\n")


def _check_matplotlib() -> None:
    import importlib.util

    from hv.errors import UsageError

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib, which is not installed",
                         hint="pip install -e '.[compare]' (make setup installs it)")


def _sigterm_as_interrupt() -> None:
    """A `kill` of hv compare cleans up exactly as Ctrl-C does."""
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)


class _progress:
    """A rich progress bar on a terminal's stderr; a line per run otherwise."""

    def __enter__(self):
        err = sys.stderr
        if not err.isatty():
            last = {"text": ""}

            def plain(done: int, total: int, text: str) -> None:
                head = text.split(" · ")[0]
                if head != last["text"] and not head.endswith(" done"):
                    last["text"] = head
                    err.write(f"compare [{done}/{total}] {head}\n")
                    err.flush()

            self._bar = None
            return plain
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(),
                             console=Console(file=err), transient=True)
        self._bar.start()
        task = self._bar.add_task("preparing", total=None)

        def rich_cb(done: int, total: int, text: str) -> None:
            self._bar.update(task, completed=done, total=total, description=text)

        return rich_cb

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
        return False


def _table(doc: dict) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from hv.compare.report import COLUMNS, TITLES, column_notes, header_lines

    console = Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 160)
    for line in header_lines(doc):
        console.print(line, markup=False)
    cols = [c for c in COLUMNS if c in doc["results"]]
    table = Table(box=box.SIMPLE_HEAVY, show_lines=True, title="Process vs Container vs VM")
    table.add_column("", style="bold", no_wrap=True)
    for c in cols:
        table.add_column(TITLES[c], ratio=1)
    for row in doc["rows"]:
        table.add_row(row[0], *[row[1 + COLUMNS.index(c)] for c in cols])
    console.print(table)
    for i, n in enumerate(column_notes(doc) + doc["footnotes"], 1):
        console.print(f"{i}. {n}", markup=False)


def register(app: typer.Typer) -> None:
    app.command(name="compare")(compare)
