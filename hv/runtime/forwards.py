"""Host port forwards into a running guest (QEMU user networking, HMP `hostfwd_add`).

libvirt 9.0 has no port forwarding for SLIRP interfaces, so forwards are added to the
running QEMU through its monitor (the domain is then marked "tainted"; that is expected).
Asking for host port 0 lets the kernel pick a free port atomically; `info usernet` tells
which one it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hv.errors import Conflict, RuntimeFailure
from hv.runtime.connection import Libvirt, attempt, first_line, lookup

NETDEV = "hostnet0"  # libvirt's id for the first <interface>: the workload's user-mode NIC


@dataclass(frozen=True)
class Forward:
    proto: str  # tcp | udp
    host_ip: str
    host_port: int  # 0 = any free port
    guest_port: int
    netdev: str = NETDEV  # which user-mode NIC (QEMU netdev id)


def agent_forward() -> Forward:
    """The agent's SSH, on its own restricted NIC (hv.runtime.domain.UserNetwork)."""
    from hv.runtime.domain import AGENT_NETDEV

    return Forward("tcp", "127.0.0.1", 0, 22, AGENT_NETDEV)


def _hmp(dom, command: str) -> str:
    import libvirt_qemu

    return libvirt_qemu.qemuMonitorCommand(
        dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)


_ROW = re.compile(r"^\s*(TCP|UDP)\[HOST_FORWARD\]\s+\d+\s+(\S*)\s+(\d+)\s+\S+\s+(\d+)", re.M)


def parse_usernet(text: str) -> list[Forward]:
    """Rows of `info usernet` that are host forwards."""
    return [Forward(m.group(1).lower(), _ip(m.group(2)), int(m.group(3)),
                    int(m.group(4)), netdev) for netdev, body in _sections(text)
            for m in _ROW.finditer(body)]


_HUB = re.compile(r"^Hub -?\d+ \((\S+)\):", re.M)


def _sections(text: str) -> list[tuple[str, str]]:
    """`info usernet` per netdev: its `Hub N (ID):` header, then its table."""
    heads = list(_HUB.finditer(text))
    if not heads:
        return [(NETDEV, text)]
    return [(h.group(1), text[h.end():nxt.start() if nxt else len(text)])
            for h, nxt in zip(heads, [*heads[1:], None], strict=True)]


def _add(conn, name: str, forwards: list[Forward]) -> list[Forward]:
    dom = lookup(conn, name)
    if dom is None:
        raise RuntimeFailure(f"cannot find the VM {name}", hint="see 'hv ps -a'")
    return add_on(dom, forwards)


def add_on(dom, forwards: list[Forward], fresh: bool = False) -> list[Forward]:
    """Add forwards to a running domain object (inside a libvirt call).

    Each forward is found as the one row `info usernet` gained; `fresh`: the domain was
    just started, so there is no row yet to list first (one monitor command less).
    """
    done: list[Forward] = []
    before = set() if fresh or not forwards else set(parse_usernet(_hmp(dom, "info usernet")))
    for fw in forwards:
        spec = f"{fw.proto}:{fw.host_ip}:{fw.host_port}-:{fw.guest_port}"
        out = attempt(lambda s=spec, n=fw.netdev: _hmp(dom, f"hostfwd_add {n} {s}"),
                      doing=f"cannot forward {spec}")
        if out.strip():
            where = f"{fw.host_ip}:{fw.host_port}"
            raise Conflict(
                f"Bind for {where} failed: port is already allocated ({first_line(out)})",
                hint="choose another host port with -p HOSTPORT:CONTAINERPORT")
        after = set(parse_usernet(_hmp(dom, "info usernet")))
        new = [f for f in after - before if f.proto == fw.proto and f.guest_port == fw.guest_port
               and f.netdev == fw.netdev]
        before = after
        if not new:
            raise RuntimeFailure(f"QEMU did not report the forward {spec}")
        done.append(new[0])
    return done


def add(lv: Libvirt, name: str, forwards: list[Forward]) -> list[Forward]:
    """Add forwards to the running domain; returns them with the host ports bound."""
    return lv.call(_add, name, forwards) if forwards else []


def _ip(text: str) -> str:
    return "0.0.0.0" if text in ("", "*") else text
