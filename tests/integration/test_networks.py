"""`hv network …` and `run --network` on real guests, through the real CLI: names (container
name, alias, short id) on a user-defined network, both ways and for a container that joins
later, gone after rm; isolation between two networks; the default bridge by IP without
names; `none`; connect/disconnect of a running container (hot-plug) and of a stopped one
(applied at its start); refusals
and their exit codes; nothing left on the host (the suite's conftest checks the links).

Boots are few (TCG on 2 cores): one module-wide trio shared by the tests, in file order.
Every packet stays on this machine (bridges without host address or forwarding).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hv.network import datapath

pytestmark = [pytest.mark.vm,
              pytest.mark.usefixtures("net_admin")]

SERVE = "while :; do (echo hello-from-$(hostname); sleep 3) | nc -l -p 8080; done"


def one_error(p) -> str:
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: ") and lines[1].startswith("hint: "), \
        p.stderr
    return lines[0]


def sh(hv, ctr: str, script: str, timeout: float = 60):
    return hv("exec", ctr, "sh", "-c", script, timeout=timeout)


def resolves(hv, ctr: str, name: str) -> bool:
    """Whether the container's /etc/hosts names `name` (hv serves names only there). Never
    a lookup of a name that may be missing: that would go to the user-mode resolver, and
    from there to the host's, off this machine."""
    return sh(hv, ctr, f"grep -qw -- {name} /etc/hosts").returncode == 0


def ip_of(hv, ctr: str, net: str) -> str:
    return hv("inspect", "-f", f"{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}",
              ctr, check=True).stdout.strip()


@pytest.fixture(scope="module")
def trio(hv, busybox):
    """web (alias alpha) and db on user network nt-a; other on nt-b."""
    hv("network", "create", "nt-a", check=True)
    hv("network", "create", "--subnet", "10.231.0.0/24", "nt-b", check=True)
    made = []
    try:
        for name, net, extra in (("nt-web", "nt-a", ["--network-alias", "alpha"]),
                                 ("nt-db", "nt-a", []), ("nt-other", "nt-b", [])):
            hv("run", "-d", "--name", name, "--network", net, *extra, busybox, "sh", "-c",
               SERVE, check=True)
            made.append(name)
        yield {"web": "nt-web", "db": "nt-db", "other": "nt-other"}
    finally:
        for name in made + ["nt-late"]:
            hv("rm", "-f", name)
        for net in ("nt-a", "nt-b"):
            hv("network", "rm", net)


def test_names_alias_and_short_id_both_ways(hv, trio):
    web_id = hv("inspect", "-f", "{{.Id}}", "nt-web", check=True).stdout.strip()
    db_id = hv("inspect", "-f", "{{.Id}}", "nt-db", check=True).stdout.strip()
    for ctr, peer in (("nt-web", "nt-db"), ("nt-db", "nt-web"), ("nt-db", "alpha"),
                      ("nt-web", db_id[:12]), ("nt-db", web_id[:12])):
        p = sh(hv, ctr, f"ping -c1 -W2 {peer}")
        assert p.returncode == 0, (ctr, peer, p.stdout, p.stderr)
    # TCP by name and by alias
    p = sh(hv, "nt-db", "nc alpha 8080 </dev/null")
    assert "hello-from-" in p.stdout, p.stderr
    p = sh(hv, "nt-web", "nc nt-db 8080 </dev/null")
    assert "hello-from-" in p.stdout, p.stderr
    # DNS as Docker's embedded resolver: 127.0.0.11 answers the peers' names (nslookup
    # asks DNS, never /etc/hosts); other names go on to the user-mode resolver (nothing to
    # test offline: only names that exist are looked up here)
    assert sh(hv, "nt-web", "cat /etc/resolv.conf").stdout == \
        "nameserver 127.0.0.11\noptions ndots:0\n"
    db_ip, web_ip = ip_of(hv, "nt-db", "nt-a"), ip_of(hv, "nt-web", "nt-a")
    for ctr, name, ip in (("nt-web", "nt-db", db_ip), ("nt-db", "alpha", web_ip),
                          ("nt-db", web_id[:12], web_ip), ("nt-web", "NT-DB", db_ip)):
        p = sh(hv, ctr, f"nslookup {name}")
        assert p.returncode == 0 and f"Address: {ip}" in p.stdout, (ctr, name, p.stdout,
                                                                     p.stderr)


