"""The host side of hv networks on real netlink (root): bridges and taps made, sealed (no
address, IPv4 or IPv6, no ARP, no forwarding) and removed with their last user; the sweep
of orphans; names within IFNAMSIZ. No VM and no packet: see test_network_guests.py."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from hv.network import datapath, ops, store

pytestmark = pytest.mark.usefixtures("net_admin")

CID_A = "a1" + "0" * 62
CID_B = "b2" + "0" * 62
CID_C = "c3" + "0" * 62


def _sysctl(*parts: str) -> str:
    return Path("/proc/sys/net", *parts).read_text().strip()


@pytest.fixture
def root(tmp_path):
    yield tmp_path
    # whatever a test left, by name, of this root only
    leftovers = datapath.hv_links(datapath.owner_tag(tmp_path))
    datapath.delete_links(sorted(leftovers, key=lambda n: n.startswith("hvbr-")))
    assert not leftovers, f"the test left hv links behind: {leftovers}"


def _no_host_address() -> None:
    assert datapath.hv_addresses() == []


def test_taps_and_bridge_made_sealed_and_removed_with_the_last_user(root):
    net = ops.create(root, "app")
    ea = ops.connect(root, "app", CID_A, "web")
    eb = ops.connect(root, "app", CID_B, "db")
    owner = datapath.owner_tag(root)
    assert datapath.hv_links(owner) == {}  # a record only until a container starts
    ifaces = ops.prepare_taps(root, CID_A)
    assert [(i.tap, i.mac) for i in ifaces] == [(ea.tap, ea.mac)]
    assert ops.prepare_taps(root, CID_A) == ifaces  # idempotent (a restart, a reboot)
    ops.prepare_taps(root, CID_B)
    links = datapath.hv_links(owner)
    assert links == {net.bridge: "bridge", ea.tap: "tun", eb.tap: "tun"}
    assert all(len(n) <= 15 for n in links)
    assert datapath.bridge_ports(net.bridge) == sorted([ea.tap, eb.tap])
    for dev in links:
        assert _sysctl("ipv6", "conf", dev, "disable_ipv6") == "1"
        assert _sysctl("ipv4", "conf", dev, "forwarding") == "0"
        assert _sysctl("ipv4", "conf", dev, "rp_filter") == "1"
        assert _sysctl("ipv4", "conf", dev, "arp_ignore") == "8"
    flags = int(Path(f"/sys/class/net/{net.bridge}/flags").read_text(), 16)
    assert flags & datapath.IFF_NOARP and flags & 0x1  # NOARP, UP
    for opt in ("nf_call_iptables", "nf_call_ip6tables", "nf_call_arptables", "stp_state"):
        assert Path(f"/sys/class/net/{net.bridge}/bridge/{opt}").read_text().strip() == "0"
    _no_host_address()
    # a stop: the taps go, the records stay; the bridge goes with its last tap
    assert ops.teardown_taps(root, CID_A) == [ea.tap]
    assert set(datapath.hv_links(owner)) == {net.bridge, eb.tap}
    ops.prepare_taps(root, CID_A)
    ops.disconnect(root, "app", CID_A)
    assert set(datapath.hv_links(owner)) == {net.bridge, eb.tap}
    ops.release(root, CID_B)
    assert datapath.hv_links(owner) == {}
    ops.remove(root, "app")


def test_someone_elses_address_is_taken_off(root):
    """A bridge someone gave an address (by hand, an older tool) is sealed again at the next
    start: the host must have no address on a segment."""
    net = ops.create(root, "app")
    ops.connect(root, "app", CID_A, "web")
    ops.prepare_taps(root, CID_A)
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=net.bridge)[0]
        ipr.addr("add", index=index, address="198.51.100.7", prefixlen=32)
    assert datapath.hv_addresses() == [(net.bridge, "198.51.100.7/32")]
    ops.prepare_taps(root, CID_A)
    _no_host_address()
    ops.release(root, CID_A)


def test_two_networks_are_two_unlinked_bridges(root):
    a = ops.create(root, "a")
    b = ops.create(root, "b")
    ops.connect(root, "a", CID_A, "x")
    ops.connect(root, "b", CID_B, "y")
    ops.connect(root, "b", CID_C, "z")
    for cid in (CID_A, CID_B, CID_C):
        ops.prepare_taps(root, cid)
    assert datapath.bridge_ports(a.bridge) == [ops.endpoints_of(root, CID_A)[0][1].tap]
    assert len(datapath.bridge_ports(b.bridge)) == 2
    # no port of one bridge is a port of the other, and neither bridge is a port
    assert not set(datapath.bridge_ports(a.bridge)) & set(datapath.bridge_ports(b.bridge))
    assert not Path(f"/sys/class/net/{a.bridge}/master").exists()
    assert not Path(f"/sys/class/net/{b.bridge}/master").exists()
    _no_host_address()
    for cid in (CID_A, CID_B, CID_C):
        ops.release(root, cid)


def test_sweep_removes_orphans_of_this_root_only(root, tmp_path_factory):
    owner = datapath.owner_tag(root)
    ops.create(root, "app")
    ea = ops.connect(root, "app", CID_A, "web")
    eb = ops.connect(root, "app", CID_B, "db")
    ops.prepare_taps(root, CID_A)
    ops.prepare_taps(root, CID_B)
    bridge = ops.get(root, "app").bridge
    # orphans: a network record and a container record lost while hv was killed
    datapath.ensure_bridge("hvbr-deadbeef", owner)
    datapath.ensure_tap("hvt-deadbeef-0", "hvbr-deadbeef", owner)
    datapath.ensure_tap("hvt-0badf00d-0", bridge, owner)
    # another state root's links are not this root's to remove
    other = datapath.owner_tag(tmp_path_factory.mktemp("other"))
    datapath.ensure_bridge("hvbr-0e0e0e0e", other)
    try:
        gone = ops.sweep(root)
        assert sorted(gone) == ["hvbr-deadbeef", "hvt-0badf00d-0", "hvt-deadbeef-0"]
        assert set(datapath.hv_links(owner)) == {bridge, ea.tap, eb.tap}
        assert "hvbr-0e0e0e0e" in datapath.hv_links()
        # a killed QEMU: with the running set, the taps of the others go, then the bridge
        assert ops.sweep(root, running={CID_B}) == [ea.tap]
        assert ops.sweep(root, running=set()) == [eb.tap, bridge]
        assert datapath.hv_links(owner) == {}
        assert ops.sweep(root) == []
    finally:
        datapath.delete_links(["hvbr-0e0e0e0e"])
    for cid in (CID_A, CID_B):
        ops.release(root, cid)


def test_failed_start_leaves_nothing(root, monkeypatch):
    ops.create(root, "app")
    ops.connect(root, "app", CID_A, "web")

    def boom(name, bridge, owner):
        raise datapath.DatapathError("injected")

    monkeypatch.setattr(datapath, "ensure_tap", boom)
    with pytest.raises(datapath.DatapathError):
        ops.prepare_taps(root, CID_A)
    assert datapath.hv_links(datapath.owner_tag(root)) == {}
    ops.release(root, CID_A)


def test_new_subnets_avoid_the_hosts_networks(root):
    host = datapath.host_subnets()
    assert all(isinstance(n, ipaddress.IPv4Network) for n in host)
    net = ops.create(root, "app")
    assert not any(ipaddress.IPv4Network(net.subnet).overlaps(h) for h in host)


def test_records_survive_and_are_shared_by_a_second_reader(root):
    ops.create(root, "app")
    ops.connect(root, "app", CID_A, "web")
    again = store.all_networks(Path(os.fspath(root)))
    assert CID_A in {c for n in again for c in n.endpoints}
    ops.release(root, CID_A)


def test_no_host_address_on_any_hv_link_at_all():
    """Whatever ran before on this host: no hv bridge or tap holds an address."""
    _no_host_address()
