"""The host side of a network: one Linux bridge per network, one tap per container NIC.

Made with pyroute2 (netlink; no `ip` subprocess). Safe by construction — the host takes no
part in the segment:
- no address on any bridge or tap, IPv6 disabled on each before it comes up (so not even a
  link-local address), IFF_NOARP on the bridge and `arp_ignore=8` (never answer ARP there);
- `rp_filter=1` and `forwarding=0` per device: a packet a guest addresses to one of the
  host's own addresses, or to a host network, is dropped at the bridge (no route leads back
  to the segment, and the bridge never forwards at the IP layer, whatever `ip_forward` says);
- nothing else is touched: no route, no NAT rule, no global sysctl.
Two networks are two bridges, never linked: isolation is L2 separation.

Bridge netfilter (br_netfilter, when loaded with `bridge-nf-call-iptables=1`, as Docker
leaves it) passes frames bridged between two taps through the host's iptables FORWARD chain.
A bridge cannot opt out (the kernel ORs the global switch with the per-bridge one), and the
global switch belongs to whoever loaded the module, so hv leaves it alone and says so
(`netfilter_warning`); docs/networks.md has the rule an administrator may add.

Ownership: each link's alias (IFLA_IFALIAS) is `hv <state root>`, so `hv_links(owner)` and
the sweep built on it see only their own state root's links: two hv roots (two users, a
test suite next to a real one) never remove each other's.

Every function opens its own netlink socket: no state kept between calls. pyroute2 is
imported only by the functions that change links or read addresses and routes (importing it
costs ~0.2-0.3 s here: its package imports every netlink family it has); the look-ups that
every sweep and release make (`hv_links`, `bridge_ports`, whether a link exists) read sysfs,
so a command with nothing to make or remove never pays for it.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from hv.errors import HvError
from hv.network.model import BRIDGE_PREFIX, IFNAMSIZ, TAP_PREFIX

IFF_NOARP = 0x80
CAP_NET_ADMIN = 12
PROC_SYS = Path("/proc/sys/net")
SYS_NET = Path("/sys/class/net")

# per-device sysctls written before a link comes up
IPV4_CONF = {"rp_filter": "1", "arp_ignore": "8", "forwarding": "0",
             "accept_source_route": "0", "accept_redirects": "0", "send_redirects": "0"}


class DatapathError(HvError):
    hint = "run hv as root (container networks need CAP_NET_ADMIN), and see --debug"


def owner_tag(root: Path) -> str:
    """The alias hv puts on the links of state root `root`."""
    return f"hv {Path(root).resolve()}"


def is_hv_link(name: str) -> bool:
    return name.startswith((BRIDGE_PREFIX, TAP_PREFIX))


def can_admin() -> bool:
    """CAP_NET_ADMIN in the effective set (root has it; so may a capable non-root hv)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def require_admin() -> None:
    if not can_admin():
        raise DatapathError(
            "container networks need CAP_NET_ADMIN: hv makes a bridge and taps on the host",
            hint="run hv as root, or use the default user-mode networking (no --network)")