def test_container_inspect_shows_the_network(hv, trio):
    doc = json.loads(hv("inspect", "nt-web", check=True).stdout)[0]
    ns = doc["NetworkSettings"]
    assert list(ns["Networks"]) == ["nt-a"]
    ep = ns["Networks"]["nt-a"]
    net = json.loads(hv("network", "inspect", "nt-a", check=True).stdout)[0]
    assert ep["NetworkID"] == net["Id"]
    assert ep["Aliases"] == ["alpha"]
    assert ep["DNSNames"] == ["nt-web", "alpha", doc["Id"][:12]]
    assert ep["MacAddress"].startswith("02:42:") and ep["Gateway"] == net["IPAM"]["Config"][0][
        "Gateway"]
    assert ns["IPAddress"] == ""  # not on bridge
    assert doc["HostConfig"]["NetworkMode"] == "nt-a"
    assert net["Containers"][doc["Id"]]["IPv4Address"] == f"{ep['IPAddress']}/{ep['IPPrefixLen']}"
    # the guest has exactly that address on its hv NIC
    assert f"inet {ep['IPAddress']}/" in sh(hv, "nt-web", "ip -4 -o addr").stdout


def test_two_networks_are_isolated(hv, trio):
    assert not resolves(hv, "nt-other", "nt-web")
    assert not resolves(hv, "nt-web", "nt-other")
    web_ip = ip_of(hv, "nt-web", "nt-a")
    # by IP: routed out of other's own hv NIC (nt-b's segment), never its default route
    # (the user-mode NIC would hand the packet to the host, and from there off the machine)
    dev = "$(ip -4 -o addr | awk '/10[.]231[.]0[.]/ {print $2}')"
    p = sh(hv, "nt-other", f"ip route add {web_ip}/32 dev {dev} && echo routed && "
           f"ping -c1 -W1 {web_ip}; r=$?; nc -w 2 {web_ip} 8080 </dev/null; "
           f"ip route del {web_ip}/32; exit $r")
    assert p.stdout.startswith("routed\n"), p.stderr
    assert p.returncode != 0, p.stdout
    assert "hello" not in p.stdout and "1 packets received" not in p.stdout


def test_network_rm_refused_while_in_use(hv, trio):
    p = hv("network", "rm", "nt-a")
    assert p.returncode == 1
    assert "error while removing network: network nt-a has active endpoints" in one_error(p)
    assert 'name:"nt-web"' in p.stderr


def test_a_later_container_is_resolved_by_earlier_ones_and_not_after_rm(hv, trio, busybox):
    """nt-late joins both networks: it reaches both sides, and both sides resolve it."""
    hv("run", "-d", "--name", "nt-late", "--network", "nt-a", "--network", "nt-b", busybox,
       "sleep", "600", check=True)
    # the earlier ones got the new /etc/hosts through the agent
    assert sh(hv, "nt-web", "ping -c1 -W2 nt-late").returncode == 0
    assert sh(hv, "nt-other", "ping -c1 -W2 nt-late").returncode == 0
    assert sh(hv, "nt-late", "ping -c1 -W2 alpha").returncode == 0
    assert sh(hv, "nt-late", "ping -c1 -W2 nt-other").returncode == 0
    nets = json.loads(hv("inspect", "nt-late", check=True).stdout)[0]["NetworkSettings"][
        "Networks"]
    assert sorted(nets) == ["nt-a", "nt-b"]
    assert nets["nt-b"]["IPAddress"].startswith("10.231.0.")
    late_ip = ip_of(hv, "nt-late", "nt-a")
    p = sh(hv, "nt-web", "nslookup nt-late")  # the resolver read the pushed hosts file
    assert f"Address: {late_ip}" in p.stdout, (p.stdout, p.stderr)
    assert not resolves(hv, "nt-web", "nt-other")  # a shared peer links nothing
    hv("rm", "-f", "nt-late", check=True)
    assert not resolves(hv, "nt-web", "nt-late")
    assert not resolves(hv, "nt-db", "nt-late")
    assert not resolves(hv, "nt-other", "nt-late")
    doc = json.loads(hv("network", "inspect", "nt-a", check=True).stdout)[0]
    assert all(c["Name"] != "nt-late" for c in doc["Containers"].values())
    assert not any(c["IPv4Address"].startswith(late_ip + "/") for c in doc["Containers"].values())


