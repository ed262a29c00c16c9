"""Networks as records: addresses, Docker's errors and inspect shape, names (no VM, no
device: connect/disconnect of a stopped container touch only records)."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest

from hv.errors import Conflict, UsageError
from hv.guest.seed import GuestNic, GuestSpec, seed_files
from hv.network import hosts, ipam, ops, store
from hv.network.model import Endpoint, Network, bridge_name, tap_name

N = ipaddress.IPv4Network
CID_A = "a" * 64
CID_B = "b" * 64
CID_C = "c" * 64


def no_host():
    return []


def make(root, name, **kw):
    kw.setdefault("host_subnets", no_host)
    return ops.create(root, name, **kw)


# --- ipam --------------------------------------------------------------------------------------


def test_default_pools_in_dockers_order():
    first = list(ipam.candidate_subnets())[:3]
    assert first == [N("172.17.0.0/16"), N("172.18.0.0/16"), N("172.19.0.0/16")]
    assert N("172.31.0.0/16") in ipam.candidate_subnets()
    after = list(ipam.candidate_subnets())
    assert after[after.index(N("172.31.0.0/16")) + 1] == N("192.168.0.0/20")


def test_pick_skips_hv_networks_and_the_hosts_routes():
    used = [N("172.17.0.0/16"), N("172.18.0.0/16")]
    assert ipam.pick_subnet(used, []) == N("172.19.0.0/16")
    # a host route inside 172.19/16 (a VPN, another bridge) rules that pool out too
    assert ipam.pick_subnet(used, [N("172.19.5.0/24")]) == N("172.20.0.0/16")
    # the default route is no network
    assert ipam.pick_subnet(used, [N("0.0.0.0/0")]) == N("172.19.0.0/16")
    every = list(ipam.candidate_subnets())
    with pytest.raises(Conflict):
        ipam.pick_subnet(every, [])


def test_subnet_and_gateway_validation():
    assert ipam.parse_subnet("10.9.0.0/16") == N("10.9.0.0/16")
    for bad, why in [("foo", "invalid CIDR address"), ("10.9.0.1/16", "it should be 10.9.0.0/16"),
                     ("10.0.0.0/31", "between 8 and 30"), ("fd00::/64", "only IPv4"),
                     ("10.0.0.0", "invalid CIDR")]:
        with pytest.raises(UsageError, match=re.escape(why)):
            ipam.parse_subnet(bad)
    net = N("10.9.0.0/16")
    assert str(ipam.gateway_for(net, None)) == "10.9.0.1"
    assert str(ipam.gateway_for(net, "10.9.3.4")) == "10.9.3.4"
    for bad in ("10.10.0.1", "10.9.0.0", "10.9.255.255", "nope"):
        with pytest.raises(UsageError):
            ipam.gateway_for(net, bad)
    with pytest.raises(Conflict, match="Pool overlaps with other one on this address space"):
        ipam.check_user_subnet(N("10.9.128.0/17"), [net], [])
    with pytest.raises(Conflict, match="the host's 192.0.2.0/24"):
        ipam.check_user_subnet(N("192.0.2.0/25"), [], [N("192.0.2.0/24")])


def test_allocate_lowest_free_gateway_reserved_and_wanted():
    net, gw = N("10.9.0.0/29"), ipaddress.IPv4Address("10.9.0.1")
    assert str(ipam.allocate(net, gw, [])) == "10.9.0.2"
    assert str(ipam.allocate(net, gw, ["10.9.0.2", "10.9.0.4"])) == "10.9.0.3"
    assert str(ipam.allocate(net, gw, [], "10.9.0.6")) == "10.9.0.6"
    with pytest.raises(Conflict, match="Address already in use"):
        ipam.allocate(net, gw, ["10.9.0.6"], "10.9.0.6")
    with pytest.raises(Conflict, match="Address already in use"):
        ipam.allocate(net, gw, [], "10.9.0.1")  # the gateway, although nobody holds it
    with pytest.raises(UsageError, match="does not belong to any of this network's subnets"):
        ipam.allocate(net, gw, [], "10.9.0.7")  # broadcast
    with pytest.raises(UsageError, match="does not belong"):
        ipam.allocate(net, gw, [], "10.8.0.2")
    with pytest.raises(Conflict, match="No available addresses"):
        ipam.allocate(net, gw, [f"10.9.0.{i}" for i in range(2, 7)])


def test_mac_as_docker_makes_it():
    assert ipam.mac_for(ipaddress.IPv4Address("172.18.0.2")) == "02:42:ac:12:00:02"


def test_interface_names_fit_ifnamsiz():
    assert bridge_name("0123456789" + "0" * 54) == "hvbr-01234567"
    assert tap_name(CID_A, 0) == "hvt-aaaaaaaa-0"
    assert len(tap_name(CID_A, 99)) == 15
    with pytest.raises(ValueError):
        tap_name(CID_A, 100)


# --- store -------------------------------------------------------------------------------------


def test_predefined_networks_exist_and_host_is_refused(tmp_path):
    nets = {n.name: n for n in ops.list_networks(tmp_path)}
    assert set(nets) == {"bridge", "none"}
    assert nets["bridge"].subnet == "172.17.0.0/16" and nets["bridge"].gateway == "172.17.0.1"
    assert nets["none"].driver == "null"
    assert ops.inspect(tmp_path, "none")["IPAM"]["Config"] == []
    # stable: the same ids on the next look
    assert {n.id for n in ops.list_networks(tmp_path)} == {n.id for n in nets.values()}
    with pytest.raises(UsageError, match="a VM has no host network namespace to share") as e:
        ops.get(tmp_path, "host")
    assert "hint" not in e.value.hint and e.value.hint
    with pytest.raises(UsageError, match="host network namespace"):
        make(tmp_path, "host")
    with pytest.raises(Conflict, match="bridge is a pre-defined network"):
        ops.remove(tmp_path, "bridge")


def test_create_get_by_name_id_prefix_and_errors(tmp_path):
    net = make(tmp_path, "app")
    assert net.subnet == "172.18.0.0/16" and net.gateway == "172.18.0.1"
    assert re.fullmatch(r"[0-9a-f]{64}", net.id)
    assert ops.get(tmp_path, "app").id == net.id
    assert ops.get(tmp_path, net.id).name == "app"
    assert ops.get(tmp_path, net.id[:5]).name == "app"
    second = make(tmp_path, "db")
    assert second.subnet == "172.19.0.0/16"
    with pytest.raises(Conflict, match="^network with name app already exists$") as e:
        make(tmp_path, "app")
    assert e.value.exit_code == 1
    with pytest.raises(store.NetworkNotFound, match="^network nope not found$") as e:
        ops.get(tmp_path, "nope")
    assert e.value.exit_code == 1
    with pytest.raises(UsageError, match="invalid network name"):
        make(tmp_path, "-bad")
    with pytest.raises(UsageError, match="plugin \"overlay\" not found"):
        make(tmp_path, "ov", driver="overlay")
    # the host's own networks are skipped
    third = make(tmp_path, "web", host_subnets=lambda: [N("172.20.0.0/24")])
    assert third.subnet == "172.21.0.0/16"


def test_user_subnet_overlap_and_nothing_half_made(tmp_path):
    make(tmp_path, "a", subnet="10.50.0.0/16", gateway="10.50.0.254")
    assert ops.get(tmp_path, "a").gateway == "10.50.0.254"
    before = sorted(p.name for p in store.networks_dir(tmp_path).iterdir())
    for kw, err in [({"subnet": "10.50.3.0/24"}, Conflict), ({"subnet": "bad"}, UsageError),
                    ({"subnet": "10.60.0.0/16", "gateway": "10.61.0.1"}, UsageError),
                    ({"gateway": "10.70.0.1"}, UsageError),
                    ({"subnet": "172.17.0.0/16"}, Conflict)]:
        with pytest.raises(err):
            make(tmp_path, "b", **kw)
    assert sorted(p.name for p in store.networks_dir(tmp_path).iterdir()) == before


def test_records_are_whole_json_files(tmp_path):
    net = make(tmp_path, "app", labels={"k": "v"}, internal=True)
    data = json.loads(store.record_path(tmp_path, net.id).read_text())
    assert data["version"] == 1 and data["labels"] == {"k": "v"} and data["internal"] is True
    assert not list(store.networks_dir(tmp_path).glob(".net.*"))  # no temporary left
    # a broken record is skipped, not fatal
    (store.networks_dir(tmp_path) / ("f" * 64 + ".json")).write_text("{")
    assert "app" in {n.name for n in ops.list_networks(tmp_path)}


# --- endpoints ---------------------------------------------------------------------------------


def test_connect_disconnect_addresses_and_inspect(tmp_path):
    make(tmp_path, "app")
    a = ops.connect(tmp_path, "app", CID_A, "web", aliases=["www", "www"])
    b = ops.connect(tmp_path, "app", CID_B, "db")
    assert (a.ipv4, a.prefix, a.mac) == ("172.18.0.2", 16, "02:42:ac:12:00:02")
    assert a.aliases == ["www"] and a.tap == "hvt-aaaaaaaa-0"
    assert b.ipv4 == "172.18.0.3"
    doc = ops.inspect(tmp_path, "app")
    assert doc["Containers"][CID_A] == {
        "Name": "web", "EndpointID": a.endpoint_id, "MacAddress": "02:42:ac:12:00:02",
        "IPv4Address": "172.18.0.2/16", "IPv6Address": ""}
    assert doc["IPAM"] == {"Driver": "default", "Options": {},
                           "Config": [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]}
    for key, value in [("Scope", "local"), ("Driver", "bridge"), ("EnableIPv6", False),
                       ("Internal", False), ("Attachable", False), ("Ingress", False),
                       ("ConfigOnly", False), ("ConfigFrom", {"Network": ""})]:
        assert doc[key] == value
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", doc["Created"])
    with pytest.raises(Conflict, match="endpoint with name web already exists in network app"):
        ops.connect(tmp_path, "app", CID_A, "web")
    with pytest.raises(Conflict, match="has active endpoints") as e:
        ops.remove(tmp_path, "app")
    assert "error while removing network: network app has active endpoints" in str(e.value)
    # a second network: the next tap number, the next pool
    make(tmp_path, "other")
    a2 = ops.connect(tmp_path, "other", CID_A, "web")
    assert a2.tap == "hvt-aaaaaaaa-1" and a2.ipv4 == "172.19.0.2"
    # disconnect frees the address; the next one gets it again
    ops.disconnect(tmp_path, "app", CID_A)
    assert ops.connect(tmp_path, "app", CID_C, "cache").ipv4 == "172.18.0.2"
    with pytest.raises(UsageError, match="is not connected to network app"):
        ops.disconnect(tmp_path, "app", CID_A)
    assert ops.disconnect(tmp_path, "app", CID_A, force=True) is None
    # release at rm: every endpoint of the container goes
    assert {e.network_id for e in ops.release(tmp_path, CID_A)} == {ops.get(tmp_path,
                                                                             "other").id}
    assert ops.endpoints_of(tmp_path, CID_A) == []


def test_dockers_rules_for_ip_alias_none(tmp_path):
    make(tmp_path, "auto")
    make(tmp_path, "fixed", subnet="10.80.0.0/24")
    with pytest.raises(UsageError, match="supported only for containers in user defined"):
        ops.connect(tmp_path, "bridge", CID_A, "web", aliases=["x"])
    with pytest.raises(UsageError, match="supported on user defined networks only"):
        ops.connect(tmp_path, "bridge", CID_A, "web", ip="172.17.0.9")
    with pytest.raises(UsageError, match="networks with user configured subnets"):
        ops.connect(tmp_path, "auto", CID_A, "web", ip="172.18.0.9")
    fixed = ops.connect(tmp_path, "fixed", CID_A, "web", ip="10.80.0.9")
    assert fixed.ipv4 == "10.80.0.9"
    doc = fixed.to_container_inspect(ops.get(tmp_path, "fixed"))
    assert doc["IPAMConfig"] == {"IPv4Address": "10.80.0.9"} and doc["IPPrefixLen"] == 24
    assert doc["Gateway"] == "10.80.0.1" and doc["DNSNames"] == ["web", CID_A[:12]]
    on_bridge = ops.connect(tmp_path, "bridge", CID_B, "db")
    doc = on_bridge.to_container_inspect(ops.get(tmp_path, "bridge"))
    assert doc["DNSNames"] is None and doc["IPAMConfig"] is None  # no names on `bridge`
    assert doc["IPAddress"] == "172.17.0.2" and doc["MacAddress"] == "02:42:ac:11:00:02"
    ops.release(tmp_path, CID_B)
    with pytest.raises(Conflict, match="Address already in use"):
        ops.connect(tmp_path, "fixed", CID_B, "db", ip="10.80.0.9")
    with pytest.raises(UsageError, match="does not belong"):
        ops.connect(tmp_path, "fixed", CID_B, "db", ip="10.81.0.9")
    assert ops.endpoints_of(tmp_path, CID_B) == []  # nothing half-made
    with pytest.raises(Conflict, match="private \\(none\\) mode"):
        ops.connect(tmp_path, "none", CID_A, "web")
    none_ep = ops.connect(tmp_path, "none", CID_C, "lonely")
    assert none_ep.tap == "" and none_ep.ipv4 == "" and none_ep.mac == ""
    with pytest.raises(Conflict, match="private \\(none\\) mode"):
        ops.connect(tmp_path, "auto", CID_C, "lonely")
    assert ops.prepare_taps(tmp_path, CID_C) == []  # nothing to make for `none`
    with pytest.raises(UsageError, match="invalid alias"):
        ops.connect(tmp_path, "auto", CID_B, "db", aliases=["has space"])


def test_prune_and_outbound(tmp_path):
    make(tmp_path, "used", internal=True)
    make(tmp_path, "idle")
    ops.connect(tmp_path, "used", CID_A, "web")
    assert ops.prune(tmp_path) == ["idle"]
    assert {n.name for n in ops.list_networks(tmp_path)} == {"bridge", "none", "used"}
    assert ops.outbound_allowed(tmp_path, CID_A) is False  # only on an --internal network
    ops.connect(tmp_path, "bridge", CID_A, "web")
    assert ops.outbound_allowed(tmp_path, CID_A) is True
    assert ops.outbound_allowed(tmp_path, CID_B) is True  # on no hv network: as today


# --- names -------------------------------------------------------------------------------------


def test_names_on_user_networks_only_and_shared_ones(tmp_path):
    make(tmp_path, "front")
    make(tmp_path, "back")
    ops.connect(tmp_path, "front", CID_A, "web", aliases=["www"])
    ops.connect(tmp_path, "front", CID_B, "api")
    ops.connect(tmp_path, "back", CID_B, "api", aliases=["backend"])
    ops.connect(tmp_path, "back", CID_C, "db")
    ops.connect(tmp_path, "bridge", CID_C, "db")
    # web sees front only: itself and api, not db (isolation by name too)
    assert ops.hosts_for(tmp_path, CID_A) == [
        ("172.18.0.2", ["web", "www", CID_A[:12]]), ("172.18.0.3", ["api", CID_B[:12]])]
    # db sees back only; the default bridge gives no names
    assert ops.hosts_for(tmp_path, CID_C) == [
        ("172.19.0.2", ["api", "backend", CID_B[:12]]), ("172.19.0.3", ["db", CID_C[:12]])]
    # api is on both: each name once, first network first
    api = ops.hosts_for(tmp_path, CID_B)
    assert api[0] == ("172.18.0.2", ["web", "www", CID_A[:12]])
    assert ("172.19.0.3", ["db", CID_C[:12]]) in api
    assert ("172.19.0.2", ["backend"]) in api
    assert ops.peers(tmp_path, CID_C) == {CID_B, CID_C}
    text = ops.hosts_file(tmp_path, CID_A, "web")
    assert text.startswith("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    assert "172.18.0.2\tweb\n" in text and f"172.18.0.3\tapi {CID_B[:12]}\n" in text
    ops.rename(tmp_path, CID_B, "api2")
    assert ("172.18.0.3", ["api2", CID_B[:12]]) in ops.hosts_for(tmp_path, CID_A)
    ops.disconnect(tmp_path, "front", CID_B)
    assert ops.hosts_for(tmp_path, CID_A) == [("172.18.0.2", ["web", "www", CID_A[:12]])]
    assert hosts.render("", "10.0.2.15", []) == hosts.HEADER


def test_guest_nics_and_seed(tmp_path):
    make(tmp_path, "app")
    ops.connect(tmp_path, "app", CID_A, "web")
    nics = ops.guest_nics(tmp_path, CID_A)
    assert nics == [GuestNic("02:42:ac:12:00:02", "172.18.0.2", 16)]
    files = seed_files(GuestSpec(container_id=CID_A, argv=["true"], env=[], nics=nics,
                                 hosts="127.0.0.1\tlocalhost\n"))
    assert files["nics"] == b"02:42:ac:12:00:02\x00172.18.0.2/16\x00"
    assert files["hosts"] == b"127.0.0.1\tlocalhost\n"
    assert "nics" not in seed_files(GuestSpec(container_id=CID_A, argv=["true"], env=[]))
    with pytest.raises(ValueError):
        seed_files(GuestSpec(container_id=CID_A, argv=["true"], env=[],
                             nics=[GuestNic("zz", "172.18.0.2", 16)]))


def test_model_round_trip():
    ep = Endpoint(CID_A, "web", "1" * 64, "2" * 64, "02:42:ac:12:00:02", "172.18.0.2", 16,
                  ["www"], "hvt-aaaaaaaa-0")
    net = Network(id="1" * 64, name="app", subnet="172.18.0.0/16", gateway="172.18.0.1",
                  endpoints={CID_A: ep})
    assert Network.from_dict(json.loads(json.dumps(net.to_dict()))) == net


def test_without_cap_net_admin_a_start_is_refused_clearly(tmp_path, monkeypatch):
    from hv.network import datapath

    monkeypatch.setattr(datapath, "can_admin", lambda: False)
    make(tmp_path, "app")
    ops.connect(tmp_path, "app", CID_A, "web")  # records need no privilege
    with pytest.raises(datapath.DatapathError, match="need CAP_NET_ADMIN") as e:
        ops.prepare_taps(tmp_path, CID_A)
    assert "root" in e.value.hint
    assert ops.sweep(tmp_path) == [] and ops.release(tmp_path, CID_A)[0].ipv4 == "172.18.0.2"


def _connect_one(args):
    root, i = args
    return ops.connect(root, "app", f"{i:02x}" * 32, f"c{i}").ipv4


def test_concurrent_connects_get_distinct_addresses(tmp_path):
    """The store's flock serializes writers across processes: no address given twice, no
    endpoint lost to a lost update."""
    import multiprocessing

    make(tmp_path, "app")
    with multiprocessing.get_context("fork").Pool(6) as pool:
        ips = pool.map(_connect_one, [(tmp_path, i) for i in range(12)])
    assert len(set(ips)) == 12
    assert len(ops.get(tmp_path, "app").endpoints) == 12
