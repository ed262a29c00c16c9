"""hv compare without a VM: markers, statistics, /proc parsing, rootfs look-ups, the report."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from hv.compare import comm, measure, report, rootfs, workload
from hv.compare.legs import RunResult, runtime_choice
from hv.compare.runner import Options, parse_only
from hv.config import Config
from hv.errors import UsageError

# --- markers -------------------------------------------------------------------------------


def test_transcript_reads_markers_and_spans():
    t = workload.Transcript()
    assert t.feed_line("@@hvcmp start\n", 1.0).key == "start"
    t.feed_line("some other output", 1.1)
    t.feed_line("@@hvcmp kernel 6.1.0-hv", 1.2)
    t.feed_line("@@hvcmp compute-begin", 2.0)
    t.feed_line("@@hvcmp compute-end", 3.5)
    t.feed_line("@@hvcmp write-end 0", 4.0)
    t.feed_line("@@hvcmp rss_kib 1952", 4.1)
    t.feed_line("@@hvcmp hash", 4.2)
    assert t.value("kernel") == "6.1.0-hv"
    assert t.span("compute-begin", "compute-end") == 1.5
    assert t.span("compute-begin", "missing") is None
    assert t.status("write-end") == 0
    assert t.number("rss_kib") == 1952.0
    assert t.number("hash") is None and t.number("kernel") is None
    assert t.other == ["some other output"]


def test_line_splitter_keeps_partial_lines():
    s = workload.LineSplitter()
    assert s.feed(b"@@hvcmp st") == []
    assert s.feed(b"art\n@@hvcmp a 1\n@@hv") == ["@@hvcmp start", "@@hvcmp a 1"]
    assert s.flush() == ["@@hv"]
    assert s.flush() == []


def test_argv_overrides_everything_with_the_script():
    argv = workload.argv(["/bin/sh"], "full", marker_pid=42, token="tok", compute_mb=8,
                         io_mb=4, sync="sleep", wait_s=1.0)
    assert argv[:2] == ["/bin/sh", "-c"] and argv[2] == workload.SCRIPT
    assert argv[3:] == ["hvcmp", "full", "42", "tok", "8", "4", "sleep", "1", "/hvcmp-io.dat"]
    with pytest.raises(ValueError):
        workload.argv(["/bin/sh"], "bogus")


def test_the_script_runs_under_busybox_sh(tmp_path):
    """The real script, on the host, through busybox's sh: every marker comes out."""
    marker = subprocess.Popen(["sleep", "30"])
    try:
        argv = workload.argv(["/bin/busybox", "sh"], "full", marker_pid=marker.pid,
                             token="sleep", compute_mb=1, io_mb=1, sync="stdin",
                             io_file=str(tmp_path / "io.dat"))
        p = subprocess.run(argv, input="go\ngo\n", capture_output=True, text=True, timeout=30)
    finally:
        marker.kill()
        marker.wait()
    t = workload.Transcript()
    for line in p.stdout.splitlines():
        t.feed_line(line, 0.0)
    keys = [m.key for m in t.markers]
    for k in ("start", "kernel", "hypervisor", "cpus", "memtotal_kib", "mounts", "pids",
              "devices", "hostpid", "rss_kib", "idle", "compute-begin", "hash", "compute-end",
              "write-begin", "write-end", "drop", "read-begin", "read-end", "done"):
        assert k in keys, (k, p.stdout, p.stderr)
    assert t.value("kernel") == os.uname().release
    assert t.value("hostpid") == "1"  # same PID namespace, and 'sleep' is in its cmdline
    assert t.status("write-end") == 0 and t.status("read-end") == 0
    assert t.value("hash").startswith("b6d81b360a5672d80c27430f39153e2c")  # md5 of 1 MiB zeros
    assert not (tmp_path / "io.dat").exists()


# --- statistics ----------------------------------------------------------------------------


def test_summarize_median_and_spread():
    s = measure.summarize([3.0, None, 1.0, 2.0])
    assert s == {"median": 2.0, "min": 1.0, "max": 3.0, "spread": 2.0, "n": 3,
                 "values": [3.0, 1.0, 2.0]}
    assert measure.summarize([None]) is None
    assert measure.summarize([1.0, 2.0])["median"] == 1.5
    assert measure.median(None) is None


def test_overhead_and_throughput():
    assert measure.overhead_pct(1.25, 1.0) == pytest.approx(25.0)
    assert measure.overhead_pct(0.5, 1.0) == pytest.approx(-50.0)
    assert measure.overhead_pct(None, 1.0) is None
    assert measure.overhead_pct(1.0, 0.0) is None
    assert measure.throughput(32, 0.5) == 64
    assert measure.throughput(32, None) is None


# --- /proc ---------------------------------------------------------------------------------


