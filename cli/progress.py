"""Pull progress while `run` fetches a missing image."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def pull_progress() -> Iterator[object]:
    """A callback for the engine's pull events (Docker's lines on stderr, bars on a tty)."""
    import sys

    from cli.image_cmds import progress_renderer

    with progress_renderer(sys.stderr) as cb:
        yield cb
