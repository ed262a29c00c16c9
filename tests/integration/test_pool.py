"""The warm pool (HV_POOL): a pooled VM's container is a cold one's, to the user.

Real VMs on the session's state root; the fixture empties the pool again (nothing pooled
outlives a test).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hv.config import Config
from hv.engine import Engine

POOL = {"HV_POOL": "1"}
COLD = {"HV_POOL": "0"}


@pytest.fixture
def pool(hv, busybox):
    engine = Engine(Config.from_environ(dict(os.environ, HV_ROOT=str(hv.root))))
    engine.drain_pool()
    yield engine
    engine.drain_pool()
    left = engine.pool_entries()
    assert left == [], left


def _ready(engine: Engine, n: int = 1, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = [e for e in engine.pool_entries() if e["ready"] and e["alive"]]
        if len(ready) >= n:
            return ready
        time.sleep(0.1)
    raise AssertionError(f"the pool never had {n} ready VM(s): {engine.pool_entries()}")


def _inspect(hv, name: str) -> dict:
    return json.loads(hv("inspect", name, check=True).stdout)[0]


def test_a_warm_run_gives_what_a_cold_run_gives(hv, pool):
    script = "echo out; echo err >&2; hostname | wc -c; cat /etc/resolv.conf; exit 3"
    hv("run", "--rm", "busybox", "true", env=POOL, check=True)  # the first fills the pool
    cold = hv("run", "--rm", "busybox", "sh", "-c", script, env=COLD)
    _ready(pool)
    warm = hv("run", "--rm", "busybox", "sh", "-c", script, env=POOL)
    assert (warm.returncode, warm.stdout, warm.stderr) == \
        (cold.returncode, cold.stdout, cold.stderr) == (3, cold.stdout, "err\n")
    assert "out\n13\n" in warm.stdout
    assert "pool" not in hv("ps", "-a", check=True).stdout


def test_a_warm_container_lives_as_a_cold_one(hv, pool):
    hv("run", "--rm", "busybox", "true", env=POOL, check=True)
    (entry,) = _ready(pool)
    doc = json.loads(hv("info", "-f", "json", env=POOL, check=True).stdout)
    assert doc["WarmPool"] == {"Size": 1, "VMs": 1, "Ready": 1}
    name = "warm-one"
    try:
        hv("run", "-d", "--name", name, "-e", "WHO=warm", "busybox", "sleep", "600",
           env=POOL, check=True)
        info = _inspect(hv, name)
        assert info["Id"] == entry["id"] and info["VM"]["Warm"] is True
        assert info["State"]["Running"]
        assert hv("exec", name, "sh", "-c", "echo $WHO", check=True).stdout == "warm\n"
        assert name in hv("ps", check=True).stdout
        hv("stop", "-t", "1", name, check=True)
        hv("start", name, check=True)  # a restart boots cold, from the container's disk
        info = _inspect(hv, name)
        assert info["VM"]["Warm"] is False and info["State"]["Running"]
        assert hv("exec", name, "true").returncode == 0
    finally:
        hv("rm", "-f", name)
    assert name not in hv("ps", "-a", check=True).stdout


def test_two_runs_racing_for_one_pooled_vm(hv, pool):
    hv("run", "--rm", "busybox", "true", env=POOL, check=True)
    _ready(pool)
    names = ["race-a", "race-b"]
    try:
        procs = [hv.popen("run", "-d", "--name", n, "busybox", "sleep", "600",
                          env={"HV_POOL": "1"}, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) for n in names]
        for p in procs:
            out, err = p.communicate(timeout=240)
            assert p.returncode == 0, err
        warm = sorted(_inspect(hv, n)["VM"]["Warm"] for n in names)
        assert warm == [False, True]  # one got the pooled VM, the other booted cold
        for n in names:
            assert hv("exec", n, "hostname", check=True).stdout.strip()
    finally:
        hv("rm", "-f", *names)


def test_a_pooled_vm_killed_while_idle_is_never_handed_out(hv, pool):
    hv("run", "--rm", "busybox", "true", env=POOL, check=True)
    (entry,) = _ready(pool)
    from hv.runtime.domains import qemu_pid

    pid = qemu_pid(pool.libvirt, f"hv-{entry['id'][:12]}")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(e["alive"] for e in pool.pool_entries()) and time.monotonic() < deadline:
        time.sleep(0.1)
    name = "after-kill"
    try:
        hv("run", "-d", "--name", name, "busybox", "sleep", "600", env=POOL, check=True)
        info = _inspect(hv, name)
        assert info["Id"] != entry["id"] and info["VM"]["Warm"] is False
        assert hv("exec", name, "true").returncode == 0
    finally:
        hv("rm", "-f", name)
    assert entry["id"] not in {e["id"] for e in pool.pool_entries()}


def test_system_prune_leaves_no_pooled_vm(hv, test_images_dir):
    """On a state root of its own (short: the claim socket's path has 108 bytes at most):
    a prune removes every stopped container there."""
    root = Path(tempfile.mkdtemp(prefix="hvp-", dir="/tmp"))
    env = {"HV_ROOT": str(root), "HV_POOL": "1"}
    engine = Engine(Config.from_environ(dict(os.environ, **env)))
    try:
        hv("load", "-i", str(test_images_dir / "busybox.oci.tar"), env=env, check=True)
        hv("run", "--rm", "busybox", "true", env=env, check=True)
        _ready(engine)
        hv("system", "prune", "-f", env=env, check=True)
        assert engine.pool_entries() == []
        assert hv("run", "--rm", "busybox", "echo", "again", env=env,
                  check=True).stdout == "again\n"
    finally:
        engine.drain_pool()
        hv("rm", "-f", *hv("ps", "-aq", env=env).stdout.split(), env=env)
        shutil.rmtree(root, ignore_errors=True)


def test_a_deep_state_root_boots_cold(tmp_path):
    """Its claim socket would not fit a unix socket's path: no pool, runs boot cold."""
    deep = Config.from_environ(dict(os.environ, HV_ROOT=str(tmp_path / ("d" * 60)),
                                    HV_POOL="1"))
    assert Engine(deep).fill_pool("sha256:" + "0" * 64) == 0


def test_docker_run_through_the_service_claims_from_its_pool(hv, pool, tmp_path):
    """`docker run` through the service with `--pool 1` gets a pooled VM; the service's
    pooled VMs go when it stops."""
    from tests.integration.test_api import Service, _wait_ready

    sock = tmp_path / "api.sock"
    log = tmp_path / "service.log"
    with open(log, "ab") as out:
        proc = hv.popen("system", "service", f"unix://{sock}", "--pool", "1", stdout=out,
                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    svc = Service(sock, proc, log, tmp_path / "docker-config")
    svc.config.mkdir()
    try:
        _wait_ready(svc)
        assert svc.docker("run", "--rm", "busybox", "echo", "cold", check=True).stdout == \
            "cold\n"
        _ready(pool)
        status, body, _ = svc.request("GET", "/info")
        assert status == 200 and json.loads(body)["WarmPool"] == {"Size": 1, "VMs": 1,
                                                                  "Ready": 1}
        run = svc.docker("run", "--rm", "busybox", "sh", "-c", "echo warm; exit 5")
        assert (run.returncode, run.stdout) == (5, "warm\n"), run.stderr
        _ready(pool)
        # the service's create boots at once (its attach comes before start): warm too
        cid = svc.docker("create", "--name", "api-made", "busybox", "sleep", "600",
                         check=True).stdout.strip()
        svc.docker("start", "api-made", check=True)
        info = _inspect(hv, cid)
        assert info["State"]["Running"] and info["VM"]["Warm"] is True
        assert svc.docker("exec", "api-made", "echo", "in", check=True).stdout == "in\n"
        svc.docker("rm", "-f", "api-made", check=True)
    finally:
        hv("rm", "-f", "api-made")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, svc.tail()
    deadline = time.monotonic() + 30
    while pool.pool_entries() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pool.pool_entries() == []  # the service emptied the pool it made


def test_hv_create_reserves_a_pooled_vm_and_start_hands_it_over(hv, pool):
    """`hv create` claims a pooled VM and keeps it waiting (the container is Created);
    `start` hands it over; `rm` of one never started takes its VM along."""
    hv("run", "--rm", "busybox", "true", env=POOL, check=True)
    (entry,) = _ready(pool)
    try:
        cid = hv("create", "--name", "reserved-one", "busybox", "sleep", "600", env=POOL,
                 check=True).stdout.strip()
        assert cid == entry["id"]
        info = _inspect(hv, cid)
        assert info["State"]["Status"] == "created" and info["VM"]["Warm"] is False
        hv("start", "reserved-one", env=POOL, check=True)
        info = _inspect(hv, cid)
        assert info["State"]["Running"] and info["VM"]["Warm"] is True
        assert hv("exec", "reserved-one", "echo", "in", check=True).stdout == "in\n"
        hv("rm", "-f", "reserved-one", check=True)
        (entry,) = _ready(pool)
        cid = hv("create", "--name", "never-started", "busybox", "true", env=POOL,
                 check=True).stdout.strip()
        assert cid == entry["id"]
        hv("rm", "never-started", check=True)
        from hv.runtime.domains import qemu_pid

        assert qemu_pid(pool.libvirt, f"hv-{cid[:12]}") is None  # its VM went with it
    finally:
        hv("rm", "-f", "reserved-one", "never-started")
