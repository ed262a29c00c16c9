"""How containers look in `ps`, `logs -t` and `inspect -f`: Docker's columns and words."""

from __future__ import annotations

import json
import re
import shlex
import time
from datetime import UTC, datetime

from hv.containers import Container
from hv.errors import UsageError


def _ago(seconds: float) -> str:
    from cli.formatting import human_duration

    return human_duration(max(0.0, seconds)) + " ago"


def status_text(c: Container, now: float) -> str:
    st = c.state()
    if st.status in ("running", "paused"):
        from cli.formatting import human_duration

        up = "Up " + human_duration(max(0.0, now - (st.started_at or now)))
        return up + (" (Paused)" if st.status == "paused" else "")
    if st.status == "exited":
        return f"Exited ({st.exit_code}) " + _ago(now - (st.finished_at or now))
    return "Created"


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def command_text(c: Container, no_trunc: bool) -> str:
    cmd = shlex.join(c.record.argv)
    if not no_trunc and len(cmd) > 20:
        cmd = cmd[:19] + "…"
    return _quote(cmd)


def ps_rows(cs: list[Container], no_trunc: bool) -> list[dict[str, str]]:
    now = time.time()
    rows = []
    for c in cs:
        st = c.state()
        rows.append({
            "ID": c.id if no_trunc else c.short_id,
            "Image": c.record.image,
            "Command": command_text(c, no_trunc),
            "CreatedAt": datetime.fromtimestamp(c.record.created, UTC)
            .strftime("%Y-%m-%d %H:%M:%S +0000 UTC"),
            "RunningFor": _ago(now - c.record.created),
            "Status": status_text(c, now),
            "State": st.status,
            "Ports": _ports(c),
            "Names": c.name,
            "Labels": "",
            "Mounts": "",
            "Networks": "user",
            "Size": "",
        })
    return rows


def _ports(c: Container) -> str:
    from hv.guestops import bound_ports
    from hv.ports import format_ps

    return format_ps(bound_ports(c))


def stats_rows(stats: list[dict]) -> list[dict[str, str]]:
    from cli.formatting import human_size

    rows = []
    for s in stats:
        rd, wr = s["blk"]
        rows.append({
            "ID": s["id"][:12], "Container": s["id"][:12], "Name": s["name"],
            "CPUPerc": f"{s['cpu']:.2f}%",
            "MemUsage": f"{_iec(s['mem'])} / {_iec(s['limit'])}",
            "MemPerc": f"{(100 * s['mem'] / s['limit']) if s['limit'] else 0:.2f}%",
            "NetIO": "--", "BlockIO": f"{human_size(rd)} / {human_size(wr)}", "PIDs": "--",
        })
    return rows


def _iec(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.4g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return f"{n:.4g}GiB"


def _matches(c: Container, key: str, value: str) -> bool:
    if key == "name":
        return re.search(value, c.name) is not None
    if key == "id":
        return c.id.startswith(value)
    if key == "status":
        return c.state().status == value
    if key == "ancestor":
        r = c.record
        bare = value.split(":", 1)[0] if "@" not in value else value
        return value in (r.image, r.image_id) or bare == r.image or (
            value.removeprefix("sha256:") and r.image_id.removeprefix("sha256:").startswith(
                value.removeprefix("sha256:")))
    if key == "exited":
        st = c.state()
        return st.status == "exited" and str(st.exit_code) == value
    raise UsageError(f"invalid filter '{key}'", hint="filters: name, id, status, ancestor, exited")


def select(cs: list[Container], all: bool, filters: list[str], last: int) -> list[Container]:
    """Docker's rules: filters of the same key OR together, different keys AND."""
    groups: dict[str, list[str]] = {}
    for f in filters:
        key, eq, value = f.partition("=")
        if not eq:
            raise UsageError(f"bad format of filter (expected name=value): {f}",
                             hint="use -f key=value")
        groups.setdefault(key.strip(), []).append(value.strip())
    if "status" in groups or "exited" in groups:
        all = True
    out = [c for c in cs if all or c.active]
    for key, values in groups.items():
        out = [c for c in out if any(_matches(c, key, v) for v in values)]
    if last >= 0:
        out = out[:last]
    return out


def log_timestamp(ts_ns: int) -> str:
    secs, ns = divmod(ts_ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ns:09d}Z"


_FIELD = re.compile(r"{{\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*}}")


def apply_template(fmt: str, doc: dict) -> str:
    """The part of Go templates scripts use with inspect: {{.A.B}} and {{json .A}}."""

    def value(m: re.Match) -> str:
        cur = doc
        for part in filter(None, m.group(2).split(".")):
            if not isinstance(cur, dict) or part not in cur:
                raise UsageError(
                    f'template: :1: executing "" at <.{m.group(2)}>: map has no entry for key '
                    f'"{part}"', hint="see 'hv inspect NAME' for the fields")
            cur = cur[part]
        if m.group(1):
            return json.dumps(cur)
        if isinstance(cur, bool):
            return "true" if cur else "false"
        if cur is None:
            return "<no value>"
        if isinstance(cur, list):
            return "[" + " ".join(str(x) for x in cur) + "]"
        if isinstance(cur, dict):
            return "map[" + " ".join(f"{k}:{v}" for k, v in cur.items()) + "]"
        return str(cur)

    return _FIELD.sub(value, fmt.replace("\\t", "\t").replace("\\n", "\n"))


def write_inspect(docs: list[dict], fmt: str | None) -> None:
    """`inspect`'s output: a JSON array, or the template applied to each document."""
    import sys

    if fmt:
        for doc in docs:
            sys.stdout.write(apply_template(fmt, doc) + "\n")
    else:
        sys.stdout.write(json.dumps(docs, indent=4) + "\n")
