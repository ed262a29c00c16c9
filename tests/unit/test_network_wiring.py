"""The engine's and CLI's network wiring without a VM: `run`'s network flags checked before
anything is made (exit 125), `hv network` verbs through the real CLI on records (exit 1 on
error, one line + hint), `--add-host` parsing, inspect's NetworkSettings shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hv.config import Config
from hv.engine import Engine
from hv.errors import HvError, UsageError
from hv.spec import RunOptions, parse_add_host

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def engine(tmp_path) -> Engine:
    return Engine(Config.from_environ({"HV_ROOT": str(tmp_path), "HOME": str(tmp_path)}))


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HV_ROOT=str(root), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=60)


def one_error(p: subprocess.CompletedProcess) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: ") and lines[1].startswith("hint: "), \
        p.stderr
    return lines[0]


@pytest.mark.parametrize("text,want", [
    ("db:10.1.2.3", ("db", "10.1.2.3")),
    ("db=10.1.2.3", ("db", "10.1.2.3")),
    ("v6:::1", ("v6", "::1")),
    ("v6:[fe80::1]", ("v6", "fe80::1")),
])
def test_add_host_parsed(text, want):
    assert parse_add_host(text) == want


@pytest.mark.parametrize("text", ["db", "db:", ":1.2.3.4", "db:not-an-ip", "d b:1.2.3.4",
                                  "gw:host-gateway"])
def test_add_host_refused(text):
    with pytest.raises(UsageError) as e:
        parse_add_host(text)
    assert e.value.hint and "\n" not in e.value.message


def _plan(engine, **kw):
    return engine._plan_networks(RunOptions(image="busybox", **kw))


@pytest.mark.parametrize("kw,text", [
    ({"networks": ["host"]}, 'network mode "host" is not supported'),
    ({"networks": ["nosuch"]}, "network nosuch not found"),
    ({"networks": ["bridge"], "network_aliases": ["x"]},
     "network-scoped alias is supported only for containers in user defined networks"),
    ({"networks": ["none", "bridge"]}, "private (none) mode"),
    ({"add_hosts": ["bad"]}, "bad format for add-host"),
])
def test_run_network_errors_are_125_before_anything_is_made(engine, kw, text):
    with pytest.raises(HvError) as e:
        _plan(engine, **kw)
    assert text in e.value.message
    assert e.value.exit_code == 125 and e.value.hint
    assert not (engine.paths.containers_dir()).exists()


def test_dns_flags_checked_as_dockers(engine):
    plan = engine._plan_dns
    assert plan(RunOptions(image="b", dns=["192.0.2.1"], dns_search=["."])) == \
        (["192.0.2.1"], [], [])
    for kw in ({"dns": ["x"]}, {"dns": ["192.0.2.300"]}, {"dns_search": ["a b"]},
               {"dns_search": ["-a"]}, {"dns_options": [""]}):
        with pytest.raises(HvError) as e:
            plan(RunOptions(image="b", **kw))
        assert e.value.exit_code == 125 and e.value.hint and "invalid argument" in e.value.message


def test_run_default_is_bridge_as_root_and_add_hosts_kept(engine):
    from hv.network import datapath

    nets, hosts = _plan(engine, add_hosts=["db:10.9.8.7"])
    assert nets == (["bridge"] if datapath.can_admin() else [])
    assert hosts == ["db:10.9.8.7"]
    assert _plan(engine, networks=["none"])[0] == ["none"]


def test_extra_hosts_lines():
    from hv.engine.networks import _extra_hosts

    assert _extra_hosts(["db:10.9.8.7", "v6:::1"]) == "10.9.8.7\tdb\n::1\tv6\n"


def test_network_verbs_through_the_cli(tmp_path):
    p = cli(tmp_path, "network", "create", "--subnet", "10.77.0.0/24", "--label", "a=b",
            "--internal", "back")
    assert p.returncode == 0, p.stderr
    nid = p.stdout.strip()
    assert len(nid) == 64
    ls = cli(tmp_path, "network", "ls")
    assert ls.stdout.splitlines()[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert {line.split()[1] for line in ls.stdout.splitlines()[1:]} == {"back", "bridge", "none"}
    assert cli(tmp_path, "network", "ls", "-q", "-f", "name=back").stdout == nid[:12] + "\n"
    assert cli(tmp_path, "network", "ls", "-f", "label=a=b", "--format",
               "{{.Name}} {{.Driver}}").stdout == "back bridge\n"
    assert cli(tmp_path, "network", "ls", "-f", "dangling=true", "--format",
               "{{.Name}}").stdout == "back\n"
    assert cli(tmp_path, "network", "ls", "-f", "driver=null", "--format",
               "{{.Name}}").stdout == "none\n"
    doc = json.loads(cli(tmp_path, "network", "inspect", "back").stdout)[0]
    assert doc["IPAM"]["Config"] == [{"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.1"}]
    assert doc["Internal"] is True and doc["Labels"] == {"a": "b"} and doc["Containers"] == {}
    # errors: Docker's text, one line and a hint, exit 1
    for args, text in [
        (("network", "create", "back"), "network with name back already exists"),
        (("network", "create", "--subnet", "10.77.0.0/25", "x2"), "Pool overlaps"),
        (("network", "create", "--subnet", "foo", "x3"), "invalid subnet foo"),
        (("network", "create", "--subnet", "10.78.0.0/24", "--gateway", "10.79.0.1", "x4"),
         "invalid gateway"),
        (("network", "create", "host"), 'network mode "host" is not supported'),
        (("network", "rm", "bridge"), "pre-defined network"),
        (("network", "rm", "nosuch"), "network nosuch not found"),
        (("network", "inspect", "nosuch"), "network nosuch not found"),
        (("network", "ls", "-f", "colour=red"), "invalid filter 'colour'"),
        (("network", "connect", "back", "nosuch"), "No such container: nosuch"),
    ]:
        p = cli(tmp_path, *args)
        assert p.returncode == 1, (args, p.stderr)
        assert text in one_error(p), (args, p.stderr)
    assert cli(tmp_path, "network", "rm", "-f", "nosuch").returncode == 0
    p = cli(tmp_path, "network", "prune", "-f")
    assert p.returncode == 0 and p.stdout == "Deleted Networks:\nback\n\n"
    assert cli(tmp_path, "network", "ls", "-q").stdout.count("\n") == 2  # bridge, none


def test_run_network_flag_errors_exit_125(tmp_path):
    from hv.config import Config

    # `run` opens libvirt from its first line; this deep root gets a short link in /tmp
    link = Config.from_environ({"HV_ROOT": str(tmp_path)}).paths.libvirt_root()
    try:
        _run_network_flag_errors(tmp_path)
    finally:
        if link.is_symlink():
            link.unlink()


def _run_network_flag_errors(tmp_path):
    for args, text in [
        (("--network", "host"), 'network mode "host" is not supported'),
        (("--network", "nosuch"), "network nosuch not found"),
        (("--network-alias", "x"),
         "network-scoped alias is supported only for containers in user defined networks"),
        (("--dns", "1.1.1"), 'invalid argument "1.1.1" for "--dns" flag'),
        (("--add-host", "oops"), "bad format for add-host"),
    ]:
        p = cli(tmp_path, "run", "--rm", *args, "busybox", "true")
        assert p.returncode == 125, (args, p.stderr)
        assert text in one_error(p), (args, p.stderr)
    assert not (tmp_path / "containers").exists() or not any((tmp_path / "containers").iterdir())
