"""How an HvError reaches the user: one line of what went wrong, one `hint:` line."""

from __future__ import annotations

import sys

from hv.errors import HvError


def print_error(err: HvError) -> None:
    sys.stderr.write(f"Error: {err.message}\n")
    if err.hint:
        sys.stderr.write(f"hint: {err.hint}\n")
    sys.stderr.flush()