def test_parse_status_and_stat():
    status = "Name:\tsh\nVmPeak:\t  2000 kB\nVmRSS:\t    1952 kB\n"
    assert measure.parse_status_kib(status) == 1952
    assert measure.parse_status_kib(status, "VmPeak") == 2000
    assert measure.parse_status_kib("Name: x\n") is None
    assert measure.parse_ppid("123 (a b) c) S 77 123 123 0") == 77
    assert measure.parse_ppid("garbage") is None


def _fake_proc(tmp_path: Path, procs: dict[int, tuple[int, int]]) -> Path:
    for pid, (ppid, rss) in procs.items():
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} (p {pid}) S {ppid} 1 1 0\n")
        (d / "status").write_text(f"Name:\tp\nVmRSS:\t{rss} kB\n")
        (d / "comm").write_text("p\n")
    (tmp_path / "self").mkdir()
    return tmp_path


def test_tree_rss_sums_descendants_only(tmp_path):
    proc = _fake_proc(tmp_path, {1: (0, 100), 10: (1, 3000), 11: (10, 2000), 12: (11, 500),
                                 20: (1, 9999)})
    assert measure.descendants(10, proc) == [10, 11, 12]
    total, per = measure.tree_rss_kib(10, proc)
    assert total == 5500 and per == {10: 3000, 11: 2000, 12: 500}
    assert measure.tree_rss_kib(99, proc)[0] == 0


def test_tree_rss_of_this_process():
    total, per = measure.tree_rss_kib(os.getpid())
    assert total > 0 and os.getpid() in per


# --- rootfs --------------------------------------------------------------------------------


def test_resolve_in_root_follows_links_inside_the_root(tmp_path):
    r = tmp_path
    (r / "bin").mkdir()
    (r / "usr/bin").mkdir(parents=True)
    (r / "usr/bin/dash").write_text("x")
    os.chmod(r / "usr/bin/dash", 0o755)
    (r / "bin/sh").symlink_to("/usr/bin/dash")  # absolute: re-rooted
    (r / "bin/rel").symlink_to("../usr/bin/dash")
    (r / "bin/escape").symlink_to("../../../../etc/passwd")  # never above the root
    (r / "bin/loop").symlink_to("loop")
    assert rootfs.resolve_in_root(r, "/bin/sh") == r / "usr/bin/dash"
    assert rootfs.resolve_in_root(r, "/bin/rel") == r / "usr/bin/dash"
    assert rootfs.resolve_in_root(r, "/bin/escape") is None
    assert rootfs.resolve_in_root(r, "/bin/loop") is None
    assert rootfs.resolve_in_root(r, "/nope") is None
    assert rootfs.find_shell(r) == "/bin/sh"
    (r / "bin/sh").unlink()
    assert rootfs.find_shell(r) is None


def test_image_env_and_missing_applets(tmp_path):
    env = rootfs.image_env({"Env": ["PATH=/bin", "A=b=c", "junk"]})
    assert env == {"PATH": "/bin", "A": "b=c", "HOME": "/root"}
    assert rootfs.image_env({})["PATH"].startswith("/usr/local/sbin")
    (tmp_path / "bin").mkdir()
    for a in ("uname", "cat", "dd", "rm", "sync", "sleep"):
        (tmp_path / "bin" / a).symlink_to("busybox")
    (tmp_path / "bin/busybox").write_text("")
    assert rootfs.missing_applets(tmp_path, env) == ["md5sum"]


def test_inject_busybox(tmp_path):
    bb = tmp_path / "bb"
    bb.write_bytes(b"\x7fELF static")
    root = tmp_path / "root"
    root.mkdir()
    assert rootfs.inject_busybox(root, bb) == ["/.hvcmp/busybox", "sh"]
    assert os.readlink(root / ".hvcmp/bin/md5sum") == "../busybox"
    assert rootfs.resolve_in_root(root, "/.hvcmp/bin/sh") == root / ".hvcmp/busybox"


def test_oci_config_shape(tmp_path):
    cfg = rootfs.oci_config(tmp_path, ["/bin/sh", "-c", "x"], {"PATH": "/bin"}, "h")
    assert cfg["process"]["args"] == ["/bin/sh", "-c", "x"]
    assert cfg["process"]["terminal"] is False and cfg["process"]["user"] == {"uid": 0, "gid": 0}
    assert cfg["root"] == {"path": str(tmp_path), "readonly": False}
    assert {n["type"] for n in cfg["linux"]["namespaces"]} == {"pid", "network", "ipc", "uts",
                                                               "mount"}
    json.dumps(cfg)


def test_has_mounts_below():
    assert rootfs.has_mounts_below(Path("/"))
    assert not rootfs.has_mounts_below(Path("/nonexistent-hvcmp"))


# --- options -------------------------------------------------------------------------------


