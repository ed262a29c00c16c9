"""The rest of Docker's command surface through the real CLI on real guests: `create` (a
Created container, booted by `start`), `-l` with `ps -f label=`, `--cidfile`, `create --rm`,
`logs --since/--until`, `info`/`system info`, `search`, `--device`, `hv container …`."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import Hv, _qemu_pids, drain_pool

pytestmark = pytest.mark.vm


@pytest.fixture
def private(test_images_dir):
    """A state root of its own: `container prune` removes every stopped container."""
    root = Path(tempfile.mkdtemp(prefix="hvs-", dir="/tmp"))
    h = Hv(root)
    h("load", "-i", str(test_images_dir / "busybox.oci.tar"), check=True)
    yield h
    ids = h("ps", "-aq").stdout.split()
    if ids:
        h("rm", "-f", *ids)
    drain_pool(root)
    left = _qemu_pids(root)
    for pid in left:
        os.kill(pid, 9)
    shutil.rmtree(root, ignore_errors=True)
    assert not left, f"processes outlived the test: {left}"


def one_error(p) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: ") and lines[1].startswith("hint: "), \
        p.stderr
    return lines[0]


def names(hv, *filters: str) -> list[str]:
    args = [x for f in filters for x in ("-f", f)]
    return hv("ps", "-a", *args, "--format", "{{.Names}}", check=True).stdout.split()


def test_create_labels_cidfile_then_start(hv, busybox, tmp_path):
    cidfile = tmp_path / "cid"
    try:
        p = hv("create", "--name", "sf-made", "-l", "tier=web", "-l", "course", "--cidfile",
               str(cidfile), busybox, "sh", "-c", "echo from-start; exit 5")
        assert p.returncode == 0, p.stderr
        cid = p.stdout.strip()
        assert cidfile.read_text() == cid and len(cid) == 64
        st = hv("ps", "-a", "-f", "name=sf-made", "--format", "{{.Status}}|{{.Labels}}",
                check=True).stdout.strip()
        assert st == "Created|course=,tier=web"
        doc = json.loads(hv("inspect", "sf-made", check=True).stdout)[0]
        assert doc["State"]["Status"] == "created" and doc["Config"]["Labels"] == {
            "tier": "web", "course": ""}
        assert names(hv, "label=tier=web") == ["sf-made"]
        assert names(hv, "label=course") == ["sf-made"] and names(hv, "label=tier=db") == []
        # nothing ran yet: no output
        assert hv("logs", "sf-made", check=True).stdout == ""
        p = hv("start", "-a", "sf-made")
        assert (p.returncode, p.stdout) == (5, "from-start\n"), p.stderr
        # an existing cidfile is refused before anything is made
        p = hv("run", "--name", "sf-twice", "--cidfile", str(cidfile), busybox, "true")
        assert p.returncode == 125 and "container ID file found" in one_error(p)
        assert "sf-twice" not in names(hv)
    finally:
        hv("rm", "-f", "sf-made", "sf-twice")


def test_create_rm_is_removed_after_its_detached_start(hv, busybox):
    hv("create", "--rm", "--name", "sf-rm", busybox, "sleep", "1", check=True)
    assert names(hv, "name=sf-rm") == ["sf-rm"]
    hv("start", "sf-rm", check=True)
    hv.wait_for(lambda: "sf-rm" not in names(hv), timeout=90)


def test_logs_since_and_until(hv, busybox):
    try:
        hv("run", "-d", "--name", "sf-logs", busybox, "sh", "-c",
           "echo early; sleep 3; echo late; sleep 600", check=True)
        hv.wait_for(lambda: "late" in hv("logs", "sf-logs").stdout, timeout=60)
        lines = hv("logs", "-t", "sf-logs", check=True).stdout.splitlines()
        stamps = {line.split(" ", 1)[1]: line.split(" ", 1)[0] for line in lines}
        assert set(stamps) == {"early", "late"}
        # halfway between the two lines, as RFC 3339 and as a Unix time
        from datetime import datetime

        t = [datetime.fromisoformat(stamps[k].replace("Z", "+00:00")).timestamp()
             for k in ("early", "late")]
        mid = (t[0] + t[1]) / 2
        assert hv("logs", "--since", f"{mid:.3f}", "sf-logs", check=True).stdout == "late\n"
        assert hv("logs", "--until", f"{mid:.3f}", "sf-logs", check=True).stdout == "early\n"
        assert hv("logs", "--since", "10m", "sf-logs", check=True).stdout == "early\nlate\n"
        p = hv("logs", "--since", "yesterday-ish", "sf-logs")
        assert p.returncode == 1 and "invalid time" in one_error(p)
    finally:
        hv("rm", "-f", "sf-logs")


def test_info_system_info_and_search(hv, busybox):
    p = hv("info", check=True)
    text = p.stdout
    assert " Isolation: vm" in text and " Default Runtime: hv" in text
    accel = hv("system", "info", "-f", "{{.Accelerator}}", check=True).stdout.strip()
    assert accel in ("KVM", "TCG") and f" Accelerator: {accel}" in text
    assert " Guest Kernel: " in text and "(not built" not in text
    doc = json.loads(hv("info", "-f", "json", check=True).stdout)
    assert doc["Containers"] == len(hv("ps", "-aq").stdout.split())
    assert doc["Images"] >= 1 and doc["NCPU"] >= 1
    p = hv("search", "ubuntu")
    assert p.returncode == 1 and "hv has no registry index to search" in one_error(p)


def test_device_refused_privileged_accepted_and_container_group(private):
    hv, busybox = private, "busybox"
    p = hv("run", "--rm", "--name", "sf-dev", "--device", "/dev/kvm", busybox, "true")
    assert p.returncode == 125 and "no host devices" in one_error(p)
    assert "sf-dev" not in names(hv)
    p = hv("container", "run", "--name", "sf-group", "--privileged", busybox, "echo", "ok")
    assert (p.returncode, p.stdout) == (0, "ok\n"), p.stderr
    try:
        assert "sf-group" in hv("container", "ls", "-a", "--format", "{{.Names}}",
                                check=True).stdout.split()
        assert hv("container", "inspect", "-f", "{{.State.ExitCode}}", "sf-group",
                  check=True).stdout == "0\n"
        hv("run", "-d", "--name", "sf-up", busybox, "sleep", "600", check=True)
        p = hv("container", "prune", "-f", check=True)
        assert p.stdout.startswith("Deleted Containers:\n")
        assert p.stdout.splitlines()[-1].startswith("Total reclaimed space: ")
        left = names(hv)
        assert "sf-group" not in left and "sf-up" in left  # running ones stay
    finally:
        hv("rm", "-f", "sf-group", "sf-up")


def test_stop_signal_and_stop_timeout(hv, busybox):
    import time

    try:
        hv("run", "-d", "--name", "sf-sig", "--stop-signal", "usr1", "--stop-timeout", "60",
           busybox, "sh", "-c", 'trap "echo got-usr1; exit 7" USR1; echo up; '
           "while :; do sleep 0.1; done", check=True)
        hv.wait_for(lambda: "up" in hv("logs", "sf-sig").stdout, timeout=60)
        cfg = json.loads(hv("inspect", "sf-sig", check=True).stdout)[0]["Config"]
        assert (cfg["StopSignal"], cfg["StopTimeout"]) == ("usr1", 60)
        t = time.monotonic()
        hv("stop", "sf-sig", check=True)
        assert time.monotonic() - t < 30  # the handler ended it: no 60 s grace spent
        assert hv("inspect", "-f", "{{.State.ExitCode}}", "sf-sig", check=True).stdout == "7\n"
        assert "got-usr1" in hv("logs", "sf-sig", check=True).stdout
        # --stop-timeout is stop's default grace: SIGTERM ignored, killed after 1 s
        hv("run", "-d", "--name", "sf-grace", "--stop-timeout", "1", busybox, "sh", "-c",
           'trap "" TERM; echo up; while :; do sleep 0.1; done', check=True)
        hv.wait_for(lambda: "up" in hv("logs", "sf-grace").stdout, timeout=60)
        t = time.monotonic()
        hv("stop", "sf-grace", check=True)
        assert time.monotonic() - t < 8
        assert hv("inspect", "-f", "{{.State.ExitCode}}", "sf-grace",
                  check=True).stdout == "137\n"
        p = hv("run", "--rm", "--stop-signal", "NOPE", busybox, "true")
        assert p.returncode == 125 and "invalid signal: NOPE" in one_error(p)
    finally:
        hv("rm", "-f", "sf-sig", "sf-grace")


def test_tmpfs_and_read_only(hv, busybox):
    p = hv("run", "--rm", "--read-only", "--tmpfs", "/scratch:size=1m,mode=1777", "-v",
           "/data", busybox, "sh", "-c",
           "touch /x 2>&1 | grep -c 'Read-only file system'; "
           "echo t > /scratch/f && grep -w /scratch /proc/mounts | cut -d' ' -f3,4; "
           "echo d > /data/f && echo volume-writable; "
           "echo h >> /etc/hosts && echo hosts-writable; "
           "head -c 2000000 /dev/zero > /scratch/big 2>/dev/null || echo tmpfs-full")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "1"
    assert lines[1].startswith("tmpfs rw,nosuid,nodev,noexec") and "size=1024k" in lines[1]
    assert lines[2:] == ["volume-writable", "hosts-writable", "tmpfs-full"], p.stdout
    try:
        hv("create", "--name", "sf-ro", "--read-only", "--tmpfs", "/run", busybox, "true",
           check=True)
        host = json.loads(hv("inspect", "sf-ro", check=True).stdout)[0]["HostConfig"]
        assert host["ReadonlyRootfs"] is True and host["Tmpfs"] == {"/run": ""}
    finally:
        hv("rm", "-f", "sf-ro")
    p = hv("run", "--rm", "--tmpfs", "relative", busybox, "true")
    assert p.returncode == 125 and "mount path must be absolute" in one_error(p)
