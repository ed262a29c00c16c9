"""GET /events: Docker's event stream, for docker-compose and `docker events`: the engine's
journal (hv.engine.events: what every hv process did, the CLI's too), as JSON lines."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator


def stream(engine, filters: dict[str, list[str]], since: float, until: float,
           gone: Callable[[], bool]) -> Iterator[bytes]:
    """JSON lines from `since` (0: from now) until `until` (0: until the client leaves)."""
    yield b""  # the headers go at once
    for ev in engine.events(since or None, until or None, filters, follow=True,
                            stop=gone):
        yield json.dumps(ev.to_docker()).encode() + b"\n"