def test_rename_a_running_container_peers_resolve_the_new_name(hv, trio, busybox):
    db_id = hv("inspect", "-f", "{{.Id}}", "nt-db", check=True).stdout.strip()
    try:
        hv("rename", "nt-db", "nt-store", check=True)
        assert resolves(hv, "nt-web", "nt-store") and not resolves(hv, "nt-web", "nt-db")
        assert resolves(hv, "nt-web", db_id[:12])  # its short id stays
        assert sh(hv, "nt-store", "echo by-new-name").stdout == "by-new-name\n"
        names = hv("ps", "--format", "{{.Names}}", check=True).stdout.split()
        assert "nt-store" in names and "nt-db" not in names
        p = hv("exec", "nt-db", "true")
        assert p.returncode == 1 and "No such container: nt-db" in p.stderr
        doc = json.loads(hv("network", "inspect", "nt-a", check=True).stdout)[0]
        assert doc["Containers"][db_id]["Name"] == "nt-store"
        # the old name is free again, though the running VM's libvirt domain still has it
        p = hv("run", "--rm", "--name", "nt-db", busybox, "echo", "newcomer")
        assert (p.returncode, p.stdout) == (0, "newcomer\n"), p.stderr
        p = hv("rename", "nt-web", "nt-store")
        assert p.returncode == 1 and 'Conflict. The container name "/nt-store" is ' \
            "already in use" in one_error(p)
        p = hv("rename", "nt-web", "bad name")
        assert p.returncode == 1 and "Invalid container name" in one_error(p)
    finally:
        hv("rename", "nt-store", "nt-db")
    assert resolves(hv, "nt-web", "nt-db") and not resolves(hv, "nt-web", "nt-store")


def test_connect_and_disconnect_a_running_container(hv, trio):
    """`network connect` of a running container hot-plugs a NIC (tap on the bridge, PCI
    hot-plug, the agent's `nics` verb); names follow both ways; `disconnect` takes the
    address, then the NIC, then the tap away, and the peers stop resolving it."""
    nics_before = sh(hv, "nt-other", "ls /sys/class/net").stdout.split()
    t0 = time.monotonic()
    hv("network", "connect", "--alias", "omega-live", "nt-a", "nt-other", check=True)
    took = time.monotonic() - t0
    ip = ip_of(hv, "nt-other", "nt-a")
    assert ip and f"inet {ip}/" in sh(hv, "nt-other", "ip -4 -o addr").stdout
    doc = json.loads(hv("inspect", "nt-other", check=True).stdout)[0]
    assert sorted(doc["NetworkSettings"]["Networks"]) == ["nt-a", "nt-b"]
    assert doc["NetworkSettings"]["Networks"]["nt-a"]["Aliases"] == ["omega-live"]
    # both ways, by name and alias, at once: the hosts files were pushed
    assert sh(hv, "nt-other", "ping -c1 -W2 nt-web").returncode == 0
    assert sh(hv, "nt-web", "ping -c1 -W2 omega-live").returncode == 0
    assert "hello-from-" in sh(hv, "nt-web", "nc nt-other 8080 </dev/null").stdout
    p = hv("network", "connect", "nt-a", "nt-other")
    assert p.returncode == 1
    assert "endpoint with name nt-other already exists in network nt-a" in one_error(p)
    net = json.loads(hv("network", "inspect", "nt-a", check=True).stdout)[0]
    assert net["Containers"][doc["Id"]]["IPv4Address"].startswith(ip + "/")

    hv("network", "disconnect", "nt-a", "nt-other", check=True)
    assert f"inet {ip}/" not in sh(hv, "nt-other", "ip -4 -o addr").stdout
    assert sh(hv, "nt-other", "ls /sys/class/net").stdout.split() == nics_before
    assert not resolves(hv, "nt-web", "nt-other") and not resolves(hv, "nt-web", "omega-live")
    assert sh(hv, "nt-web", f"ping -c1 -W1 {ip}").returncode != 0
    doc = json.loads(hv("inspect", "nt-other", check=True).stdout)[0]
    assert list(doc["NetworkSettings"]["Networks"]) == ["nt-b"]
    # nt-other's own network still works, and so does the container
    assert "hello-from-" in sh(hv, "nt-other", "nc 127.0.0.1 8080 </dev/null").stdout
    print(f"connect of a running container: {took:.2f} s")


