"""`hv run` and the container lifecycle, on real guests booted from the busybox image."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm


def names(hv) -> set[str]:
    return set(hv("ps", "-a", "--format", "{{.Names}}", check=True).stdout.split())


def container_dirs(hv) -> set[str]:
    d = hv.root / "containers"
    return {p.name for p in d.iterdir()} if d.exists() else set()


def test_foreground_exit_code_and_streams(hv, busybox):
    before = container_dirs(hv)
    p = hv("run", "--rm", busybox, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert p.returncode == 3, p.stderr
    assert p.stdout == "out\n"
    assert "err\n" in p.stderr
    assert container_dirs(hv) == before, "--rm left the container's files behind"


def test_exit_zero_and_argv_intact(hv, busybox):
    p = hv("run", "--rm", busybox, "printf", "[%s]\\n", "a b", "c'd", 'e"f', "line\nbreak", "")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "[a b]\n[c'd]\n[e\"f]\n[line\nbreak]\n[]\n"


def test_command_not_found_is_127(hv, busybox):
    p = hv("run", "--rm", busybox, "no-such-command")
    assert p.returncode == 127
    err = p.stderr.strip().splitlines()
    assert err[0].startswith("Error: ") and "no-such-command" in err[0]
    assert err[1].startswith("hint: ")


def test_not_executable_is_126(hv, busybox):
    p = hv("run", "--rm", busybox, "/etc/passwd")
    assert p.returncode == 126
    assert "permission denied" in p.stderr.lower()
    assert "hint: " in p.stderr


def test_env_workdir_user_hostname(hv, busybox, tmp_path):
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=1\n")
    p = hv("run", "--rm", "-e", "A=hello world", "--env-file", str(env_file),
           "-w", "/made/by/hv", "-u", "nobody", "--hostname", "box1", busybox,
           "sh", "-c", 'echo "$A|$FROM_FILE|$(pwd)|$(id -u)|$(hostname)|$HOSTNAME|$HOME"')
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "hello world|1|/made/by/hv|65534|box1|box1|/nonexistent"


def test_guest_is_a_vm_with_its_own_kernel(hv, busybox):
    p = hv("run", "--rm", "-m", "256m", "--cpus", "1", busybox, "sh", "-c",
           "uname -r; grep MemTotal /proc/meminfo; grep -c ^processor /proc/cpuinfo")
    assert p.returncode == 0, p.stderr
    kernel, mem, ncpu = p.stdout.split("\n")[:3]
    assert kernel != os.uname().release
    assert 150_000 < int(mem.split()[1]) <= 262_144
    assert ncpu == "1"


def test_detached_logs_wait_ps_inspect_rm(hv, busybox):
    name = "hv-test-detached"
    p = hv("run", "-d", "--name", name, busybox, "sh", "-c",
           "echo one; echo warn >&2; sleep 3; echo two; exit 7")
    assert p.returncode == 0, p.stderr
    cid = p.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid)

    ps = hv("ps", check=True).stdout.splitlines()
    assert ps[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                             "PORTS", "NAMES"]
    row = next(line for line in ps if line.endswith(name))
    assert row.startswith(cid[:12] + " ")
    assert re.search(r"Up (Less than a second|\d+ seconds?)", row)
    assert '"sh -c \'echo one; ec…"' in row

    # a second name is refused while this one exists
    clash = hv("run", "-d", "--name", name, busybox, "true")
    assert clash.returncode == 125
    assert f'The container name "/{name}" is already in use' in clash.stderr

    # rm refuses a running container
    refused = hv("rm", name)
    assert refused.returncode == 1 and "container is running" in refused.stderr

    follow = hv("logs", "-f", name, timeout=120)
    assert follow.stdout == "one\ntwo\n"
    assert follow.stderr == "warn\n"

    assert hv("wait", name, check=True).stdout.strip() == "7"
    row = next(line for line in hv("ps", "-a", check=True).stdout.splitlines()
               if line.endswith(name))
    assert re.search(r"Exited \(7\) (Less than a second|\d+ seconds?) ago", row)
    assert cid[:12] not in hv("ps", "-q").stdout
    assert cid[:12] in hv("ps", "-a", "-q").stdout.split()
    assert cid in hv("ps", "-a", "--no-trunc", "-q").stdout.split()
    assert hv("ps", "-a", "-f", f"name={name}", "--format", "{{.ID}} {{.Status}}",
              check=True).stdout.startswith(cid[:12] + " Exited (7)")
    assert name in hv("ps", "-a", "-f", "status=exited", "--format", "{{.Names}}").stdout
    assert name in hv("ps", "-a", "-f", f"ancestor={busybox}", "--format",
                      "{{.Names}}").stdout
    rows = [json.loads(line) for line in hv("ps", "-a", "--format", "json").stdout.splitlines()]
    assert any(r["Names"] == name and r["State"] == "exited" for r in rows)

    tail = hv("logs", "--tail", "1", "-t", cid[:5], check=True)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z two\n", tail.stdout)

    doc = json.loads(hv("inspect", name, check=True).stdout)[0]
    assert doc["Id"] == cid and doc["Name"] == "/" + name
    assert doc["State"]["Status"] == "exited" and doc["State"]["ExitCode"] == 7
    assert doc["Config"]["Cmd"] == ["sh", "-c", "echo one; echo warn >&2; sleep 3; "
                                    "echo two; exit 7"]
    assert doc["State"]["StartedAt"] < doc["State"]["FinishedAt"]
    assert hv("inspect", "-f", "{{.State.ExitCode}} {{.Config.Image}}", name,
              check=True).stdout == f"7 {busybox}\n"

    assert hv("rm", name, check=True).stdout.strip() == name
    assert name not in names(hv)
    assert cid not in container_dirs(hv)


def test_rm_force_running_and_several(hv, busybox):
    a = hv("run", "-d", "--name", "hv-test-a", busybox, "sleep", "600", check=True)
    b = hv("run", "-d", "--name", "hv-test-b", busybox, "sleep", "600", check=True)
    for p in (a, b):
        assert re.fullmatch(r"[0-9a-f]{64}\n", p.stdout)
    p = hv("rm", "-f", "hv-test-a", b.stdout[:8], "no-such-container")
    assert p.returncode == 1
    assert "No such container: no-such-container" in p.stderr
    assert "hv-test-a" not in names(hv) and "hv-test-b" not in names(hv)
    assert a.stdout.strip() not in container_dirs(hv)


def test_start_attach_shows_this_boot_and_its_exit_code(hv, busybox):
    """`start -a` of a command that ends at once: this boot's output (not the earlier runs'
    in the same log) and its code; `start -ai` feeds stdin to a main process that waited
    for the attach."""
    try:
        p = hv("run", "--name", "hv-test-sa", busybox, "sh", "-c", "echo out; echo err >&2; exit 3")
        assert (p.returncode, p.stdout, p.stderr[-4:]) == (3, "out\n", "err\n")
        p = hv("start", "-a", "hv-test-sa")
        assert (p.returncode, p.stdout, p.stderr) == (3, "out\n", "err\n")  # no notice twice
        hv("run", "-i", "--name", "hv-test-sai", busybox, "cat", input="first\n", check=True)
        p = hv("start", "-ai", "hv-test-sai", input="second\n")
        assert (p.returncode, p.stdout) == (0, "second\n"), p.stderr
        p = hv("start", "-a", "hv-test-sa", "hv-test-sai")
        assert p.returncode == 1 and "cannot start and attach multiple" in p.stderr
    finally:
        hv("rm", "-f", "hv-test-sa", "hv-test-sai")


def test_detached_rm_is_removed_after_exit(hv, busybox):
    cid = hv("run", "-d", "--rm", busybox, "sh", "-c", "sleep 1", check=True).stdout.strip()
    hv.wait_for(lambda: cid[:12] not in hv("ps", "-a", "-q").stdout, timeout=90)
    hv.wait_for(lambda: cid not in container_dirs(hv), timeout=10)


def test_ctrl_c_stops_and_removes(hv, busybox):
    import subprocess

    before = container_dirs(hv)
    proc = hv.popen("run", "--rm", "--name", "hv-test-ctrlc", busybox, "sh", "-c",
                    "echo ready; sleep 600", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "hv-test-ctrlc" not in names(hv)
    assert container_dirs(hv) == before


def test_killed_qemu_shows_exited_and_rm_cleans(hv, busybox):
    name = "hv-test-killed"
    cid = hv("run", "-d", "--name", name, busybox, "sleep", "600", check=True).stdout.strip()
    pidfile = hv.root / "libvirt" / "run" / "qemu" / f"{name}.pid"
    os.kill(int(pidfile.read_text()), signal.SIGKILL)
    hv.wait_for(lambda: "Exited (137)" in hv("ps", "-a", "-f", f"name={name}").stdout, 30)
    hv("rm", name, check=True)
    assert cid not in container_dirs(hv)


@pytest.mark.parametrize("flags,message", [
    (["-m", "lots"], "invalid size"),
    (["-m", "1m"], "Minimum memory"),
    (["--cpus", "99"], "range of CPUs"),
    (["--cpus", "abc"], "rational number"),
    (["-e", "=bad"], "invalid environment variable"),
    (["--name", "bad name!"], "Invalid container name"),
    (["-w", "relative"], "absolute path"),
    (["-p", "99999:80"], "invalid port"),
    (["--restart", "sometimes"], "invalid restart policy"),
])
def test_bad_flags_leave_nothing(hv, busybox, flags, message):
    before_dirs, before_names = container_dirs(hv), names(hv)
    p = hv("run", "--rm", *flags, busybox, "true")
    assert p.returncode == 125
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 2 and message in lines[0] and lines[1].startswith("hint: ")
    assert container_dirs(hv) == before_dirs and names(hv) == before_names


def test_concurrent_commands_share_the_embedded_root(hv, busybox):
    procs = [hv.popen("ps", "-a", stdout=-1, stderr=-1) for _ in range(4)]
    run = hv("run", "--rm", busybox, "echo", "together")
    outs = [p.communicate(timeout=120) for p in procs]
    assert run.returncode == 0 and run.stdout == "together\n", run.stderr
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]


def test_state_survives_without_a_watcher(hv, busybox):
    """`-d` then nobody watches: the guest powers off by itself and ps says Exited."""
    cid = hv("run", "-d", busybox, "sh", "-c", "exit 5", check=True).stdout.strip()
    hv.wait_for(lambda: "Exited (5)" in hv("ps", "-a", "-f", f"id={cid}").stdout, 60)
    assert hv("wait", cid, check=True).stdout == "5\n"
    hv("rm", cid, check=True)
    assert cid not in container_dirs(hv)


def test_hv_kernel_and_accelerator_notice(hv, test_images_dir, tmp_path):
    """The guest runs hv's own kernel with nothing to load; TCG is announced once per root."""
    from hv.config import Config
    from hv.runtime.accel import detect

    paths = Config.from_environ().paths

    fresh = {"HV_ROOT": str(tmp_path / "root")}
    hv("load", "-i", str(test_images_dir / "busybox.oci.tar"), env=fresh, check=True)
    p = hv("run", "--rm", "busybox", "sh", "-c", "uname -r; test -e /proc/modules; echo $?",
           env=fresh)
    assert p.returncode == 0, p.stderr
    release, modules = p.stdout.split()
    kind = (paths.guest_dir() / "kernel").read_text().strip()
    if kind == "hv":
        assert release == (paths.guest_dir() / "release").read_text().strip()
        assert release.endswith("-hv") and modules == "1"  # CONFIG_MODULES=n: no /proc/modules
    if detect(paths).name == "tcg":
        assert "TCG" in p.stderr
        again = hv("run", "--rm", "busybox", "true", env=fresh)
        assert "TCG" not in again.stderr  # said once, plainly
    link = _hv_path(fresh["HV_ROOT"], "libvirt_root")
    if link.is_symlink():  # the long root reached libvirt through a short link in /tmp
        link.unlink()


