"""Names on user-defined networks: what a container resolves, as /etc/hosts lines.

Docker's embedded DNS answers, on user-defined networks only, each peer's container name,
network aliases and short id with its address on a network both share. hv writes the same
answers into the container's /etc/hosts (seed file `hosts` at boot, the agent's `hosts`
verb when membership changes): every libc and busybox reads /etc/hosts on each lookup, so
a rewrite is seen at once, and other names fall through to resolv.conf (the user-mode NIC's
resolver), as with Docker. docs/networks.md says why not a resolver in the guest.
"""

from __future__ import annotations

import ipaddress

from hv.network.model import Network

HEADER = ("127.0.0.1\tlocalhost\n"
          "::1\tlocalhost ip6-localhost ip6-loopback\n")
NO_NETWORK_ADDRESS = "10.0.2.15"  # the user-mode NIC's address, when on no hv network


def entries(networks: list[Network], container_id: str) -> list[tuple[str, list[str]]]:
    """(ip, names) for every endpoint on a user-defined network the container is on, the
    container itself included (its own name resolves, as with Docker's DNS). Networks in
    the order given (the store's: oldest first); a name an earlier network already gave an
    address is not repeated (the first line wins in /etc/hosts anyway)."""
    out: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for net in networks:
        if not net.user_defined or container_id not in net.endpoints:
            continue
        for ep in sorted((e for e in net.endpoints.values() if e.ipv4),
                         key=lambda e: ipaddress.IPv4Address(e.ipv4)):
            names = [n for n in ep.names() if n not in seen]
            seen.update(names)
            if names:
                out.append((ep.ipv4, names))
    return out


def own_address(networks: list[Network], container_id: str) -> str:
    """The address the container's hostname resolves to: its first hv network's, else
    the user-mode NIC's."""
    for net in networks:
        ep = net.endpoints.get(container_id)
        if ep is not None and ep.ipv4:
            return ep.ipv4
    return NO_NETWORK_ADDRESS


def render(hostname: str, own_ip: str, peers: list[tuple[str, list[str]]]) -> str:
    """The whole /etc/hosts of a container (Docker's layout: localhost lines, its own
    address and hostname, then the peers). Names hold no whitespace (hv checks container
    names and aliases), so one line per address is unambiguous."""
    lines = [HEADER, f"{own_ip}\t{hostname}\n"] if hostname else [HEADER]
    for ip, names in peers:
        lines.append(f"{ip}\t{' '.join(names)}\n")
    return "".join(lines)
