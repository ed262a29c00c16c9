"""What the engine calls: networks and endpoints as records, taps and bridges as devices.

Records change only under the store's lock; devices are made at container start
(`prepare_taps`, idempotent: a host reboot loses them) and removed with their last user
(`teardown_taps` after a stop, `disconnect`, `release` at rm, `sweep` for what a killed
QEMU or hv left). `connect` of a stopped container writes a record only: nothing is made on
the host until the container starts.

Every function takes the state root; nothing reads hv.paths or the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from hv.errors import Conflict, UsageError
from hv.guest.seed import GuestNic
from hv.network import datapath, hosts, ipam, store
from hv.network.model import NONE, Endpoint, Network, bridge_name, tap_name
from hv.runtime.domain import EthernetInterface

HostSubnets = Callable[[], Iterable[ipaddress.IPv4Network]]
ALIAS_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
MAX_NICS = 100  # tap_name's limit (15 characters)


# --- networks --------------------------------------------------------------------------------


def create(root: Path, name: str, *, driver: str = "bridge", subnet: str | None = None,
           gateway: str | None = None, internal: bool = False,
           labels: dict[str, str] | None = None, options: dict[str, str] | None = None,
           host_subnets: HostSubnets = datapath.host_subnets) -> Network:
    """`network create`: a record only (the bridge comes with the first container that
    starts on it), so a failure here leaves nothing on the host."""
    store.check_name(name)
    if driver != "bridge":
        raise UsageError(f"plugin \"{driver}\" not found",
                         hint="hv's only network driver is 'bridge'", exit_code=1)
    if gateway and not subnet:
        raise UsageError("invalid network config: gateway without a subnet",
                         hint="give --subnet with --gateway", exit_code=1)
    user_net = ipam.parse_subnet(subnet) if subnet else None
    gw = ipam.gateway_for(user_net, gateway) if user_net else None
    host = list(host_subnets())
    with store.locked(root):
        nets = store.read_locked(root)
        used = [ipaddress.IPv4Network(n.subnet) for n in nets if n.subnet]
        if user_net is not None:
            ipam.check_user_subnet(user_net, used, host)
            net_subnet = user_net
        else:
            net_subnet = ipam.pick_subnet(used, host)
            gw = next(net_subnet.hosts())
        net = Network(id=store.new_id({n.id for n in nets}), name=name, driver=driver,
                      subnet=str(net_subnet), gateway=str(gw), internal=internal,
                      labels=dict(labels or {}), options=dict(options or {}),
                      created=time.time(), user_subnet=user_net is not None)
        store.add(root, net)
    return net


def get(root: Path, ref: str) -> Network:
    """By full id, name or unique id prefix (Docker's order); NetworkNotFound otherwise."""
    return store.get(root, ref)


def list_networks(root: Path) -> list[Network]:
    return store.all_networks(root)


def inspect(root: Path, ref: str) -> dict:
    return store.get(root, ref).to_inspect()


def remove(root: Path, ref: str) -> Network:
    """`network rm`: refused while it has endpoints (Docker's message), or predefined."""
    with store.locked(root):
        net = store.find(store.read_locked(root), ref)
        store.remove_checked(root, net)
        _delete_if_idle([net.bridge] if net.bridge else [])
    return net


def prune(root: Path) -> list[str]:
    """`network prune`: the names of the user-defined networks without endpoints, removed."""
    gone: list[Network] = []
    with store.locked(root):
        for net in store.read_locked(root):
            if net.user_defined and not net.endpoints:
                store.delete(root, net.id)
                gone.append(net)
        _delete_if_idle([n.bridge for n in gone if n.bridge])
    return [n.name for n in gone]


# --- endpoints -------------------------------------------------------------------------------


def _check_aliases(aliases: Iterable[str]) -> list[str]:
    out = []
    for a in aliases:
        if not ALIAS_RE.match(a):
            raise UsageError(f"invalid alias {a!r}",
                             hint="an alias is a name such as 'db' or 'db.local'")
        if a not in out:
            out.append(a)
    return out


def _free_tap(nets: list[Network], container_id: str) -> str:
    taken = {ep.tap for n in nets for ep in n.endpoints.values() if ep.tap}
    for n in range(MAX_NICS):
        name = tap_name(container_id, n)
        if name not in taken:
            return name
    raise Conflict(f"container {container_id[:12]} is on too many networks",
                   hint=f"a container can be on at most {MAX_NICS} hv networks")


def connect(root: Path, ref: str, container_id: str, container_name: str,
            aliases: Iterable[str] = (), ip: str | None = None) -> Endpoint:
    """Give a container an endpoint on a network: address, MAC, tap name, aliases. A record
    only: for a running container the engine then calls `prepare_taps` and hot-plugs
    `interface_for(endpoint)`; every peer's /etc/hosts changes (`peers`)."""
    aliases = _check_aliases(aliases)
    with store.locked(root):
        nets = store.read_locked(root)
        net = store.find(nets, ref)
        mine = [n for n in nets if container_id in n.endpoints]
        if container_id in net.endpoints:
            raise Conflict(f"endpoint with name {container_name} already exists in network "
                           f"{net.name}", hint="the container is already connected to it",
                           exit_code=1)
        if net.name == NONE and mine or any(n.name == NONE for n in mine):
            raise Conflict("container cannot be connected to multiple networks with one of "
                           "the networks in private (none) mode",
                           hint="disconnect it from 'none' first, or use another network")
        if not net.user_defined and aliases:
            raise UsageError("network-scoped alias is supported only for containers in user "
                             "defined networks", hint="create a network with 'hv network "
                             "create NAME' and use --network NAME")
        if ip and not net.user_defined:
            raise UsageError("user specified IP address is supported on user defined "
                             "networks only", hint="use --ip with a user-defined network")
        if ip and not net.user_subnet:
            raise UsageError("user specified IP address is supported only when connecting to "
                             "networks with user configured subnets",
                             hint="create the network with --subnet to choose addresses")
        ep = Endpoint(container_id=container_id, container_name=container_name,
                      network_id=net.id, endpoint_id=os.urandom(32).hex(),
                      aliases=aliases, requested_ip=ip or "")
        if net.driver == "bridge":
            subnet = ipaddress.IPv4Network(net.subnet)
            addr = ipam.allocate(subnet, ipaddress.IPv4Address(net.gateway),
                                 [e.ipv4 for e in net.endpoints.values()], ip)
            ep.ipv4, ep.prefix, ep.mac = str(addr), subnet.prefixlen, ipam.mac_for(addr)
            ep.tap = _free_tap(nets, container_id)
        net.endpoints[container_id] = ep
        store.save(root, net)
    return ep


def disconnect(root: Path, ref: str, container_id: str, force: bool = False) -> Endpoint | None:
    """Remove a container's endpoint (its address is free again), its tap and, with its
    last tap, the bridge. Not connected: Docker's error, or None with `force`. The engine
    detaches the NIC from a running domain first (the guest then loses that link)."""
    with store.locked(root):
        net = store.find(store.read_locked(root), ref)
        ep = net.endpoints.pop(container_id, None)
        if ep is None:
            if force:
                return None
            raise UsageError(f"container {container_id[:12]} is not connected to network "
                             f"{net.name}", hint="see 'hv network inspect NETWORK'",
                             exit_code=1)
        store.save(root, net)
        if ep.tap:
            _delete_devices([ep.tap], [net.bridge])
    return ep


def release(root: Path, container_id: str) -> list[Endpoint]:
    """At `rm`: every endpoint of the container goes, with its taps and idle bridges."""
    gone: list[tuple[Network, Endpoint]] = []
    with store.locked(root):
        for net in store.read_locked(root):
            ep = net.endpoints.pop(container_id, None)
            if ep is not None:
                store.save(root, net)
                gone.append((net, ep))
        taps = [ep.tap for _, ep in gone if ep.tap]
        if taps:
            _delete_devices(taps, [n.bridge for n, _ in gone if n.bridge])
    return [ep for _, ep in gone]


def rename(root: Path, container_id: str, new_name: str) -> None:
    """`rename`: peers resolve the new name (the engine then refreshes their hosts)."""
    with store.locked(root):
        for net in store.read_locked(root):
            ep = net.endpoints.get(container_id)
            if ep is not None:
                ep.container_name = new_name
                store.save(root, net)


def endpoints_of(root: Path, container_id: str) -> list[tuple[Network, Endpoint]]:
    """The container's (network, endpoint) pairs, oldest network first."""
    return [(n, n.endpoints[container_id]) for n in store.all_networks(root)
            if container_id in n.endpoints]


# --- devices ---------------------------------------------------------------------------------


def interface_for(ep: Endpoint) -> EthernetInterface:
    return EthernetInterface(tap=ep.tap, mac=ep.mac)


def prepare_taps(root: Path, container_id: str) -> list[EthernetInterface]:
    """Before a boot (or a hot-plug): each of the container's networks' bridge and its
    taps, made if missing (idempotent), and the domain's interfaces for them. Nothing is
    made when the container is on no hv network; CAP_NET_ADMIN is needed otherwise."""
    with store.locked(root):
        pairs = [(n, n.endpoints[container_id]) for n in store.read_locked(root)
                 if container_id in n.endpoints and n.endpoints[container_id].tap]
        if not pairs:
            return []
        datapath.require_admin()
        owner = datapath.owner_tag(root)
        made: list[str] = []
        try:
            for net, ep in pairs:
                datapath.ensure_bridge(net.bridge, owner)
                datapath.ensure_tap(ep.tap, net.bridge, owner)
                made.append(ep.tap)
        except BaseException:
            _delete_devices(made, [n.bridge for n, _ in pairs])
            raise
    return [interface_for(ep) for _, ep in pairs]


def teardown_taps(root: Path, container_id: str) -> list[str]:
    """After a container stopped: its taps go, and each bridge left without a tap. Its
    records stay (a restart makes them again)."""
    pairs = endpoints_of(root, container_id)
    taps = [ep.tap for _, ep in pairs if ep.tap]
    if not taps or not datapath.can_admin():
        return []
    with store.locked(root):
        return _delete_devices(taps, [n.bridge for n, _ in pairs if n.bridge])


def _delete_devices(taps: list[str], bridges: list[str]) -> list[str]:
    """Taps first, then each of `bridges` that has no port left."""
    if not datapath.can_admin():
        return []
    gone = datapath.delete_links(taps)
    return gone + _delete_if_idle(bridges)


def _delete_if_idle(bridges: list[str]) -> list[str]:
    if not bridges or not datapath.can_admin():
        return []
    links = datapath.hv_links()
    idle = [b for b in dict.fromkeys(bridges) if b in links and not datapath.bridge_ports(b)]
    return datapath.delete_links(idle)


def sweep(root: Path, running: Collection[str] | None = None) -> list[str]:
    """Remove hv links nobody needs: any hv bridge or tap no record names (a network or
    container removed while hv was killed), every bridge without a port, and — when the
    engine passes `running` (the containers whose domains are active or starting) — the
    taps of every other container (a killed QEMU). Returns the names removed."""
    if not datapath.can_admin():
        return []
    with store.locked(root):
        nets = store.read_locked(root)
        wanted_taps = {ep.tap for n in nets for cid, ep in n.endpoints.items()
                       if ep.tap and (running is None or cid in running)}
        wanted_bridges = {n.bridge for n in nets if n.bridge}
        links = datapath.hv_links(datapath.owner_tag(root))
        stale_taps = [t for t, kind in links.items()
                      if kind != "bridge" and t not in wanted_taps]
        gone = datapath.delete_links(stale_taps)
        bridges = [b for b, kind in links.items() if kind == "bridge"]
        gone += datapath.delete_links([b for b in bridges if b not in wanted_bridges])
        gone += _delete_if_idle([b for b in bridges if b in wanted_bridges])
    return gone


# --- what the guest needs --------------------------------------------------------------------


def guest_nics(root: Path, container_id: str) -> list[GuestNic]:
    """The seed's `nics`: each hv NIC's MAC and static address."""
    return [GuestNic(mac=ep.mac, address=ep.ipv4, prefix=ep.prefix)
            for _, ep in endpoints_of(root, container_id) if ep.tap]


def hosts_for(root: Path, container_id: str) -> list[tuple[str, list[str]]]:
    """(ip, names) the container resolves: peers on its user-defined networks."""
    return hosts.entries(store.all_networks(root), container_id)


def hosts_file(root: Path, container_id: str, hostname: str) -> str:
    """The container's whole /etc/hosts (seed `hosts`, and the agent's `hosts` verb)."""
    nets = store.all_networks(root)
    return hosts.render(hostname, hosts.own_address(nets, container_id),
                        hosts.entries(nets, container_id))


def peers(root: Path, container_id: str) -> set[str]:
    """Containers whose /etc/hosts changes when this one joins, leaves or is renamed:
    those sharing a user-defined network with it (itself included)."""
    return {cid for n in store.all_networks(root)
            if n.user_defined and container_id in n.endpoints for cid in n.endpoints}


def outbound_allowed(root: Path, container_id: str) -> bool:
    """Docker: a container only on `--internal` networks (or on `none`) has no way out;
    one on any other network (or on none at all: hv's default) keeps the user-mode NIC's
    outbound access."""
    nets = [n for n, _ in endpoints_of(root, container_id)]
    if not nets:
        return True
    return any(not n.internal and n.name != NONE for n in nets)


__all__ = ["bridge_name", "connect", "create", "disconnect", "endpoints_of", "get",
           "guest_nics", "hosts_file", "hosts_for", "inspect", "interface_for",
           "list_networks", "outbound_allowed", "peers", "prepare_taps", "prune", "release",
           "remove", "rename", "sweep", "teardown_taps"]