def test_connect_and_disconnect_a_stopped_container_apply_at_start(hv, trio):
    hv("stop", "-t", "1", "nt-other", check=True)
    hv("network", "connect", "--alias", "omega", "nt-a", "nt-other", check=True)
    p = hv("network", "connect", "nt-a", "nt-other")
    assert p.returncode == 1
    assert "endpoint with name nt-other already exists in network nt-a" in one_error(p)
    hv("network", "disconnect", "nt-b", "nt-other", check=True)
    p = hv("network", "disconnect", "nt-b", "nt-other")
    assert p.returncode == 1 and "is not connected to network nt-b" in one_error(p)
    assert hv("network", "disconnect", "-f", "nt-b", "nt-other").returncode == 0
    hv("start", "nt-other", check=True)
    doc = json.loads(hv("inspect", "nt-other", check=True).stdout)[0]
    assert list(doc["NetworkSettings"]["Networks"]) == ["nt-a"]
    assert sh(hv, "nt-other", "ping -c1 -W2 alpha").returncode == 0
    assert sh(hv, "nt-web", "ping -c1 -W2 omega").returncode == 0
    assert "10.231.0." not in sh(hv, "nt-other", "ip -4 -o addr").stdout
    # nt-b is empty now: prune takes it (and only it)
    p = hv("network", "prune", "-f", check=True)
    assert p.stdout == "Deleted Networks:\nnt-b\n\n"
    names = hv("network", "ls", "--format", "{{.Name}}", check=True).stdout.split()
    assert sorted(names) == ["bridge", "none", "nt-a"]


def test_default_bridge_by_ip_without_names(hv, busybox):
    cid = hv("run", "-d", "--name", "nt-br", busybox, "sh", "-c", SERVE, check=True).stdout.strip()
    try:
        doc = json.loads(hv("inspect", "nt-br", check=True).stdout)[0]
        ns = doc["NetworkSettings"]
        assert list(ns["Networks"]) == ["bridge"] and doc["HostConfig"]["NetworkMode"] == "bridge"
        assert ns["IPAddress"].startswith("172.17.") and ns["Gateway"] == "172.17.0.1"
        assert ns["MacAddress"].startswith("02:42:ac:11:")
        assert ns["Networks"]["bridge"]["DNSNames"] is None
        ip = ns["IPAddress"]
        p = hv("run", "--rm", busybox, "sh", "-c",
               f"ping -c1 -W2 {ip} >/dev/null && echo by-ip; nc {ip} 8080 </dev/null; "
               f"grep -qw nt-br /etc/hosts || echo no-name; "
               f"grep -qw {cid[:12]} /etc/hosts || echo no-id")
        assert p.returncode == 0, p.stderr
        assert "by-ip\n" in p.stdout and "hello-from-" in p.stdout
        assert "no-name\n" in p.stdout and "no-id\n" in p.stdout
    finally:
        hv("rm", "-f", "nt-br")


def test_none_has_no_hv_nic_and_add_host(hv, busybox):
    p = hv("run", "--rm", "--network", "none", "--add-host", "db.example:10.1.2.3", busybox,
           "sh", "-c", "ip -4 -o addr | grep -v ' lo ' | grep -c 172.; "
           "grep db.example /etc/hosts")
    assert p.stdout.splitlines() == ["0", "10.1.2.3\tdb.example"], p.stderr
    doc = json.loads(hv("network", "inspect", "none", check=True).stdout)[0]
    assert doc["Containers"] == {}


