"""Issue 11's runtime faults without a VM: what the domain XML asks of QEMU on a disk error,
what hv reads from libvirt's status files and QEMU's monitor, stats' CPU rate, virtiofsd
liveness, and look-ups that must not make state. The real guests are in
tests/integration/test_faults_runtime.py."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hv import volumes
from hv.config import Config
from hv.context import Context
from hv.runtime import domains
from hv.runtime.domain import Disk, DomainSpec, report_io_errors


@pytest.fixture
def root(monkeypatch):
    """A short state root: libvirt's files are read where they are, not through the short
    link a long root gets."""
    d = Path(tempfile.mkdtemp(prefix="hvu-", dir="/tmp"))
    monkeypatch.setenv("HV_ROOT", str(d / "s"))
    monkeypatch.delenv("HV_HOST", raising=False)
    yield d / "s"
    shutil.rmtree(d, ignore_errors=True)


def _ctx() -> Context:
    return Context.of(Config.from_environ())


# --- 1. a full disk: the guest gets the error, the VM is not paused ------------------------


def _spec() -> DomainSpec:
    return DomainSpec(name="c", uuid="0123abcd-0123-4567-89ab-0123456789ab",
                      kernel=Path("/k"), initrd=Path("/i"), cmdline="",
                      disks=[Disk(Path("/c/disk.qcow2"), "hv-root", "vda"),
                             Disk(Path("/c/seed.iso"), "hv-seed", "vdb", fmt="raw",
                                  readonly=True)])


def test_every_disk_reports_io_errors_to_the_guest():
    drivers = ET.fromstring(_spec().to_xml()).findall("devices/disk/driver")
    assert [(d.get("error_policy"), d.get("rerror_policy")) for d in drivers] == \
        [("report", "report")] * 2


def test_a_domain_of_an_older_hv_is_brought_up_to_date():
    old = _spec().to_xml().replace(' error_policy="report" rerror_policy="report"', "")
    assert "error_policy" not in old
    new = report_io_errors(old)
    assert new is not None
    dom = ET.fromstring(new)
    assert all(d.get("error_policy") == d.get("rerror_policy") == "report"
               for d in dom.findall("devices/disk/driver"))
    assert domains.read_metadata(new) == domains.read_metadata(old)  # the record survives
    assert report_io_errors(new) is None  # nothing to do: no redefine at each start
    stop = old.replace('discard="unmap"', 'discard="unmap" error_policy="stop"', 1)
    assert 'error_policy="report"' in report_io_errors(stop)


def _status_file(root: Path, name: str, pid: int, state: str = "running", reason: str = "",
                 monitor: str = "", shares: tuple = ()) -> None:
    run = root / "libvirt" / "run" / "qemu"
    run.mkdir(parents=True, exist_ok=True)
    fs = "".join(
        f"<filesystem type='mount'><driver type='virtiofs'/><source dir='/s{i}'/>"
        f"<target dir='{tag}'/><alias name='{alias}'/></filesystem>"
        for i, (alias, tag) in enumerate(shares))
    rec = json.dumps({"id": "ab" * 32, "name": name})
    (run / f"{name}.xml").write_text(
        f"<domstatus state='{state}' reason='{reason}' pid='{pid}'>"
        f"<monitor path='{monitor}' type='unix'/>"
        f"<domain type='qemu' id='7'><name>{name}</name><uuid>u</uuid>"
        f"<metadata><hv:container xmlns:hv='https://hv.dev/xmlns/container/1'>{rec}"
        f"</hv:container></metadata><devices>{fs}</devices></domain></domstatus>")


def test_a_pause_libvirt_recorded_keeps_its_reason(root):
    _status_file(root, "c", os.getpid(), state="paused", reason="ioerror")
    (info,) = domains.list_domains(_ctx().libvirt)
    assert info.active and info.paused and info.reason == "ioerror"


class _FakeQemu:
    """A QMP monitor socket answering as QEMU 7.2 does, with a run state of our choosing."""

    def __init__(self, path: Path, status: str) -> None:
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(str(path))
        self.srv.listen()
        self.status = status
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.srv.accept()
        f = conn.makefile("rwb")
        f.write(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
        f.flush()
        for line in f:
            req = json.loads(line)
            if req["execute"] == "qmp_capabilities":
                f.write(b'{"return": {}}\r\n')
            else:
                f.write(json.dumps({"return": {"status": self.status, "running": False},
                                    "id": req.get("id")}).encode() + b"\r\n")
            f.flush()


def test_a_pause_nobody_recorded_is_read_from_qemu(root, tmp_path):
    """No libvirt process hears QEMU's STOP event between hv commands: the status file says
    running, QEMU says io-error."""
    sock = tmp_path / "m.sock"
    _FakeQemu(sock, "io-error")
    _status_file(root, "c", os.getpid(), monitor=str(sock))
    (info,) = domains.list_domains(_ctx().libvirt)
    assert info.active and not info.paused
    domains.probe_run_states([info])
    assert info.paused and info.reason == "io-error"


def test_a_monitor_that_does_not_answer_costs_the_timeout_only(root, tmp_path):
    sock = tmp_path / "m.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(sock))
    srv.listen()  # held by "another libvirt": never greets
    _status_file(root, "c", os.getpid(), monitor=str(sock))
    (info,) = domains.list_domains(_ctx().libvirt)
    import time

    t = time.monotonic()
    domains.probe_run_states([info], timeout=0.2)
    assert time.monotonic() - t < 1.0
    assert not info.paused
    srv.close()


# --- 3. a virtiofsd that died --------------------------------------------------------------


def test_dead_shares_are_the_ones_whose_virtiofsd_is_gone(root):
    fake = subprocess.Popen(["sleep", "30"])  # alive, but not a virtiofsd
    try:
        _status_file(root, "c", os.getpid(), shares=(("fs0", "hv0"), ("fs1", "hv1"),
                                                     ("fs2", "hv2")))
        run = root / "libvirt" / "run" / "qemu"
        gone = subprocess.Popen(["true"])
        gone.wait()
        (run / "7-c-fs0-fs.pid").write_text(f"{gone.pid}\n")
        (run / "7-c-fs1-fs.pid").write_text(f"{fake.pid}\n")
        # fs2: no pid file (not libvirt's layout as known): no verdict
        (info,) = domains.list_domains(_ctx().libvirt)
        assert info.shares == [("fs0", "hv0"), ("fs1", "hv1"), ("fs2", "hv2")]
        assert domains.dead_shares(_ctx().libvirt, info) == ["hv0", "hv1"]
    finally:
        fake.kill()
        fake.wait()


# --- stats ------------------------------------------------------------------------------------


def test_stats_never_shows_a_negative_cpu_rate(monkeypatch):
    """The second sample of a domain libvirt shut off (its reconnect failed on a full state
    root) or restarted reads a smaller CPU time: -331.99% before."""
    from hv import guestops
    from hv.containers import Container, Record

    rec = Record(id="ab" * 32, name="c", image="busybox", image_id="sha256:" + "0" * 64,
                 created=0.0, entrypoint=[], cmd=["true"], env=[], workdir="/", user="",
                 hostname="h", memory_mib=512, vcpus=1)
    samples = iter([
        {"c": {"cpu": 9_000_000_000, "rss": 1, "blk": (0, 0), "t": 0.0, "boot": 1}},
        {"c": {"cpu": 1_000_000_000, "rss": 2, "blk": (0, 0), "t": 1.0, "boot": 2}},
    ])
    from types import SimpleNamespace

    ctx = SimpleNamespace(libvirt=SimpleNamespace(call=lambda fn, names: next(samples)))
    c = Container(rec, True, paths=Config.from_environ().paths)
    (row,) = guestops.stats(ctx, [c], interval=0)
    assert row["cpu"] == 0.0 and row["mem"] == 2
    samples = iter([
        {"c": {"cpu": 9_000_000_000, "rss": 1, "blk": (0, 0), "t": 0.0, "boot": 1}},
        {"c": {"cpu": 9_500_000_000, "rss": 2, "blk": (0, 0), "t": 1.0, "boot": 1}},
    ])
    (row,) = guestops.stats(ctx, [c], interval=0)
    assert row["cpu"] == pytest.approx(50.0)


# --- 2. look-ups make no state ----------------------------------------------------------------


def test_volume_look_ups_make_no_state(root):
    vs = volumes.Volumes(Config.from_environ(), embedded=True, uri="qemu:///embed")
    with pytest.raises(volumes.VolumeNotFound):
        vs.remove("nosuch")
    assert vs.remove("nosuch", force=True) == "nosuch"
    assert vs.prune() == ([], 0)
    assert vs.remove_anonymous(["x" * 64]) == []
    assert not paths_exist(root)
    vs.create("vv")
    assert vs.remove("vv") == "vv"  # once there are volumes, the lock is used


def paths_exist(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*")] if root.exists() else []
