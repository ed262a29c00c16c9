"""Published ports (`-p [IP:][HOSTPORT:]CONTAINERPORT[/PROTO]`, `-P`), as Docker shows them."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass

from hv.errors import UsageError

_SPEC = re.compile(
    r"^(?:(?:(?P<ip>\[[0-9a-fA-F:]+\]|[0-9.]+):)?(?P<host>\d*)?:)?(?P<port>\d+)(?:/(?P<proto>\w+))?$")


@dataclass(frozen=True)
class PortSpec:
    container_port: int
    proto: str = "tcp"
    host_ip: str = "0.0.0.0"
    host_port: int = 0  # 0 = any free port

    def to_dict(self) -> dict:
        return asdict(self)


def _port(text: str, spec: str) -> int:
    n = int(text)
    if not 1 <= n <= 65535:
        raise UsageError(f"invalid port {text} in {spec!r}", hint="ports are 1-65535")
    return n


def parse(spec: str) -> PortSpec:
    m = _SPEC.match(spec.strip())
    if not m:
        raise UsageError(f"invalid port format: {spec!r}",
                         hint="use -p [IP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp]")
    proto = (m.group("proto") or "tcp").lower()
    if proto not in ("tcp", "udp"):
        raise UsageError(f"invalid proto: {proto}", hint="use /tcp or /udp")
    ip = (m.group("ip") or "0.0.0.0").strip("[]")
    try:
        if ipaddress.ip_address(ip).version != 4:
            raise UsageError(f"IPv6 host addresses are not supported yet: {ip}",
                             hint="publish on an IPv4 address, e.g. -p 127.0.0.1:8080:80")
    except ValueError:
        raise UsageError(f"invalid IP address: {ip}", hint="use an IPv4 address") from None
    host = m.group("host")
    return PortSpec(_port(m.group("port"), spec), proto, ip, _port(host, spec) if host else 0)


def exposed(image_config: dict) -> list[PortSpec]:
    """`-P`: every port the image EXPOSEs, on any free host port."""
    out = []
    for key in sorted(image_config.get("ExposedPorts") or {}):
        port, _, proto = key.partition("/")
        out.append(PortSpec(int(port), (proto or "tcp").lower()))
    return out


def format_ps(bound: list[dict]) -> str:
    """Docker's PORTS column: `0.0.0.0:8080->80/tcp, 127.0.0.1:5353->53/udp`."""
    return ", ".join(f"{b['host_ip']}:{b['host_port']}->{b['container_port']}/{b['proto']}"
                     for b in bound)