def test_dns_flags_write_resolv_conf_and_show_in_inspect(hv, busybox):
    """Only the file is checked: a lookup through 192.0.2.53 would leave the machine."""
    try:
        p = hv("run", "--name", "nt-dns", "--network", "none", "--dns", "192.0.2.53", "--dns",
               "2001:db8::53", "--dns-search", "example.test", "--dns-option", "ndots:2",
               busybox, "cat", "/etc/resolv.conf")
        assert p.returncode == 0, p.stderr
        assert p.stdout == ("nameserver 192.0.2.53\nnameserver 2001:db8::53\n"
                            "search example.test\noptions ndots:2\n")
        host = json.loads(hv("inspect", "nt-dns", check=True).stdout)[0]["HostConfig"]
        assert host["Dns"] == ["192.0.2.53", "2001:db8::53"]
        assert (host["DnsSearch"], host["DnsOptions"]) == (["example.test"], ["ndots:2"])
    finally:
        hv("rm", "-f", "nt-dns")
    # without them: the user-mode NIC's resolver, as before
    p = hv("run", "--rm", "--network", "none", busybox, "cat", "/etc/resolv.conf")
    assert p.stdout == "nameserver 10.0.2.3\n", p.stderr
    for args, text in ((("--dns", "not-an-ip"), 'invalid argument "not-an-ip" for "--dns"'),
                       (("--dns-search", "a b"), 'invalid argument "a b" for "--dns-search"')):
        p = hv("run", "--rm", "--name", "nt-dns-bad", *args, busybox, "true")
        assert p.returncode == 125 and text in one_error(p), p.stderr
        assert "nt-dns-bad" not in hv("ps", "-a", "--format", "{{.Names}}").stdout


