"""Docker's timestamps: RFC 3339 with nanoseconds, Go's zero time for "never"."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(ts: float | None) -> str:
    if ts is None:
        return "0001-01-01T00:00:00Z"
    dt = datetime.fromtimestamp(ts, UTC)
    frac = f"{ts % 1:.9f}"[2:]
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + frac + "Z"


def human_duration(seconds: float) -> str:
    """go-units HumanDuration (`docker ps` STATUS and CREATED): 'Less than a second' ...
    '2 years'; both front ends show it."""
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
