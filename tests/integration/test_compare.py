"""`hv compare`: real runs of the three columns (chroot process, crun/runc, hv VM).

Small sizes, `-n 1`, `--no-warmup`: each VM run is one guest boot. Every test checks that
nothing is left behind: no hvcmp VM, no QEMU, no OCI container, no temp rootfs, no marker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures import images as fx

pytestmark = pytest.mark.vm

QUICK = ["-n", "1", "--size", "4", "--compute-size", "8", "--no-warmup"]
TOP_KEYS = {"schema", "host", "accelerator", "image", "repeats", "params", "results", "course",
            "rows", "footnotes"}
COLUMN_KEYS = {"measured", "error", "notes", "how", "runtime", "start_s", "exit_s", "compute_s",
               "write_s", "read_s", "write_mb_s", "read_mb_s", "compute_overhead_pct",
               "write_overhead_pct", "read_overhead_pct", "memory", "isolation", "caches",
               "communication"}
COMM_KEYS = {"how", "error", "rtt_s", "mb_s", "mb"}
STATS_KEYS = {"median", "min", "max", "spread", "n", "values"}
ISOLATION_KEYS = {"kernel", "same_kernel_as_host", "hostname", "hypervisor_flag", "cpus",
                  "mem_total_kib", "mounts", "pids_visible", "host_pid_visible", "devices",
                  "device_names"}


def _pids_with(needle: bytes, root: Path | None = None) -> list[int]:
    """Processes whose cmdline has `needle` and, with `root`, that belong to that hv root (its
    path in their cmdline or environment, or their root directory under it): other sessions
    may run hv compare on this host at the same time."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if needle not in (p / "cmdline").read_bytes():
                continue
            if root is not None:
                mine = str(root).encode()
                if not (mine in (p / "cmdline").read_bytes() or mine in
                        (p / "environ").read_bytes() or
                        os.readlink(p / "root").startswith(str(root))):
                    continue
        except OSError:
            continue
        found.append(int(p.name))
    return found


def _oci_containers(root: Path) -> list[str]:
    names = []
    for rt in ("crun", "runc"):
        if shutil.which(rt):
            out = subprocess.run([rt, "list", "--format", "json"], capture_output=True,
                                 text=True).stdout
            for c in json.loads(out or "null") or []:
                if c.get("id", "").startswith("hvcmp-") and str(root) in c.get("bundle", ""):
                    names.append(c["id"])
    return names


def assert_nothing_left(hv, hv_root: Path) -> None:
    deadline = time.monotonic() + 10
    while _pids_with(b"guest=hvcmp-", hv_root) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _pids_with(b"guest=hvcmp-", hv_root), "a compare VM's QEMU is still running"
    assert not _pids_with(b"hvcmp-marker-", hv_root), "the host marker outlived compare"
    assert not _pids_with(b"@@hvcmp", hv_root), "a workload (process or container) outlived it"
    names = hv("ps", "-a", "--format", "{{.Names}}", check=True).stdout.split()
    assert not [n for n in names if n.startswith("hvcmp-")], names
    assert _oci_containers(hv_root) == []
    tmp = hv_root / "tmp"
    assert not list(tmp.glob("compare-*")) if tmp.exists() else True
    # the Communication row's pairs: namespaces, veths, bridge, hv network
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "hvcmp-" not in netns, netns
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert "hvcmp" not in links, links
    nets = hv("network", "ls", "--format", "{{.Name}}", check=True).stdout.split()
    assert not [n for n in nets if n.startswith("hvcmp-")], nets


def compare_json(hv, *args, env=None, timeout=600) -> dict:
    p = hv("compare", *args, "--format", "json", env=env, timeout=timeout)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _numeric_stats(st) -> None:
    assert isinstance(st, dict) and set(st) == STATS_KEYS, st
    assert isinstance(st["median"], float) and st["median"] >= 0


@pytest.fixture(scope="module")
def full_doc(hv, busybox):
    return compare_json(hv, busybox, *QUICK)


