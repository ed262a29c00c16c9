"""The facade's Engine-API-shaped operations on real guests: exec sessions, the attach
stream, wait conditions, logs since/until, archive stat/get/put, events.

The API service is a translation of these; here they are called directly, as a front end
does, on one shared running container.
"""

from __future__ import annotations

import io
import select
import tarfile
import threading
import time

import pytest

from hv.config import Config
from hv.engine import Engine
from hv.errors import Conflict, NotFound, UsageError


def _drain(stream, stdin: bytes | None = None, timeout: float = 60) -> dict[int, bytes]:
    """Everything a stream says until it is done (stdin written, then closed, first)."""
    out: dict[int, bytes] = {1: b"", 2: b""}
    if stdin is not None:
        stream.write(stdin)
        stream.close_stdin()
    deadline = time.monotonic() + timeout
    while (chunks := stream.read()) is not None:
        assert time.monotonic() < deadline, f"stream not done: {out}"
        for kind, data in chunks:
            out[kind] += data
        if not chunks:
            select.select([stream], [], [], 0.2)
    return out


@pytest.fixture(scope="module")
def engine(hv_root) -> Engine:
    return Engine(Config.from_environ())


@pytest.fixture(scope="module")
def box(hv, busybox):
    name = "hv-test-facade"
    hv("rm", "-f", name)
    hv("run", "-d", "--name", name, busybox, "sh", "-c",
       "echo first; sleep 1; echo second >&2; exec sleep 3600", check=True)
    yield name
    hv("rm", "-f", name)


def test_exec_session_create_start_inspect(engine, box):
    eid = engine.exec_create(box, ["sh", "-c", "cat; echo err >&2; exit 7"], env=["A=1"],
                             stdin=True)
    before = engine.exec_inspect(eid)
    assert before["Running"] is False and before["ExitCode"] is None
    assert before["ProcessConfig"]["entrypoint"] == "sh" and before["OpenStdin"] is True
    stream = engine.exec_start(eid)
    try:
        out = _drain(stream, stdin=b"piped\n")
    finally:
        stream.close()
    assert out == {1: b"piped\n", 2: b"err\n"} and stream.exit_code == 7
    after = Engine(Config.from_environ()).exec_inspect(eid)  # another process's view
    assert after["Running"] is False and after["ExitCode"] == 7
    with pytest.raises(Conflict, match="already been started"):
        engine.exec_start(eid)
    with pytest.raises(NotFound, match="No such exec instance"):
        engine.exec_inspect("0" * 64)


def test_exec_on_a_tty_resizes(engine, box):
    eid = engine.exec_create(box, ["sh", "-c", "sleep 0.5; stty size"], tty=True)
    stream = engine.exec_start(eid, size=(100, 30))
    try:
        engine.exec_resize(eid, 120, 40)
        out = _drain(stream)
    finally:
        stream.close()
    assert b"40 120" in out[1] and stream.exit_code == 0


def test_attach_stream_and_wait_conditions(engine, hv, busybox):
    name = "hv-test-facade-attach"
    hv("rm", "-f", name)
    hv("run", "-d", "-i", "--name", name, busybox, "sh", "-c", "read x; echo got $x; exit 3",
       check=True)
    try:
        stream = engine.attach(name)
        try:
            out = _drain(stream, stdin=b"hello\n")
        finally:
            stream.close()
        assert out[1].endswith(b"got hello\n") and stream.exit_code == 3
        res = engine.wait(name)  # not-running: it has exited already
        assert res.status_code == 3 and res.error is None
        with pytest.raises(UsageError, match="invalid condition"):
            engine.wait(name, "sometime")

        got = {}
        waiter = threading.Thread(target=lambda: got.setdefault(
            "next", engine.wait(name, "next-exit")))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive(), "next-exit of a stopped container waits for a new run"
        hv("start", name, check=True)
        stream = engine.attach(name)
        try:
            _drain(stream, stdin=b"again\n")
        finally:
            stream.close()
        waiter.join(60)
        assert got["next"].status_code == 3

        removed = threading.Thread(target=lambda: got.setdefault(
            "removed", engine.wait(name, "removed")))
        removed.start()
        time.sleep(0.3)
        assert removed.is_alive()
        hv("rm", name, check=True)
        removed.join(30)
        assert got["removed"].status_code == 3
    finally:
        hv("rm", "-f", name)


def test_logs_since_until(engine, box, hv):
    hv.wait_for(lambda: len(list(engine.logs(box))) >= 2, 60)
    lines = list(engine.logs(box))
    assert [line.data for line in lines] == [b"first\n", b"second\n"]
    second_at = (lines[1].ts_ns - 1000) / 1e9  # a float's seconds hold ~0.2 µs here
    assert [line.data for line in engine.logs(box, since=second_at)] == [b"second\n"]
    assert [line.data for line in engine.logs(box, until=second_at - 0.001)] == [b"first\n"]


def test_archive_stat_get_put(engine, box):
    data = b"archive bytes\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ti = tarfile.TarInfo("put.txt")
        ti.size, ti.mode = len(data), 0o640
        tar.addfile(ti, io.BytesIO(data))
    buf.seek(0)
    engine.archive_put(box, "/tmp", buf)
    st = engine.archive_stat(box, "/tmp/put.txt")
    assert (st.name, st.size, st.mode) == ("put.txt", len(data), 0o640)
    # Go FileMode: ModeDir | ModeSticky | rwxrwxrwx, as Docker sends it
    assert engine.archive_stat(box, "/tmp").mode == (1 << 31) | (1 << 20) | 0o777
    out = io.BytesIO()
    engine.archive_get(box, "/tmp/put.txt", out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        assert tar.extractfile("put.txt").read() == data
    with pytest.raises(NotFound, match="Could not find the file /nope"):
        engine.archive_stat(box, "/nope")
    with pytest.raises(UsageError, match="not a directory"):
        engine.archive_put(box, "/tmp/put.txt", io.BytesIO(buf.getvalue()))


def test_events_journal(engine, hv, busybox):
    since = time.time()
    name = "hv-test-facade-events"
    hv("run", "--rm", "--name", name, busybox, "sh", "-c", "exit 4", check=False)
    events = [e for e in engine.events(since=since, follow=False)
              if e.attributes.get("name") == name]
    assert [e.action for e in events] == ["create", "start", "die", "destroy"]
    assert events[2].attributes["exitCode"] == "4"
    doc = events[0].to_docker()
    assert doc["Type"] == "container" and doc["Actor"]["Attributes"]["image"] == busybox
    only = list(engine.events(since=since, follow=False, filters={"event": ["die"],
                                                                  "container": [name]}))
    assert [e.action for e in only] == ["die"]


def test_hv_events_cli(hv, busybox):
    name = "hv-test-facade-events-cli"
    hv("run", "--rm", "--name", name, busybox, "true", check=True)
    p = hv("events", "--since", "2m", "--until", "0s", "-f", f"container={name}",
           "--format", "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}", check=True)
    assert p.stdout.splitlines() == [f"container {a} {name}"
                                     for a in ("create", "start", "die", "destroy")]
    bad = hv("events", "--since", "bogus")
    assert bad.returncode == 1 and "invalid time 'bogus'" in bad.stderr and "hint:" in bad.stderr
