"""Pull progress while `run` fetches a missing image."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def pull_progress(engine) -> Iterator[object]:
    """A callback for ImageStore.pull events; notices (e.g. 'Unable to find image') first."""
    import sys

    try:
        from cli.image_cmds import progress_renderer
    except ImportError:
        progress_renderer = None

    def plain(event) -> None:
        for text in engine.notices:
            sys.stderr.write(text + "\n")
        engine.notices.clear()
        if event.layer and event.status in ("Pull complete", "Already exists"):
            sys.stderr.write(f"{event.layer}: {event.status}\n")
        elif not event.layer and event.status:
            sys.stderr.write(event.status + "\n")

    if progress_renderer is None:
        yield plain
        return
    with progress_renderer(sys.stderr, before=lambda: _flush_notices(engine)) as cb:
        yield cb


def _flush_notices(engine) -> None:
    import sys

    for text in engine.notices:
        sys.stderr.write(text + "\n")
    engine.notices.clear()