def test_every_column_is_measured_and_numeric(full_doc, hv, hv_root):
    doc = full_doc
    assert set(doc) == TOP_KEYS
    assert doc["schema"] == "hv.compare/1"
    assert doc["accelerator"]["name"] in ("kvm", "tcg") and doc["accelerator"]["reason"]
    assert doc["repeats"] == 1 and doc["params"]["io_mb"] == 4
    assert doc["image"]["ref"] == "busybox" and doc["image"]["id"].startswith("sha256:")
    assert set(doc["results"]) == {"process", "container", "vm"}
    for name, col in doc["results"].items():
        assert set(col) == COLUMN_KEYS, name
        assert col["measured"] and col["error"] is None, (name, col["error"])
        for key in ("start_s", "exit_s", "compute_s", "write_s", "read_s"):
            _numeric_stats(col[key])
        assert col["exit_s"]["median"] >= col["start_s"]["median"]
        for key in ("write_mb_s", "read_mb_s", "compute_overhead_pct", "write_overhead_pct",
                    "read_overhead_pct"):
            assert isinstance(col[key], float), (name, key)
        mem = col["memory"]
        _numeric_stats(mem["host_kib"])
        _numeric_stats(mem["workload_kib"])
        assert isinstance(mem["overhead_kib"]["median"], float)  # may be a little below 0
        assert set(col["isolation"]) == ISOLATION_KEYS
        assert isinstance(col["isolation"]["devices"], int)
        assert isinstance(col["isolation"]["mounts"], int)
        assert isinstance(col["isolation"]["mem_total_kib"], int)
    res = doc["results"]
    assert res["process"]["compute_overhead_pct"] == 0.0
    assert res["container"]["runtime"] in ("crun", "runc")
    # the VM costs a QEMU beyond its workload; the plain process costs nothing beyond itself
    assert res["vm"]["memory"]["overhead_kib"]["median"] > 20 * 1024
    assert res["vm"]["memory"]["configured_mib"] >= 64
    assert abs(res["process"]["memory"]["overhead_kib"]["median"]) < 1024
    assert res["vm"]["start_s"]["median"] > res["process"]["start_s"]["median"]
    assert_nothing_left(hv, hv_root)


def test_communication_row_is_measured(full_doc):
    """A pipe between two processes, a veth pair between two namespaces, hv's network between
    two VMs: each a measured round trip and throughput, in the JSON and in the row."""
    res = full_doc["results"]
    assert full_doc["params"]["net_mb"] == 4 and full_doc["params"]["pings"] > 0
    for name, col in res.items():
        c = col["communication"]
        assert set(c) == COMM_KEYS, name
        assert c["error"] is None, (name, c["error"])
        assert c["how"] and c["mb"] == 4
        _numeric_stats(c["rtt_s"])
        _numeric_stats(c["mb_s"])
        assert c["rtt_s"]["median"] > 0 and c["mb_s"]["median"] > 0, name
    rtt = {n: res[n]["communication"]["rtt_s"]["median"] for n in res}
    # a guest's TCP/IP stack and virtio-net beside the host kernel's veth and pipes: a VM's
    # round trip is slower than both, under KVM as under TCG
    assert rtt["vm"] > rtt["container"] and rtt["vm"] > rtt["process"], rtt
    assert rtt["process"] < 0.01 and rtt["container"] < 0.05, rtt
    row = {r[0]: r[1:] for r in full_doc["rows"]}["Communication"]
    for cell, via in zip(row, ("a pipe", "veth", "hv's network"), strict=True):
        assert f"— {via}: round trip " in cell and "MB/s" in cell and cell.endswith(
            "(measured)"), cell


def test_kernels_and_host_pids(full_doc):
    res = full_doc["results"]
    host_kernel = os.uname().release
    assert full_doc["host"]["kernel"] == host_kernel
    assert res["process"]["isolation"]["kernel"] == host_kernel
    assert res["container"]["isolation"]["kernel"] == host_kernel
    assert res["container"]["isolation"]["same_kernel_as_host"] is True
    assert res["vm"]["isolation"]["kernel"] != host_kernel
    assert res["vm"]["isolation"]["same_kernel_as_host"] is False
    assert res["process"]["isolation"]["host_pid_visible"] is True
    assert res["container"]["isolation"]["host_pid_visible"] is False
    assert res["vm"]["isolation"]["host_pid_visible"] is False
    # a container's PID namespace holds only its own processes
    assert res["container"]["isolation"]["pids_visible"] < res["process"]["isolation"][
        "pids_visible"]
    # the VM sees its configured RAM, not the host's
    vm_mem = res["vm"]["isolation"]["mem_total_kib"]
    assert vm_mem <= res["vm"]["memory"]["configured_mib"] * 1024
    assert vm_mem < res["process"]["isolation"]["mem_total_kib"]
    rows = {r[0]: r for r in full_doc["rows"]}
    assert "(course)" in rows["Start (lifecycle)"][3] and "(measured)" in rows[
        "Start (lifecycle)"][3]


