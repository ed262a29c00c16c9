"""Addresses: which subnet a new network gets, which address and MAC an endpoint gets.

Pure functions over what is already taken (the caller reads the store and the host's routes
and passes them in), so every rule here is unit-tested without a network or root.

Pools are Docker's defaults (libnetwork `ipamutils`): 172.17.0.0/16 is the default `bridge`,
user networks take the next free /16 of 172.18-172.31, then a /20 of 192.168.0.0/16. A pool
is skipped when it overlaps an hv network or any address or route of the host: a container
must never be given a segment that shadows a network the host can reach, even though the
host has no address on hv's segments (a peer on the segment could otherwise be confused
with a real host of that network inside the guest).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv4Network

from hv.errors import Conflict, UsageError

DEFAULT_BRIDGE_SUBNET = "172.17.0.0/16"
DEFAULT_BRIDGE_GATEWAY = "172.17.0.1"
# (base, prefix of each subnet cut from it), in Docker's order
DEFAULT_POOLS: tuple[tuple[str, int], ...] = (
    ("172.17.0.0/16", 16), ("172.18.0.0/16", 16), ("172.19.0.0/16", 16),
    ("172.20.0.0/14", 16), ("172.24.0.0/14", 16), ("172.28.0.0/14", 16),
    ("192.168.0.0/16", 20),
)

OVERLAP = "Pool overlaps with other one on this address space"


class AddressInUse(Conflict):
    hint = "pick another --ip, or leave --ip out and let hv choose one"


class PoolExhausted(Conflict):
    hint = "remove unused networks with 'hv network prune', or give --subnet"


def candidate_subnets() -> Iterator[IPv4Network]:
    for base, prefix in DEFAULT_POOLS:
        yield from IPv4Network(base).subnets(new_prefix=prefix)


def _overlaps(net: IPv4Network, taken: Iterable[IPv4Network]) -> bool:
    return any(net.overlaps(t) for t in taken)


def pick_subnet(used: Iterable[IPv4Network], host: Iterable[IPv4Network]) -> IPv4Network:
    """The first default pool subnet that overlaps neither an hv network nor the host's
    addresses and routes (a default route, 0.0.0.0/0, is not a network and is ignored)."""
    taken = list(used) + [h for h in host if h.prefixlen > 0]
    for net in candidate_subnets():
        if not _overlaps(net, taken):
            return net
    raise PoolExhausted("could not find an available, non-overlapping IPv4 address pool "
                        "among the defaults to assign to the network")


def parse_subnet(text: str) -> IPv4Network:
    """--subnet: an IPv4 CIDR with no host bits set, between /8 and /30."""
    try:
        iface = ipaddress.ip_interface(text.strip()) if "/" in text else None
    except ValueError:
        iface = None
    if iface is None:
        raise UsageError(f"invalid subnet {text}: invalid CIDR address: {text}",
                         hint="give --subnet as an IPv4 CIDR, such as 172.30.0.0/16")
    if iface.version != 4:
        raise UsageError(f"invalid subnet {text}: only IPv4 subnets are supported",
                         hint="hv's networks carry IPv4 only (EnableIPv6 is false)")
    net = iface.network
    if iface.ip != net.network_address:
        raise UsageError(f"invalid subnet {text}: it should be {net}",
                         hint=f"use --subnet {net}")
    if not 8 <= net.prefixlen <= 30:
        raise UsageError(f"invalid subnet {text}: the prefix length must be between 8 and 30",
                         hint="a segment needs room for its gateway and at least two containers")
    return net


def parse_ip(text: str, what: str = "IP address") -> IPv4Address:
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        raise UsageError(f"invalid {what}: {text}",
                         hint="give an IPv4 address such as 172.30.0.10") from None
    if addr.version != 4:
        raise UsageError(f"invalid {what}: {text}: only IPv4 is supported",
                         hint="hv's networks carry IPv4 only")
    return addr


def check_user_subnet(subnet: IPv4Network, used: Iterable[IPv4Network],
                      host: Iterable[IPv4Network]) -> None:
    """A --subnet may overlap neither another hv network nor the host's own networks."""
    if _overlaps(subnet, used):
        raise Conflict(OVERLAP, hint="list the subnets in use with 'hv network inspect', "
                                     "and pick one that does not overlap them")
    clash = [str(h) for h in host if h.prefixlen > 0 and subnet.overlaps(h)]
    if clash:
        raise Conflict(f"{OVERLAP} (the host's {clash[0]})",
                       hint="pick a subnet that none of the host's networks uses")


def gateway_for(subnet: IPv4Network, gateway: str | None) -> IPv4Address:
    """--gateway, checked to be a host address of the subnet; else the subnet's first."""
    if not gateway:
        return next(subnet.hosts())
    gw = parse_ip(gateway, "gateway")
    if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
        raise UsageError(f"invalid gateway {gateway}: it is not a host address of subnet "
                         f"{subnet}", hint="give a --gateway inside --subnet")
    return gw


def allocate(subnet: IPv4Network, gateway: IPv4Address, held: Iterable[str],
             wanted: str | None = None) -> IPv4Address:
    """An endpoint's address: `wanted` (--ip) after checks, else the lowest free one. The
    gateway address stays reserved although nobody holds it (the host has no address on
    hv's segments), as in Docker."""
    taken = {IPv4Address(h) for h in held if h} | {gateway}
    if wanted:
        ip = parse_ip(wanted)
        if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
            raise UsageError(f"Invalid address {wanted}: It does not belong to any of this "
                             f"network's subnets", hint=f"give an --ip inside {subnet}")
        if ip in taken:
            raise AddressInUse("Address already in use")
        return ip
    for ip in subnet.hosts():
        if ip not in taken:
            return ip
    raise PoolExhausted("No available addresses on this pool",
                        hint=f"every address of {subnet} is taken; disconnect a container "
                             "or use a network with a larger subnet")


def mac_for(ip: IPv4Address) -> str:
    """Docker's MAC for an IPv4 endpoint: 02:42 (locally administered) + the four bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ip.packed)