def test_parse_only():
    assert parse_only(None) == ("process", "container", "vm")
    assert parse_only("vm, process") == ("process", "vm")
    assert parse_only("hv,ctr") == ("container", "vm")
    with pytest.raises(UsageError):
        parse_only("process,kvm")
    with pytest.raises(UsageError):
        parse_only(",")


def test_runtime_choice(monkeypatch, tmp_path):
    configured = Config.from_environ({"HV_OCI_RUNTIME": "none"}).oci_runtime
    assert runtime_choice(None, configured)[0] is None
    monkeypatch.setenv("PATH", str(tmp_path))
    rt, why = runtime_choice(None)
    assert rt is None and "neither crun nor runc" in why
    assert runtime_choice("runc")[0] is None
    fake = tmp_path / "runc"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert runtime_choice(None)[0] == "runc"
    assert runtime_choice("runc")[0] == "runc"


# --- the report ----------------------------------------------------------------------------


def _result(start, exit_, compute, write, read, rss_in, host_kib, kernel, hostpid):
    t = workload.Transcript()
    for key, value, at in (("start", "", 0.0), ("kernel", kernel, 0.1), ("hypervisor", "1", 0),
                           ("cpus", "1", 0), ("memtotal_kib", "500000", 0), ("mounts", "9", 0),
                           ("pids", "30", 0), ("devices", "15", 0), ("devlist", "null zero", 0),
                           ("hostpid", hostpid, 0), ("rss_kib", str(rss_in), 0),
                           ("compute-begin", "", 1.0), ("compute-end", "", 1.0 + compute),
                           ("write-begin", "", 5.0), ("write-end", "0", 5.0 + write),
                           ("dropped_inside", "1", 6.0),
                           ("read-begin", "", 7.0), ("read-end", "0", 7.0 + read)):
        t.feed_line(f"@@hvcmp {key} {value}", at)
    life = RunResult(workload.Transcript(), -start, t_exit=exit_ - start)
    life.transcript.feed_line("@@hvcmp start", 0.0)
    full = RunResult(t, 0.0, host_kib=host_kib, host_detail={"x[1]": host_kib},
                     host_dropped=True, host_drop_s=0.01)
    return life, full


def _comm(rtt: float, xfer: float, mb: int = 32, error: str | None = None):
    return comm.CommResult("how", rtt_s=[rtt], xfer_s=[xfer], mb=mb, error=error)


COMMS = {"process": _comm(12e-6, 0.02), "container": _comm(40e-6, 2.0),
         "vm": _comm(1.8e-3, 20.0)}


def _doc(only=("process", "container", "vm"), errors=None, comms=None):
    host = {"kernel": "6.18-host", "system": "Linux", "cpu": "CPU", "cpus": 2,
            "mem_total_kib": 1 << 24, "hypervisor_flag": True, "hostname": "h"}
    data = {"process": _result(0.01, 0.012, 1.0, 0.1, 0.1, 2000, 2000, "6.18-host", "1"),
            "container": _result(0.02, 0.03, 1.02, 0.1, 0.1, 2000, 5000, "6.18-host", "0"),
            "vm": _result(1.5, 2.0, 5.0, 1.0, 0.3, 1500, 190000, "6.1-hv", "0")}
    legs = {n: SimpleNamespace(describe=lambda n=n: f"how {n}", runtime="crun" if
                               n == "container" else None, memory_mib=512) for n in only}
    opts = Options(image="busybox", repeats=1, io_mb=32, compute_mb=64, only=tuple(only))
    return report.build(opts=opts, image=SimpleNamespace(id="sha256:" + "a" * 64),
                        accel=SimpleNamespace(name="tcg", reason="no vmx"), host=host,
                        legs=legs, life={n: [data[n][0]] for n in only},
                        full={n: [data[n][1]] for n in only}, errors=errors or {},
                        notes={n: [] for n in only}, injected=False, shell=["/bin/sh"],
                        comm=COMMS if comms is None else comms)


def test_report_numbers_and_schema():
    doc = _doc()
    assert set(doc) == {"schema", "host", "accelerator", "image", "repeats", "params",
                        "results", "course", "rows", "footnotes"}
    assert doc["schema"] == report.SCHEMA
    vm, ctr, proc = doc["results"]["vm"], doc["results"]["container"], doc["results"]["process"]
    assert vm["start_s"]["median"] == pytest.approx(1.5)
    assert vm["exit_s"]["median"] == pytest.approx(2.0)
    assert vm["compute_overhead_pct"] == pytest.approx(400.0)
    assert ctr["compute_overhead_pct"] == pytest.approx(2.0)
    assert proc["compute_overhead_pct"] == 0.0
    assert vm["write_overhead_pct"] == pytest.approx(900.0)
    assert vm["write_mb_s"] == pytest.approx(32.0)
    assert vm["memory"]["overhead_kib"]["median"] == 188500
    assert vm["memory"]["configured_mib"] == 512 and proc["memory"]["configured_mib"] is None
    assert vm["isolation"]["same_kernel_as_host"] is False
    assert ctr["isolation"]["same_kernel_as_host"] is True
    assert proc["isolation"]["host_pid_visible"] is True
    assert vm["isolation"]["device_names"] == ["null", "zero"]
    json.dumps(doc)