def _sysctl(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except FileNotFoundError:
        pass  # the kernel has no IPv6 (nothing to disable) or lacks that knob


def _seal(name: str) -> None:
    """Before the link comes up: no IPv6 at all, no ARP answers, no IP forwarding."""
    _sysctl(PROC_SYS / "ipv6" / "conf" / name / "disable_ipv6", "1")
    for key, value in IPV4_CONF.items():
        _sysctl(PROC_SYS / "ipv4" / "conf" / name / key, value)


def _check_name(name: str) -> None:
    if not is_hv_link(name) or len(name) > IFNAMSIZ:
        raise ValueError(f"not an hv interface name: {name!r}")


def _iproute():
    """A fresh pyroute2 IPRoute (imported here, see the module's docstring)."""
    from pyroute2 import IPRoute

    return IPRoute()


def _netlink_error() -> type[Exception]:
    from pyroute2.netlink.exceptions import NetlinkError

    return NetlinkError


def exists(name: str) -> bool:
    return (SYS_NET / name).exists()


def _index(ipr, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _flush_addresses(ipr, index: int) -> None:
    """Nobody should have put one there; if someone did, it goes (the segment is not the
    host's)."""
    for msg in ipr.get_addr(index=index):
        ipr.addr("del", index=index, address=msg.get_attr("IFA_ADDRESS"),
                 prefixlen=msg["prefixlen"])


def _fail(what: str, err) -> DatapathError:
    if err.code in (errno.EPERM, errno.EACCES):
        return DatapathError(f"{what}: permission denied (CAP_NET_ADMIN needed)")
    return DatapathError(f"{what}: {os.strerror(err.code)}",
                         hint="see 'ip -d link' and run with --debug")


def ensure_bridge(name: str, owner: str) -> None:
    """The bridge `name`, made if missing, sealed and up. Idempotent (a host reboot loses
    the bridges; each container start makes its networks' again)."""
    _check_name(name)
    netlink_error = _netlink_error()
    try:
        with _iproute() as ipr:
            index = _index(ipr, name)
            if index is None:
                ipr.link("add", ifname=name, kind="bridge", br_stp_state=0,
                         br_forward_delay=0, br_mcast_snooping=0, br_nf_call_iptables=0,
                         br_nf_call_ip6tables=0, br_nf_call_arptables=0)
                index = _index(ipr, name)
            _seal(name)
            _flush_addresses(ipr, index)
            ipr.link("set", index=index, flags=IFF_NOARP, change=IFF_NOARP, ifalias=owner)
            ipr.link("set", index=index, state="up")
    except netlink_error as e:
        raise _fail(f"cannot make bridge {name}", e) from e


def ensure_tap(name: str, bridge: str, owner: str) -> None:
    """A persistent tap `name` enslaved to `bridge`, sealed and up: libvirt opens it
    (`<interface type='ethernet'>`, `managed='no'`) and hands QEMU the fd. vnet_hdr on, as
    libvirt asks for it. Idempotent; a tap found on another bridge is moved."""
    _check_name(name)
    netlink_error = _netlink_error()
    try:
        with _iproute() as ipr:
            master = _index(ipr, bridge)
            if master is None:
                raise DatapathError(f"bridge {bridge} does not exist")
            index = _index(ipr, name)
            if index is None:
                ipr.link("add", ifname=name, kind="tuntap", mode="tap",
                         ifr={"no_pi": 1, "vnet_hdr": 1, "persist": 1})
                index = _index(ipr, name)
            _seal(name)
            _flush_addresses(ipr, index)
            ipr.link("set", index=index, master=master, ifalias=owner)
            ipr.link("set", index=index, state="up")
    except netlink_error as e:
        raise _fail(f"cannot make tap {name}", e) from e


def delete_links(names: Iterable[str]) -> list[str]:
    """Delete hv links by name (taps before bridges is the caller's order); missing ones
    are fine. Returns the names actually deleted."""
    names = list(names)
    for name in names:
        _check_name(name)
    names = [n for n in names if exists(n)]
    if not names:
        return []  # the common case (a stopped container's taps): no netlink at all
    netlink_error = _netlink_error()
    gone = []
    with _iproute() as ipr:
        for name in names:
            index = _index(ipr, name)
            if index is None:
                continue
            try:
                ipr.link("del", index=index)
                gone.append(name)
            except netlink_error as e:
                if e.code != errno.ENODEV:
                    raise _fail(f"cannot remove {name}", e) from e
    return gone


def hv_links(owner: str | None = None) -> dict[str, str]:
    """hv's links on the host (of one state root when `owner` is given, see `owner_tag`):
    name -> kind ("bridge", "tun", ""). From sysfs: no netlink needed to look."""
    out = {}
    try:
        names = os.listdir(SYS_NET)
    except OSError:
        return {}
    for name in names:
        if not is_hv_link(name):
            continue
        d = SYS_NET / name
        try:
            alias = (d / "ifalias").read_text().rstrip("\n")
        except OSError:
            continue  # gone meanwhile
        if owner is not None and alias != owner:
            continue
        out[name] = "bridge" if (d / "bridge").is_dir() else (
            "tun" if (d / "tun_flags").exists() else "")
    return out


def bridge_ports(bridge: str) -> list[str]:
    try:
        return sorted(os.listdir(SYS_NET / bridge / "brif"))
    except OSError:
        return []


def hv_addresses() -> list[tuple[str, str]]:
    """Every address (IPv4 and IPv6, link-local included) on an hv link: must be empty."""
    out = []
    with _iproute() as ipr:
        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}
        for msg in ipr.get_addr():
            name = names.get(msg["index"], "")
            if is_hv_link(name):
                out.append((name, f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"))
    return out


def host_subnets() -> list[ipaddress.IPv4Network]:
    """The host's IPv4 networks, from its addresses and its routes (all tables), which a
    new hv network must not overlap. Default routes are left out (they are not networks)."""
    out: set[ipaddress.IPv4Network] = set()
    with _iproute() as ipr:
        for msg in ipr.get_addr(family=2):
            addr = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            if addr:
                out.add(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}").network)
        for msg in ipr.get_routes(family=2, table=0):
            dst, plen = msg.get_attr("RTA_DST"), msg["dst_len"]
            if dst and plen > 0:
                out.add(ipaddress.ip_network(f"{dst}/{plen}", strict=False))
    return sorted(out)


def netfilter_warning() -> str:
    """A line for the user when br_netfilter sends bridged frames through iptables ('' when
    it does not): a FORWARD policy of DROP (Docker sets one) then drops VM-to-VM traffic."""
    try:
        on = (PROC_SYS / "bridge" / "bridge-nf-call-iptables").read_text().strip() == "1"
    except OSError:
        return ""
    if not on:
        return ""
    return ("br_netfilter is loaded with bridge-nf-call-iptables=1: traffic between "
            "containers on an hv network passes the host's iptables FORWARD chain "
            "(see docs/networks.md)")