def test_markdown_table_and_plot(hv, busybox, hv_root, tmp_path):
    import matplotlib  # noqa: F401 - make setup installs the [compare] extra
    png = tmp_path / "compare.png"
    p = hv("compare", busybox, *QUICK, "--only", "process,container", "--format", "markdown",
           "--plot", str(png))
    assert p.returncode == 0, p.stderr
    md = p.stdout
    assert "| | Process | Container |" in md
    assert "|---|---|---|" in md
    assert "| **Compute overhead** |" in md and "| **Host PIDs visible** |" in md
    assert "accelerator:" in md
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    p = hv("compare", busybox, *QUICK, "--only", "process")  # the rich table
    assert p.returncode == 0, p.stderr
    assert "Process vs Container vs VM" in p.stdout and "Start (lifecycle)" in p.stdout
    assert_nothing_left(hv, hv_root)


def test_bad_flags(hv, busybox):
    for args, text in ((["--only", "process,kvm"], "unknown column"),
                       (["--format", "yaml"], "unknown format"),
                       (["--runtime", "docker"], "unknown OCI runtime"),
                       (["-n", "0"], "at least 1")):
        p = hv("compare", busybox, *args)
        assert p.returncode != 0 and text in p.stderr and "hint:" in p.stderr, (args, p.stderr)
    p = hv("compare", "no-such-image-hvcmp:latest", "--only", "process")
    assert p.returncode != 0 and "Error:" in p.stderr


def test_no_oci_runtime(hv, busybox, hv_root, tmp_path):
    doc = compare_json(hv, busybox, *QUICK, "--only", "process,container",
                       env={"HV_OCI_RUNTIME": "none"})
    ctr = doc["results"]["container"]
    assert ctr["measured"] is False and "no OCI runtime" in ctr["error"]
    assert ctr["start_s"] is None and ctr["compute_overhead_pct"] is None
    assert doc["results"]["process"]["measured"] is True
    # a PATH without crun and runc: the same, with the reason
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("unshare", "chroot", "mount", "umount", "sh"):
        found = shutil.which(tool)
        assert found, tool
        (bindir / tool).symlink_to(found)
    doc = compare_json(hv, busybox, *QUICK, "--only", "process,container",
                       env={"PATH": str(bindir), "HV_OCI_RUNTIME": ""})
    ctr = doc["results"]["container"]
    assert "neither crun nor runc" in ctr["error"]
    assert doc["results"]["process"]["measured"] is True
    p = hv("compare", busybox, *QUICK, "--only", "process,container",
           env={"HV_OCI_RUNTIME": "none"})
    assert p.returncode == 0 and "not measured: no OCI runtime" in p.stdout
    assert_nothing_left(hv, hv_root)


def _load(hv, tmp_path: Path, name: str, layers, **config) -> str:
    layout = tmp_path / f"layout-{name}"
    work = tmp_path / f"layers-{name}"
    work.mkdir()
    tars = [fx.write_layer(work / f"l{i}.tar", entries) for i, entries in enumerate(layers)]
    fx.build_image(layout, "latest", tars, **config)
    archive = tmp_path / f"{name}.oci.tar"
    subprocess.run(["tar", "-C", str(layout), "-cf", str(archive), "oci-layout", "index.json",
                    "blobs"], check=True)
    hv("load", "-i", str(archive), check=True)
    return f"{name}:latest"