def test_rows_put_measurements_beside_the_course():
    doc = _doc()
    rows = {r[0]: r[1:] for r in doc["rows"]}
    assert rows["Start (lifecycle)"][2].startswith("needs boot process (>10s)")
    assert "1.50 s to first instruction" in rows["Start (lifecycle)"][2]
    assert "+400%" in rows["Compute overhead"][2]
    assert rows["Host PIDs visible"][0].startswith("yes")
    assert rows["Host PIDs visible"][2].startswith("no")
    md = report.markdown(doc)
    assert "| | Process | Container | VM (hv) |" in md
    assert "accelerator: TCG" in md


def test_communication_row_is_measured():
    doc = _doc()
    res = doc["results"]
    assert res["vm"]["communication"]["rtt_s"]["median"] == pytest.approx(1.8e-3)
    assert res["container"]["communication"]["mb_s"]["median"] == pytest.approx(16.0)
    assert res["process"]["communication"]["mb_s"]["median"] == pytest.approx(1600.0)
    assert doc["params"]["pings"] == comm.PINGS and doc["params"]["net_mb"] == 32
    row = {r[0]: r[1:] for r in doc["rows"]}["Communication"]
    assert row[0] == ("inter-process (IPC) (course) — a pipe: round trip 12.0 µs, "
                      "1600.0 MB/s (32 MB) (measured)")
    assert row[1].startswith("IPC (course) — veth: round trip 40.0 µs, 16.0 MB/s")
    assert row[2].startswith("network devices (course) — hv's network: round trip 1.80 ms")
    doc = _doc(comms={"process": COMMS["process"],
                      "vm": _comm(0, 0, error="the image has no nc")})
    row = {r[0]: r[1:] for r in doc["rows"]}["Communication"]
    assert row[2] == "network devices (course) — not measured: the image has no nc"
    assert "(course) — not measured: not measured" in row[1]  # no pair was made at all
    json.dumps(doc)


def test_pipe_round_trip_and_throughput_are_real():
    """The process column's pair, measured here without a chroot (the same scripts)."""
    rtt = comm.pipe_round_trip_s(300)
    assert 0 < rtt < 0.05
    res = comm.PipeComm(lambda argv: argv, ["/bin/sh"], dict(os.environ)).run(2, 4)
    assert res.error is None, res.error
    assert len(res.rtt_s) == 2 and all(0 < r < 0.05 for r in res.rtt_s)
    assert len(res.xfer_s) == 2 and all(t > 0 for t in res.xfer_s)
    doc = _doc(comms={"process": res})
    st = doc["results"]["process"]["communication"]["mb_s"]
    assert st["n"] == 2 and st["median"] > 4  # a pipe moves 4 MB in far less than a second


def test_ping_summary_and_send_script(tmp_path):
    assert comm.ping_avg_s("20 packets transmitted, 20 packets received, 0% packet loss\n"
                           "round-trip min/avg/max = 0.031/0.052/0.210 ms\n") == \
        pytest.approx(52e-6)
    assert comm.ping_avg_s("rtt min/avg/max/mdev = 0.031/1.500/2.0/0.1 ms") == \
        pytest.approx(1.5e-3)
    with pytest.raises(comm.LegError):
        comm.ping_avg_s("ping: sendto: Network unreachable")
    script = comm.send_script("10.0.0.2", 3)
    assert f"head -c {3 << 20} /dev/zero | nc 10.0.0.2 {comm.PORT}" in script
    # a refused connect is retried a bounded number of times, then the script fails
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nc").write_text("#!/bin/sh\nexit 1\n")
    (fake / "nc").chmod(0o755)
    p = subprocess.run(["/bin/sh", "-c", script.replace("sleep 0.1", "true")],
                       env={"PATH": f"{fake}:/usr/bin:/bin"}, capture_output=True, timeout=60)
    assert p.returncode == 1


def test_missing_column_and_errors():
    doc = _doc(only=("process", "vm"), errors={"vm": "boom"})
    assert set(doc["results"]) == {"process", "vm"}
    assert doc["results"]["vm"]["error"] == "boom"
    assert doc["results"]["vm"]["measured"] is False
    md = report.markdown(doc)
    assert "| | Process | VM (hv) |" in md and "not measured: boom" in md


def test_plot_writes_a_png(tmp_path):
    import matplotlib  # noqa: F401 - make setup installs the [compare] extra
    out = tmp_path / "c.png"
    report.plot(_doc(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
