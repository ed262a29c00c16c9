"""`hv events`: Docker's event stream, read from the engine's journal."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer


def parse_time(text: str, now: float | None = None) -> float:
    """Docker's --since/--until: a Unix time (`1700000000[.5]`), a duration before now
    (`10m`, `1h30m`, `45s`), or an RFC 3339 date/time."""
    from datetime import datetime

    from hv.errors import UsageError

    now = time.time() if now is None else now
    t = text.strip()
    try:
        return float(t)
    except ValueError:
        pass
    import re

    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", t)
    if t and m and any(m.groups()):
        h, mi, s = (float(g or 0) for g in m.groups())
        return now - (h * 3600 + mi * 60 + s)
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"invalid time {text!r}",
                         hint="use a Unix time, a duration like 10m, or 2024-01-02T15:04:05Z"
                         ) from None
    return dt.timestamp() if dt.tzinfo else dt.astimezone().timestamp()


def _filters(items: list[str]) -> dict[str, list[str]]:
    from hv.errors import UsageError

    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in ("type", "event", "container", "image", "volume", "network",
                                  "label"):
            raise UsageError(f"invalid filter '{item}'",
                             hint="use type=, event=, container=, image=, volume=, label=")
        out.setdefault(key, []).append(value)
    return out


def register(app: typer.Typer) -> None:
    @app.command()
    def events(
        since: Annotated[str | None, typer.Option("--since", help="show events created since this time")] = None,
        until: Annotated[str | None, typer.Option("--until", help="stream events until this time")] = None,
        filter: Annotated[list[str] | None, typer.Option("-f", "--filter", help="type=, event=, container=, image=, volume=, label=")] = None,
        format: Annotated[str | None, typer.Option("--format", help="json or a Go template")] = None,
    ) -> None:
        """Get real time events from hv's containers, images and volumes."""
        import json

        from cli.session import engine
        from hv.timefmt import rfc3339

        lo = parse_time(since) if since else None
        hi = parse_time(until) if until else None
        follow = hi is None or hi > time.time()
        tmpl = None
        if format and format != "json":
            from cli.containers_view import check_template

            tmpl = check_template(format)
        for ev in engine().events(lo, hi, _filters(list(filter or [])), follow=follow):
            doc = ev.to_docker()
            if format == "json":
                line = json.dumps(doc, separators=(",", ":"))
            elif tmpl is not None:
                line = tmpl.execute(doc)
            else:
                attrs = ", ".join(f"{k}={v}" for k, v in sorted(ev.attributes.items()))
                line = f"{rfc3339(ev.time_ns / 1e9)} {ev.type} {ev.action} {ev.id}" + (
                    f" ({attrs})" if attrs else "")
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