def test_listing_reads_without_libvirt_lock(hv, busybox):
    """ps, inspect and exec's lookup read the embedded root's files: a command holding the
    root (here: its queue lock, held by the test) does not stall them."""
    import fcntl

    name = "lockfree"
    hv("run", "-d", "--name", name, busybox, "sleep", "600", check=True)
    try:
        lock = _hv_path(hv.root, "libvirt_root_dir") / "hv.lock"
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            p = hv("ps", "--format", "{{.Names}} {{.Status}}", timeout=20)
            q = hv("inspect", "-f", "{{.State.Running}}", name, timeout=20)
        assert p.returncode == 0 and f"{name} Up" in p.stdout, p.stderr
        assert q.returncode == 0 and q.stdout.strip() == "true", q.stderr
    finally:
        hv("rm", "-f", name)


def test_capability_cache_is_trimmed(hv, busybox):
    """The flag that makes libvirt verify the guest CPU with ~400 QMP calls is gone from
    the embedded root's cache once a VM was started, and VMs still start."""
    cache = _hv_path(hv.root, "libvirt_root_dir") / "cache" / "qemu" / "capabilities"
    caps = list(cache.glob("*.xml"))
    assert caps, "no capability cache in the embedded root"
    assert all(b"cpu-unavailable-features" not in c.read_bytes() for c in caps)
    p = hv("run", "--rm", busybox, "echo", "still boots")
    assert p.returncode == 0 and p.stdout == "still boots\n", p.stderr


