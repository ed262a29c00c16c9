"""How an HvError reaches the user: one line of what went wrong, one `hint:` line."""

from __future__ import annotations

import sys

from hv.errors import HvError


def print_error(err: HvError) -> None:
    sys.stderr.write(f"Error: {err.message}\n")
    if err.hint:
        sys.stderr.write(f"hint: {err.hint}\n")
    sys.stderr.flush()


def each(items: list[str], action) -> None:
    """Docker's multi-argument verbs: run `action` on every item, print the lines it returns,
    report each failure on its own, and exit 1 at the end if any failed."""
    import typer

    failed = False
    for item in items:
        try:
            out = action(item)
            for line in [out] if isinstance(out, str) else (out or []):
                sys.stdout.write(f"{line}\n")
            sys.stdout.flush()
        except HvError as e:
            sys.stdout.flush()
            print_error(e)
            failed = True
    if failed:
        raise typer.Exit(1)
