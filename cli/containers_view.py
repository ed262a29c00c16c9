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


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def _quote(text: str) -> str:
    """Go's strconv.Quote (docker ps's COMMAND): an argv byte that is not UTF-8 (a surrogate
    in Python's argv, PEP 383) shows as \\xNN, control characters escaped; never a raw
    surrogate, which no terminal encoding can write."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not ch.isprintable() or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out) + '"'


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
            "Labels": ",".join(f"{k}={v}" for k, v in sorted(c.labels().items())),
            "Mounts": "",
            "Networks": "user",
            "Size": "",
        })
    return rows


def _ports(c: Container) -> str:
    from hv.ports import format_ps

    return format_ps(c.bound_ports())


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


# `docker ps -f` keys (the daemon's acceptedPsFilterTags); the ones hv has no notion of
_PS_FILTERS = {"ancestor", "before", "exited", "id", "label", "name", "since", "status"}
_PS_FILTERS_UNSUPPORTED = {"expose", "health", "is-task", "isolation", "network", "publish",
                           "volume"}
_STATUSES = {"created", "restarting", "running", "removing", "paused", "exited", "dead"}
_PS_HINT = "filters: name, id, status, ancestor, exited, before, since, label"


def parse_filters(filters: list[str], accepted: set[str], unsupported: set[str] = frozenset(),
                  hint: str = "use -f key=value") -> dict[str, list[str]]:
    """`-f key=value` flags -> {key: [values]}, checked before anything is listed (Docker's
    daemon refuses an unknown key even when nothing would match: "invalid filter 'bogus'").
    Keys are lower-cased and both sides trimmed, as docker's filters.ParseFlag does."""
    groups: dict[str, list[str]] = {}
    for f in filters:
        key, eq, value = f.partition("=")
        if not eq:
            raise UsageError(f"bad format of filter (expected name=value): {f!r}",
                             hint="use -f key=value")
        key = key.strip().lower()
        if key in unsupported:
            raise UsageError(f"the filter '{key}' is not supported by hv", hint=hint)
        if key not in accepted:
            raise UsageError(f"invalid filter {key!r}", hint=hint)
        groups.setdefault(key, []).append(value.strip())
    return groups


def _search(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return pattern in text


def _matches(c: Container, key: str, value: str, created: dict[str, float]) -> bool:
    if key == "name":
        return _search(value, c.name)
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
        return st.status == "exited" and st.exit_code == int(value)
    if key == "before":
        return c.record.created < created[value]
    if key == "since":
        return c.record.created > created[value]
    if key == "label":  # `label=KEY` or `label=KEY=VALUE`
        want_key, eq, want = value.partition("=")
        have = c.labels()
        return want_key in have and (not eq or have[want_key] == want)
    return False


def _created_of(cs: list[Container], ref: str) -> float:
    """before=/since= name a container (name, id or id prefix), as Docker's daemon does."""
    from hv.errors import ContainerNotFound

    for c in cs:
        if ref.lstrip("/") == c.name or c.id == ref:
            return c.record.created
    hits = [c for c in cs if ref and c.id.startswith(ref)]
    if len(hits) == 1:
        return hits[0].record.created
    raise ContainerNotFound(f"No such container: {ref}")


def select(cs: list[Container], all: bool, filters: list[str], last: int) -> list[Container]:
    """Docker's rules: filters of the same key OR together, different keys AND."""
    groups = parse_filters(filters, _PS_FILTERS, _PS_FILTERS_UNSUPPORTED, _PS_HINT)
    for value in groups.get("status", []):
        if value not in _STATUSES:
            raise UsageError(f"invalid filter 'status={value}'",
                             hint="status: " + ", ".join(sorted(_STATUSES)))
    for value in groups.get("exited", []):
        if not re.fullmatch(r"-?\d+", value):
            raise UsageError(f"invalid filter 'exited={value}'",
                             hint="exited takes an exit code, e.g. -f exited=0")
    created = {ref: _created_of(cs, ref) for k in ("before", "since") for ref in groups.get(k, [])}
    if "status" in groups or "exited" in groups:
        all = True
    out = [c for c in cs if all or c.active]
    for key, values in groups.items():
        out = [c for c in out if any(_matches(c, key, v, created) for v in values)]
    if last >= 0:
        out = out[:last]
    return out


def log_timestamp(ts_ns: int) -> str:
    secs, ns = divmod(ts_ns, 1_000_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ns:09d}Z"


def check_template(fmt: str | None):
    """`inspect -f`'s template, parsed before any lookup as docker/cli does; None for the
    JSON outputs. A template Go would not parse exits 64 (docker/cli's inspect)."""
    from cli.formatting import TemplateError, _unescape, parse_template

    if not fmt or fmt == "json":
        return None
    try:
        return parse_template(_unescape(fmt))
    except TemplateError as e:
        raise TemplateError(f"template parsing error: {e.message}", exit_code=64) from None


def write_inspect(docs: list[dict], fmt: str | None) -> None:
    """`inspect`'s output: a JSON array (`-f json`: on one line), or the template applied to
    each document; documents the template fails on are reported after the others' output
    (exit 1), as docker/cli does."""
    import sys

    from cli.formatting import TemplateError

    tmpl = check_template(fmt)
    if tmpl is None:
        indent = None if fmt == "json" else 4
        sys.stdout.write(json.dumps(docs, indent=indent,
                                    separators=(",", ":") if indent is None else None) + "\n")
        return
    errors = []
    for doc in docs:
        try:
            sys.stdout.write(tmpl.execute(doc) + "\n")
        except TemplateError as e:
            errors.append(e.message)
    if errors:
        raise TemplateError(f"template parsing error: {errors[0]}")