def _hv_path(state_root, name: str):
    """Paths.NAME() as a CLI with HV_ROOT=state_root sees it."""
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run(
        [sys.executable, "-c",
         f"from hv.config import Config; print(Config.from_environ().paths.{name}())"],
        env=dict(os.environ, HV_ROOT=str(state_root)), capture_output=True, text=True,
        check=True)
    return Path(out.stdout.strip())


def test_no_cgroup_is_made_for_a_container(hv, busybox):
    """libvirt would give each VM a machine cgroup in every controller, and with no daemon
    alive at power-off nobody removed it (one leaked per container): hv's root makes none."""
    name = "hv-test-cgroup"
    p = hv("run", "-d", "--name", name, busybox, "sleep", "60")
    assert p.returncode == 0, p.stderr
    try:
        # a warm container's VM keeps its pooled domain's name (HV_POOL)
        dom = hv("inspect", "-f", "{{.VM.Domain}}", name, check=True).stdout.strip()
        pidfile = _hv_path(hv.root, "libvirt_root_dir") / "run" / "qemu" / f"{dom}.pid"
        pid = int(pidfile.read_text())
        own = Path("/proc/self/cgroup").read_text()
        assert Path(f"/proc/{pid}/cgroup").read_text() == own  # where hv is, nothing new
    finally:
        hv("rm", "-f", name)
    made = [d for d in Path("/sys/fs/cgroup").glob("*/machine*/*")
            if name in d.name or dom in d.name]
    assert made == []


