"""Events without a VM: the journal's filters, Docker's JSON shape, --since/--until."""

from __future__ import annotations

import pytest

from cli.events_cmd import parse_time
from hv.engine.events import Event
from hv.errors import UsageError


def test_parse_time_forms():
    now = 1_700_000_000.0
    assert parse_time("1699999999.5", now) == 1699999999.5
    assert parse_time("10m", now) == now - 600
    assert parse_time("1h30m", now) == now - 5400
    assert parse_time("0s", now) == now
    assert parse_time("2023-11-14T22:13:20Z", now) == now
    with pytest.raises(UsageError, match="invalid time"):
        parse_time("yesterday", now)


def test_filters_and_docker_shape():
    ev = Event("container", "die", "ab" * 32, {"image": "busybox", "name": "web",
                                               "exitCode": "3"}, 5_000_000_123)
    assert ev.matches({"event": ["die"], "container": ["web"]})
    assert ev.matches({"container": ["abab"]})  # an id prefix
    assert not ev.matches({"type": ["image"]})
    assert not ev.matches({"event": ["start"]})
    exec_ev = Event("container", "exec_start: sh -c true", "c" * 64)
    assert exec_ev.matches({"event": ["exec_start"]})
    doc = ev.to_docker()
    assert doc["Actor"] == {"ID": "ab" * 32, "Attributes": ev.attributes}
    assert (doc["time"], doc["timeNano"], doc["status"], doc["from"]) == (
        5, 5_000_000_123, "die", "busybox")
