"""Docker's output conventions: go-units sizes and durations, tabwriter tables, --format.

`render` covers what scripts use from docker/cli's formatter: the default table, `table
TEMPLATE`, `json`, and a Go-template subset ({{.Key}}, {{json .Key}}, {{upper .Key}},
{{lower .Key}}, {{title .Key}}, {{json .}}) applied per row without a header.
"""

from __future__ import annotations

import json
import re
from typing import TextIO

from hv.errors import UsageError

_DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}")
# tabwriter.NewWriter(out, 10, 1, 3, ' ', 0) in docker/cli's formatter
_MINWIDTH, _PADDING = 10, 3
_HEADERS = {
    "ID": "ID",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "RunningFor": "CREATED",
}


def human_size(n: float) -> str:
    """go-units HumanSizeWithPrecision(n, 3): '4.26MB', '512B', '1.2GB'."""
    size = float(n)
    i = 0
    while size >= 1000 and i < len(_DECIMAL_UNITS) - 1:
        size /= 1000
        i += 1
    return f"{size:.3g}{_DECIMAL_UNITS[i]}"


def human_duration(seconds: float) -> str:
    """go-units HumanDuration: 'Less than a second' ... '2 years'."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def go_json(value) -> str:
    """json.Marshal's output: compact, sorted keys for maps, <>& escaped."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def header_for(key: str) -> str:
    """Docker's column header for a field name: 'CreatedAt' -> 'CREATED AT'."""
    return _HEADERS.get(key) or re.sub(r"(?<=[a-z])(?=[A-Z])", " ", key).upper()


def _unescape(fmt: str) -> str:
    return fmt.replace("\\t", "\t").replace("\\n", "\n")


def _compile(fmt: str):
    """Split a template into literal text and (function, key) actions; key None means '.'."""
    parts: list[str | tuple[str, str | None]] = []
    pos = 0
    for m in _ACTION.finditer(fmt):
        if m.start() > pos:
            parts.append(fmt[pos : m.start()])
        words = m.group(1).split()
        func = words[0] if len(words) == 2 else ""
        arg = words[-1] if words else ""
        if (len(words) not in (1, 2) or not arg.startswith(".")
                or func not in ("", "json", "upper", "lower", "title")):
            raise UsageError(
                f"template parsing error: template: :1: unsupported action {m.group(0)!r}",
                hint="use Go template fields like '{{.ID}}', '{{json .}}' or 'table {{.ID}}'",
            )
        parts.append((func, arg[1:] or None))
        pos = m.end()
    if pos < len(fmt):
        parts.append(fmt[pos:])
    return parts


def _execute(parts, row: dict[str, str]) -> str:
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        func, key = part
        if key is None:
            value = row
        elif key in row:
            value = row[key]
        else:
            raise UsageError(
                f'template: :1:2: executing "" at <.{key}>: can\'t evaluate field {key}',
                hint="see the fields with --format '{{json .}}'",
            )
        if func == "json":
            out.append(go_json(value))
        elif func == "upper":
            out.append(str(value).upper())
        elif func == "lower":
            out.append(str(value).lower())
        elif func == "title":
            out.append(str(value).title())
        else:
            out.append(go_json(value) if isinstance(value, dict) else str(value))
    return "".join(out)


def tabwrite(lines: list[str]) -> str:
    """Go's text/tabwriter with docker/cli's settings: tab-terminated cells are padded."""
    rows = [line.split("\t") for line in lines]
    widths: list[int] = []
    for cells in rows:
        for i, cell in enumerate(cells[:-1]):
            need = max(len(cell) + _PADDING, _MINWIDTH)
            if i >= len(widths):
                widths.append(need)
            else:
                widths[i] = max(widths[i], need)
    out = []
    for cells in rows:
        padded = [c.ljust(widths[i]) for i, c in enumerate(cells[:-1])]
        out.append("".join(padded) + cells[-1])
    return "".join(line + "\n" for line in out)


def render(
    out: TextIO,
    rows: list[dict[str, str]],
    columns: list[tuple[str, str]],
    fmt: str | None,
) -> None:
    """Write rows as Docker would for this --format value (None: the default table)."""
    fmt = (fmt or "").strip()
    headers = {key: header for header, key in columns}
    if not fmt or fmt == "table":
        template = "\t".join(f"{{{{.{key}}}}}" for _, key in columns)
        table = True
    elif fmt.startswith("table"):
        template, table = _unescape(fmt[5:].strip()), True
    elif fmt == "json":
        template, table = "{{json .}}", False
    else:
        template, table = _unescape(fmt), False
    parts = _compile(template)
    if not table:
        out.write("".join(_execute(parts, row) + "\n" for row in rows))
        return
    header_row = {}
    for part in parts:
        if isinstance(part, tuple) and part[1]:
            header_row[part[1]] = headers.get(part[1]) or header_for(part[1])
    lines = [_execute([p if isinstance(p, str) else ("", p[1]) for p in parts], header_row)]
    lines += [_execute(parts, row) for row in rows]
    out.write(tabwrite(lines))