def test_rm_run_keeps_all_output_and_code(hv, busybox):
    """`run --rm` ends the VM as soon as the guest reports the exit: everything the command
    wrote before it exited is still delivered, in order, with its exit code."""
    p = hv("run", "--rm", busybox, "sh", "-c", "seq 1 30000; echo done >&2; exit 7")
    assert p.returncode == 7, p.stderr
    lines = p.stdout.splitlines()
    assert lines == [str(i) for i in range(1, 30001)]
    assert p.stderr.endswith("done\n")


@contextlib.contextmanager
def _exited_container(hv, busybox, name: str):
    """A container that ran `true` and stays (no --rm): its folder; removed afterwards."""
    p = hv("run", "--name", name, busybox, "true")
    assert p.returncode == 0, p.stderr
    try:
        cid = hv("inspect", "-f", "{{.Id}}", name).stdout.strip()
        yield _hv_path(hv.root, "containers_dir") / cid
    finally:
        hv("rm", "-f", name)


def test_overlay_template_is_the_base_disks(hv, busybox):
    """Each container's disk is a copy of one qemu-img overlay of the image's base disk."""
    import subprocess

    with _exited_container(hv, busybox, "hv-test-overlay") as cdir:
        info = json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(cdir / "disk.qcow2")],
            capture_output=True, text=True, check=True).stdout)
        base = Path(info["backing-filename"])
        assert base.suffix == ".ext4" and base.exists()
        assert info["backing-filename-format"] == "raw"
        assert info["virtual-size"] == base.stat().st_size
        assert base.with_suffix(".overlay.qcow2").exists()