def test_image_without_a_shell(hv, hv_root, tmp_path):
    """The process and container run the workload with an injected static busybox; the VM
    column says why it was not measured."""
    ref = _load(hv, tmp_path, "hvcmp-noshell", [[
        fx.directory("app"), fx.file("app/hello", fx.BUSYBOX.read_bytes(), 0o755),
        fx.directory("tmp", 0o1777)]], entrypoint=["/app/hello"])
    try:
        doc = compare_json(hv, ref, *QUICK)
        assert doc["image"]["injected_busybox"] is True
        assert doc["image"]["shell"] == ["/.hvcmp/busybox", "sh"]
        for name in ("process", "container"):
            col = doc["results"][name]
            assert col["measured"], col["error"]
            assert any("injected" in n for n in col["notes"])
            assert isinstance(col["compute_s"]["median"], float)
        vm = doc["results"]["vm"]
        assert vm["measured"] is False and "no /bin/sh" in vm["error"]
        p = hv("compare", ref, *QUICK, "--format", "markdown")
        assert "not measured: not measured: the image has no /bin/sh" not in p.stdout
        assert "the image has no /bin/sh" in p.stdout and "injected static busybox" in p.stdout
    finally:
        hv("rmi", "-f", ref)
    assert_nothing_left(hv, hv_root)


def test_entrypoint_that_needs_arguments_is_overridden(hv, hv_root, tmp_path):
    script = 'test -n "$1" || { echo "usage: needs an argument" >&2; exit 64; }; echo "$1"'
    base = [fx.busybox_entries() + [fx.symlink(f"bin/{a}", "busybox") for a in
                                    ("uname", "dd", "md5sum", "rm", "sync")]]
    ref = _load(hv, tmp_path, "hvcmp-needsargs", base,
                entrypoint=["/bin/sh", "-c", script, "ep"])
    try:
        assert hv("run", "--rm", ref).returncode == 64  # as the image is meant to fail
        doc = compare_json(hv, ref, *QUICK)
        for name, col in doc["results"].items():
            assert col["measured"], (name, col["error"])
            assert col["notes"] == [] or all("no " not in n for n in col["notes"]), col["notes"]
            assert isinstance(col["start_s"]["median"], float)
            assert isinstance(col["read_s"]["median"], float)
    finally:
        hv("rmi", "-f", ref)
    assert_nothing_left(hv, hv_root)


class _Stderr:
    """Collects a child's stderr lines in a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._t.start()

    def _read(self, proc) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def text(self) -> str:
        self._t.join(timeout=10)
        return "".join(self.lines)


def _interrupt_when(hv, proc, out: _Stderr, ready, timeout: float = 180) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while not ready() and time.monotonic() < deadline:
        assert proc.poll() is None, out.text()
        time.sleep(0.05)
    assert ready(), out.text()
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    return code, out.text()


def test_ctrl_c_during_the_vm_leaves_nothing(hv, busybox, hv_root):
    proc = hv.popen("compare", busybox, *QUICK, "--only", "process,vm", stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    out = _Stderr(proc)
    code, err = _interrupt_when(hv, proc, out, lambda: _pids_with(b"guest=hvcmp-", hv_root))
    assert code == 130, err
    assert "interrupted" in err
    assert_nothing_left(hv, hv_root)


@pytest.mark.parametrize("column", ["process", "container"])
def test_ctrl_c_during_a_namespace_column_leaves_nothing(hv, busybox, hv_root, column):
    """Interrupted while the chroot'ed process / the crun or runc container hashes 100 GB."""
    proc = hv.popen("compare", busybox, "-n", "1", "--no-warmup", "--size", "4",
                    "--compute-size", "100000", "--only", column, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True, env={"HV_COMPARE_TIMEOUT": "120"})
    out = _Stderr(proc)

    def computing() -> bool:
        if not any(f"{column}: workload" in line for line in out.lines):
            return False
        if column == "container":  # its processes' root is not a path of ours
            return bool(_oci_containers(hv_root))
        return bool(_pids_with(b"@@hvcmp", hv_root))

    code, err = _interrupt_when(hv, proc, out, computing)
    assert code == 130, err
    assert "interrupted" in err
    assert_nothing_left(hv, hv_root)


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("column", ["container", "vm"])
def test_ctrl_c_during_the_communication_pair_leaves_nothing(hv, busybox, hv_root, column):
    """Interrupted while the Communication row's pair exists: the namespaces with their veths
    and bridge, or the two VMs on their hv network."""
    proc = hv.popen("compare", busybox, *QUICK, "--only", column, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    out = _Stderr(proc)

    def paired() -> bool:
        if column == "container":
            return "hvcmp-" in _netns()
        return bool(_pids_with(b"-net-b", hv_root)) and any(
            "communication" in line for line in out.lines)

    code, err = _interrupt_when(hv, proc, out, paired, timeout=300)
    assert code == 130, err
    assert "interrupted" in err
    assert_nothing_left(hv, hv_root)