@pytest.fixture
def host_listener():
    """A TCP server on the host's loopback that answers `host-ok`: what a container reaches
    at 10.0.2.2 (the user-mode NIC's name for the host's 127.0.0.1) when it has a way out.
    Loopback only, so nothing ever leaves the machine."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"host-ok\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


def test_internal_and_none_have_no_way_out_but_names_and_exec_work(hv, busybox,
                                                                    host_listener):
    probe = f"nc -w 3 10.0.2.2 {host_listener} </dev/null; echo probed"
    # the probe can succeed: a container on the default bridge reaches the host's listener
    p = hv("run", "--rm", busybox, "sh", "-c", probe)
    assert p.stdout.splitlines() == ["host-ok", "probed"], p.stderr
    hv("network", "create", "--internal", "--subnet", "10.233.0.0/24", "nt-int", check=True)
    try:
        hv("run", "-d", "--name", "nt-isrv", "--network", "nt-int", "-p", "127.0.0.1::8080",
           busybox, "sh", "-c", SERVE, check=True)
        doc = json.loads(hv("network", "inspect", "nt-int", check=True).stdout)[0]
        assert doc["Internal"] is True
        p = hv("run", "--rm", "--network", "nt-int", busybox, "sh", "-c",
               f"{probe}; nc nt-isrv 8080 </dev/null")
        assert "host-ok" not in p.stdout, p.stdout  # no way out ...
        assert "probed\nhello-from-" in p.stdout, p.stderr  # ... but its peers by name
        assert sh(hv, "nt-isrv", "echo via-agent").stdout == "via-agent\n"  # the agent's forward
        # its resolver knows its peers and, with no way out, fails other names at once
        # (SERVFAIL from the agent: the query goes nowhere)
        t0 = time.monotonic()
        p = sh(hv, "nt-isrv", "nslookup outside.invalid")
        assert p.returncode != 0 and "SERVFAIL" in p.stdout + p.stderr, (p.stdout, p.stderr)
        assert time.monotonic() - t0 < 5
        assert "Address: 10.233.0." in sh(hv, "nt-isrv", "nslookup nt-isrv").stdout
        # it sees its one network and no user-mode NIC; as on Docker, -p publishes nothing
        assert nic_names(sh(hv, "nt-isrv", "ip -o link").stdout) == ["lo", "eth0"]
        p = hv("port", "nt-isrv", "8080")
        assert p.returncode == 1 and "No public port '8080/tcp'" in one_error(p), p.stderr
        # connected to a normal network as well, a container gets its way out (the domain
        # is defined again at its start), and loses it when that network goes
        hv("network", "create", "--subnet", "10.234.0.0/24", "nt-ext", check=True)
        try:
            p = hv("run", "--name", "nt-both", "--network", "nt-int", busybox, "sh", "-c", probe)
            assert p.stdout.splitlines() == ["probed"], p.stderr
            hv("network", "connect", "nt-ext", "nt-both", check=True)
            p = hv("start", "-a", "nt-both")
            assert p.stdout.splitlines() == ["host-ok", "probed"], p.stderr
            hv("network", "disconnect", "nt-ext", "nt-both", check=True)
            p = hv("start", "-a", "nt-both")
            assert p.stdout.splitlines() == ["probed"], p.stderr
        finally:
            hv("rm", "-f", "nt-both")
            hv("network", "rm", "nt-ext")
    finally:
        hv("rm", "-f", "nt-isrv")
        hv("network", "rm", "nt-int")
    p = hv("run", "--rm", "--network", "none", busybox, "sh", "-c", probe)
    assert p.stdout.splitlines() == ["probed"], p.stderr
    p = hv("run", "--rm", "--network", "none", busybox, "ip", "-o", "link")
    assert nic_names(p.stdout) == ["lo"], p.stdout  # Docker's none: loopback alone


def nic_names(ip_link: str) -> list[str]:
    """Interfaces of `ip -o link`, without the sit0 that any namespace gets from the
    kernel's built-in sit driver (Docker's containers show it too)."""
    names = [line.split(":")[1].strip().split("@")[0] for line in ip_link.splitlines()
             if ":" in line]
    return [n for n in names if n != "sit0"]


def test_the_workload_sees_its_own_nics_and_not_the_agents(hv, busybox):
    """The agent's user-mode NIC (hv's SSH) stays in the guest's root namespace: the main
    process and every exec see loopback, their user-mode NIC (the way out, -p) and their
    networks' NICs, and nothing listens on their port 22 while `exec` itself goes through
    the agent's sshd."""
    hv("run", "-d", "--name", "nt-view", "-p", "127.0.0.1::8080", busybox, "sh", "-c",
       f"ip -o link > /tmp/main.txt; {SERVE}", check=True)
    try:
        for text in (sh(hv, "nt-view", "cat /tmp/main.txt").stdout,
                     sh(hv, "nt-view", "ip -o link").stdout):
            assert nic_names(text) == ["lo", "eth0", "eth1"], text
        addrs = sh(hv, "nt-view", "ip -o -4 addr").stdout
        assert "10.0.2.15/24" in addrs and "172.17." in addrs, addrs
        p = sh(hv, "nt-view", "netstat -ltn; nc -w 2 127.0.0.1 22 </dev/null; "
                              "nc -w 2 10.0.2.15 22 </dev/null; echo done")
        assert ":22 " not in p.stdout and "SSH-" not in p.stdout, p.stdout
        assert p.stdout.endswith("done\n")
        port = hv("port", "nt-view", "8080", check=True).stdout.split(":")[-1].strip()
        with socket.create_connection(("127.0.0.1", int(port)), timeout=30) as c:
            c.settimeout(30)
            assert c.recv(64).startswith(b"hello-from-")
    finally:
        hv("rm", "-f", "nt-view")