def test_container_files_are_the_users_alone(hv, busybox):
    """A container's disk, output and keys are not readable by other local users."""
    with _exited_container(hv, busybox, "hv-test-private") as cdir:
        assert cdir.parent.stat().st_mode & 0o777 == 0o700
        assert cdir.stat().st_mode & 0o777 == 0o700


def test_libvirt_operations_queue_on_the_embedded_root(hv, busybox):
    """Commands that each open libvirt, at once: each waits its turn, though libvirt keeps
    the root's driver.pid until the process before has exited (its error then says only
    "qemu state driver is not active")."""
    names = [f"hv-test-queue-{i}" for i in range(4)]

    def together(argv_of):
        procs = [hv.popen(*argv_of(n), stdout=-1, stderr=-1, text=True) for n in names]
        outs = [p.communicate(timeout=240) for p in procs]
        assert [p.returncode for p in procs] == [0] * len(names), [o[1] for o in outs]

    try:
        together(lambda n: ("run", "-d", "--name", n, busybox, "sleep", "120"))
        together(lambda n: ("stop", "-t", "0", n))
        together(lambda n: ("rm", n))
    finally:
        hv("rm", "-f", *names)
    assert not set(names) & set(hv("ps", "-a", "--format", "{{.Names}}").stdout.split())


def test_open_waits_for_a_process_still_holding_the_root(hv, busybox):
    """libvirt keeps the root's driver.pid until its process has exited, past hv's queue
    lock: a command that comes in that moment waits for it instead of failing."""
    import subprocess
    import sys

    root = _hv_path(hv.root, "libvirt_root")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, libvirt\n"
         "libvirt.virEventRegisterDefaultImpl()\n"
         f"libvirt.open('qemu:///embed?root={root}').close()\n"
         "print('closed', flush=True)\n"
         "time.sleep(1.5)\n"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline() == "closed\n"
        p = hv("run", "--rm", busybox, "echo", "after")
        assert p.returncode == 0 and p.stdout == "after\n", p.stderr
    finally:
        holder.kill()
        holder.wait()


def test_ctrl_c_during_the_start_leaves_nothing(hv, busybox):
    """^C while libvirt's child starts the VM: the child finishes its work regardless, so
    the command undoes it; no container, domain or QEMU is left, and the code is 130."""
    import subprocess
    import time

    name = "hv-test-intr"
    tag = f"guest={name},".encode()

    def qemu_up() -> bool:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                if tag in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
        return False

    proc = hv.popen("run", "-d", "--name", name, busybox, "sleep", "60",
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not qemu_up() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "the run ended before its QEMU was seen"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        assert name not in hv("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert not qemu_up()
    finally:
        proc.kill()
        proc.wait()
        hv("rm", "-f", name)
