"""Docker's timestamps: RFC 3339 with nanoseconds, Go's zero time for "never"."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(ts: float | None) -> str:
    if ts is None:
        return "0001-01-01T00:00:00Z"
    dt = datetime.fromtimestamp(ts, UTC)
    frac = f"{ts % 1:.9f}"[2:]
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + frac + "Z"