def test_run_network_refusals_exit_125_and_leave_nothing(hv, busybox):
    before = datapath.hv_links(datapath.owner_tag(hv.root))
    hv("network", "create", "--subnet", "10.232.0.0/24", "nt-c", check=True)
    try:
        for args, text in [
            (("--network", "host"), 'network mode "host" is not supported'),
            (("--network", "nt-nosuch"), "network nt-nosuch not found"),
            (("--network-alias", "x"), "network-scoped alias is supported only"),
            (("--network", "nt-c", "--ip", "10.9.9.9"), "Invalid address 10.9.9.9"),
            (("--network", "nt-c", "--ip", "10.232.0.1"), "Address already in use"),
            (("--network", "bridge", "--ip", "172.17.0.9"), "user specified IP address"),
        ]:
            p = hv("run", "--rm", *args, busybox, "true")
            assert p.returncode == 125, (args, p.stderr)
            assert text in one_error(p), (args, p.stderr)
        doc = json.loads(hv("network", "inspect", "nt-c", check=True).stdout)[0]
        assert doc["Containers"] == {}
        assert datapath.hv_links(datapath.owner_tag(hv.root)) == before
        # an exited `--rm -d` container, collected by a listing, leaves no endpoint
        hv("run", "-d", "--rm", "--name", "nt-gone", "--network", "nt-c", busybox, "true",
           check=True)
        hv.wait_for(lambda: "nt-gone" not in hv("ps", "-a", "--format", "{{.Names}}").stdout)
        doc = json.loads(hv("network", "inspect", "nt-c", check=True).stdout)[0]
        assert doc["Containers"] == {}
        # --ip that fits is honoured
        p = hv("run", "--rm", "--network", "nt-c", "--ip", "10.232.0.77", busybox, "ip", "-4",
               "-o", "addr")
        assert "inet 10.232.0.77/24" in p.stdout, p.stderr
    finally:
        hv("network", "rm", "nt-c")
    assert datapath.hv_links(datapath.owner_tag(hv.root)) == before


def _qemu_of(hv, name: str) -> int | None:
    """The QEMU of container `name` (by its libvirt domain's name: a warm container's VM
    keeps its pooled name)."""
    p = hv("inspect", "-f", "{{.VM.Domain}}", name)
    if p.returncode != 0:
        return None
    name = p.stdout.strip()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and f"guest={name},".encode() in cmd:
                return int(p.name)
    return None


def test_a_killed_qemu_leaves_no_tap_after_the_next_run(hv, busybox):
    cid = hv("run", "-d", "--name", "nt-kill", busybox, "sleep", "600", check=True).stdout.strip()
    tap = f"hvt-{cid[:8]}-0"
    try:
        assert tap in datapath.hv_links(datapath.owner_tag(hv.root))
        os.kill(_qemu_of(hv, "nt-kill"), signal.SIGKILL)
        hv.wait_for(lambda: _qemu_of(hv, "nt-kill") is None, timeout=30)
        hv("run", "--rm", "--network", "none", busybox, "true", check=True)
        assert tap not in datapath.hv_links(datapath.owner_tag(hv.root))
        # its records stay (a stopped container keeps its networks): start makes it again
        hv("start", "nt-kill", check=True)
        assert tap in datapath.hv_links(datapath.owner_tag(hv.root))
    finally:
        hv("rm", "-f", "nt-kill")
    assert tap not in datapath.hv_links(datapath.owner_tag(hv.root))


def test_without_cap_net_admin_default_is_user_mode_only_and_networks_refused(hv, busybox):
    """hv not allowed to make links (the capability dropped from a root process's bounding
    set, which is what an unprivileged hv lacks): the default joins nothing, an explicit
    network is refused with a hint, `none` works."""
    assert shutil.which("setpriv"), "setpriv is util-linux's, on every Debian"

    def unpriv(*args: str):
        return subprocess.run(["setpriv", "--bounding-set", "-net_admin", sys.executable, "-m",
                               "cli", *args], capture_output=True, text=True, env=hv.env(),
                              cwd=hv.env()["PYTHONPATH"], timeout=240)

    for args in (("--network", "bridge"), ("--network-alias", "x")):
        p = unpriv("run", "--rm", *args, busybox, "true")
        assert p.returncode == 125, p.stderr
        assert "container networks need CAP_NET_ADMIN" in one_error(p)
    p = unpriv("run", "--name", "nt-unpriv", busybox, "sh", "-c",
               "ip -4 -o addr | grep -v ' lo ' | wc -l")
    try:
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "1"  # the user-mode NIC alone
        doc = json.loads(hv("inspect", "nt-unpriv", check=True).stdout)[0]
        assert doc["NetworkSettings"]["Networks"] == {}
        assert doc["HostConfig"]["NetworkMode"] == "default"
    finally:
        hv("rm", "-f", "nt-unpriv")
    assert unpriv("run", "--rm", "--network", "none", busybox, "true").returncode == 0
