"""A network and a container's endpoint on it, as records and in Docker's inspect shape.

Plain data: no I/O here. `store.py` reads and writes them, `ipam.py` fills in the addresses,
`datapath.py` makes the bridge and taps they name.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from hv.timefmt import rfc3339

SCHEMA_VERSION = 1

BRIDGE = "bridge"  # Docker's default network: addresses, no names
NONE = "none"  # no interface at all (besides the agent's, which the workload will not see)
HOST = "host"  # refused: a VM has no host network namespace to share
PREDEFINED = (BRIDGE, NONE)

BRIDGE_PREFIX = "hvbr-"  # + 8 hex of the network id: 13 characters
TAP_PREFIX = "hvt-"  # + 8 hex of the container id + "-" + NIC number: <= 15 characters
IFNAMSIZ = 15  # Linux interface names: 15 characters + NUL


def bridge_name(network_id: str) -> str:
    """The Linux bridge of a network: says it is hv's and which network it carries."""
    return f"{BRIDGE_PREFIX}{network_id[:8]}"


def tap_name(container_id: str, n: int) -> str:
    """The tap of a container's n-th hv NIC (n < 100 keeps it within IFNAMSIZ)."""
    name = f"{TAP_PREFIX}{container_id[:8]}-{n}"
    if len(name) > IFNAMSIZ:
        raise ValueError(f"interface name {name} is longer than {IFNAMSIZ} characters")
    return name


@dataclass
class Endpoint:
    """One container's attachment to one network: its NIC (MAC, tap) and its address."""

    container_id: str
    container_name: str  # without Docker's leading "/"
    network_id: str
    endpoint_id: str  # 64 hex, as Docker's EndpointID
    mac: str = ""  # "" on `none`
    ipv4: str = ""  # "a.b.c.d", "" on `none`
    prefix: int = 0
    aliases: list[str] = field(default_factory=list)
    tap: str = ""  # "" on `none`: no NIC
    requested_ip: str = ""  # --ip, as given (Docker shows it as IPAMConfig)

    @property
    def ipv4_cidr(self) -> str:
        return f"{self.ipv4}/{self.prefix}" if self.ipv4 else ""

    def names(self) -> list[str]:
        """What peers on a user-defined network resolve to this endpoint (Docker's DNSNames:
        the container name, its aliases, its short id), without duplicates, in that order."""
        out: list[str] = []
        for n in [self.container_name, *self.aliases, self.container_id[:12]]:
            if n and n not in out:
                out.append(n)
        return out

    def to_dict(self) -> dict:
        return {"container_id": self.container_id, "container_name": self.container_name,
                "network_id": self.network_id, "endpoint_id": self.endpoint_id,
                "mac": self.mac, "ipv4": self.ipv4, "prefix": self.prefix,
                "aliases": list(self.aliases), "tap": self.tap,
                "requested_ip": self.requested_ip}

    @classmethod
    def from_dict(cls, d: dict) -> Endpoint:
        return cls(container_id=d["container_id"], container_name=d.get("container_name", ""),
                   network_id=d["network_id"], endpoint_id=d.get("endpoint_id", ""),
                   mac=d.get("mac", ""), ipv4=d.get("ipv4", ""), prefix=int(d.get("prefix", 0)),
                   aliases=list(d.get("aliases", [])), tap=d.get("tap", ""),
                   requested_ip=d.get("requested_ip", ""))

    def to_container_inspect(self, net: Network) -> dict:
        """`docker inspect CONTAINER`'s NetworkSettings.Networks[net.name] (moby's
        EndpointSettings). DNSNames only on user-defined networks, as Docker."""
        return {
            "IPAMConfig": {"IPv4Address": self.requested_ip} if self.requested_ip else None,
            "Links": None,
            "Aliases": list(self.aliases) or None,
            "MacAddress": self.mac,
            "DriverOpts": None,
            "GwPriority": 0,
            "NetworkID": net.id,
            "EndpointID": self.endpoint_id,
            "Gateway": net.gateway if self.ipv4 else "",
            "IPAddress": self.ipv4,
            "IPPrefixLen": self.prefix,
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "DNSNames": self.names() if net.user_defined else None,
        }


@dataclass
class Network:
    """A network record. `subnet`/`gateway` are "" for `none` (no IPAM config)."""

    id: str  # 64 hex
    name: str
    driver: str = "bridge"  # "bridge" | "null" (the predefined `none`)
    subnet: str = ""  # "172.18.0.0/16"
    gateway: str = ""  # "172.18.0.1": reserved, held by nobody (the host has no address)
    internal: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    user_subnet: bool = False  # --subnet was given (Docker allows --ip only then)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)  # by container id

    @property
    def predefined(self) -> bool:
        return self.name in PREDEFINED

    @property
    def user_defined(self) -> bool:
        """Docker's rule: names resolve only on user-defined networks."""
        return not self.predefined

    @property
    def bridge(self) -> str:
        return bridge_name(self.id) if self.driver == "bridge" else ""

    @property
    def prefix(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen if self.subnet else 0

    def to_dict(self) -> dict:
        return {"version": SCHEMA_VERSION, "id": self.id, "name": self.name,
                "driver": self.driver, "subnet": self.subnet, "gateway": self.gateway,
                "internal": self.internal, "labels": dict(self.labels),
                "options": dict(self.options), "created": self.created,
                "user_subnet": self.user_subnet,
                "endpoints": {cid: ep.to_dict() for cid, ep in sorted(self.endpoints.items())}}

    @classmethod
    def from_dict(cls, d: dict) -> Network:
        return cls(id=d["id"], name=d["name"], driver=d.get("driver", "bridge"),
                   subnet=d.get("subnet", ""), gateway=d.get("gateway", ""),
                   internal=bool(d.get("internal", False)), labels=dict(d.get("labels") or {}),
                   options=dict(d.get("options") or {}), created=float(d.get("created", 0)),
                   user_subnet=bool(d.get("user_subnet", False)),
                   endpoints={cid: Endpoint.from_dict(e)
                              for cid, e in (d.get("endpoints") or {}).items()})

    def to_inspect(self) -> dict:
        """`docker network inspect`'s object (moby api/swagger.yaml `Network`)."""
        config = [{"Subnet": self.subnet, "Gateway": self.gateway}] if self.subnet else []
        return {
            "Name": self.name,
            "Id": self.id,
            "Created": rfc3339(self.created),
            "Scope": "local",
            "Driver": self.driver,
            "EnableIPv4": self.driver != "null",
            "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": {}, "Config": config},
            "Internal": self.internal,
            "Attachable": False,
            "Ingress": False,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": False,
            "Containers": {
                cid: {"Name": ep.container_name, "EndpointID": ep.endpoint_id,
                      "MacAddress": ep.mac, "IPv4Address": ep.ipv4_cidr, "IPv6Address": ""}
                for cid, ep in sorted(self.endpoints.items())},
            "Options": dict(self.options),
            "Labels": dict(self.labels),
        }
