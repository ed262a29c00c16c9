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

The hot path: the default network puts every container on `bridge`, so each `run` makes a
tap and its `--rm` removes it. Importing pyroute2 costs ~0.25 s in a fresh process (its
package imports every netlink family it has), so making, sealing, enslaving, raising and
deleting bridges and taps use the kernel's older interfaces instead: the tun ioctls
(TUNSETIFF, TUNSETPERSIST), the bridge ioctls (SIOCBRADDBR/DELBR/ADDIF/DELIF),
SIOCGIFFLAGS/SIOCSIFFLAGS, and sysfs/procfs for options, aliases and sysctls. pyroute2 stays
for what is rare or needs netlink's dumps: taking off an address someone else put on an hv
link, listing every address (`hv_addresses`) and the host's subnets (`network create`).
Look-ups (`hv_links`, `bridge_ports`, whether a link exists) read sysfs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import struct
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


def ensure_bridge(name: str, owner: str) -> None:
    """The bridge `name`, made if missing, sealed and up. Idempotent (a host reboot loses
    the bridges; each container start makes its networks' again). Kernel ioctls and sysfs,
    no netlink library (see "The hot path" in the module docstring)."""
    _check_name(name)
    try:
        with _ioctl_socket() as sock:
            if not exists(name):
                try:
                    fcntl.ioctl(sock, SIOCBRADDBR, _ifname(name))
                except FileExistsError:
                    pass  # a concurrent start made it
            _seal(name)
            for opt, value in BRIDGE_OPTS.items():
                _sysctl(SYS_NET / name / "bridge" / opt, value)
            _set_alias(name, owner)
            _flush_ipv4(sock, name)
            _set_flags(sock, name, IFF_NOARP | IFF_UP)
    except OSError as e:
        raise _fail_os(f"cannot make bridge {name}", e) from e


def ensure_tap(name: str, bridge: str, owner: str) -> None:
    """A persistent tap `name` enslaved to `bridge`, sealed and up: libvirt opens it
    (`<interface type='ethernet'>`, `managed='no'`) and hands QEMU the fd. vnet_hdr on, as
    libvirt asks for it. Idempotent; a tap found on another bridge is moved. The tun ioctls
    (TUNSETIFF, TUNSETPERSIST), SIOCBRADDIF and SIOCSIFFLAGS: ~1 ms, where importing
    pyroute2 alone costs ~0.25 s on every `run`."""
    _check_name(name)
    if not exists(bridge):
        raise DatapathError(f"bridge {bridge} does not exist")
    try:
        if not exists(name):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, TUNSETIFF, _ifreq_flags(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
                fcntl.ioctl(fd, TUNSETPERSIST, 1)
            finally:
                os.close(fd)
        _seal(name)  # before it comes up: no IPv6 link-local address ever
        _set_alias(name, owner)
        with _ioctl_socket() as sock:
            _flush_ipv4(sock, name)
            master = _master(name)
            if master != bridge:
                if master is not None:
                    fcntl.ioctl(sock, SIOCBRDELIF, _ifreq_index(master, _ifindex(name)))
                fcntl.ioctl(sock, SIOCBRADDIF, _ifreq_index(bridge, _ifindex(name)))
            _set_flags(sock, name, IFF_UP)
    except OSError as e:
        raise _fail_os(f"cannot make tap {name}", e) from e


def delete_links(names: Iterable[str]) -> list[str]:
    """Delete hv links by name (taps before bridges is the caller's order); missing ones
    are fine. Returns the names actually deleted. A tap: TUNSETIFF on it, TUNSETPERSIST 0,
    close (the kernel deletes it with its last fd; EBUSY while a QEMU still holds it). A
    bridge: down, then SIOCBRDELBR. No netlink library either way."""
    names = list(names)
    for name in names:
        _check_name(name)
    names = [n for n in names if exists(n)]
    if not names:
        return []  # the common case (a stopped container's taps): nothing to do
    gone = []
    with _ioctl_socket() as sock:
        for name in names:
            try:
                if (SYS_NET / name / "tun_flags").exists():
                    _delete_tap(name)
                else:
                    with contextlib.suppress(OSError):
                        _set_flags(sock, name, 0, IFF_UP)
                    fcntl.ioctl(sock, SIOCBRDELBR, _ifname(name))
                gone.append(name)
            except OSError as e:
                if e.errno in (errno.ENODEV, errno.ENXIO) or not exists(name):
                    continue
                raise _fail_os(f"cannot remove {name}", e) from e
    return gone


# --- kernel ioctls (linux/if_tun.h, linux/sockios.h, linux/if.h) ------------------------------

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_UP = 0x1
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCGIFADDR, SIOCSIFADDR = 0x8913, 0x8914, 0x8915, 0x8916
SIOCBRADDBR, SIOCBRDELBR, SIOCBRADDIF, SIOCBRDELIF = 0x89A0, 0x89A1, 0x89A2, 0x89A3
IFREQ = 40  # struct ifreq: 16 bytes of name, a 24-byte union
# sysfs bridge options, written while it is down: no STP, no delay before forwarding, no
# snooping, and never ask br_netfilter for iptables (see the module docstring)
BRIDGE_OPTS = {"stp_state": "0", "forward_delay": "0", "multicast_snooping": "0",
               "nf_call_iptables": "0", "nf_call_ip6tables": "0", "nf_call_arptables": "0"}


def _ifname(name: str) -> bytes:
    return name.encode().ljust(IFNAMSIZ + 1, b"\0")


def _ifreq_flags(name: str, flags: int) -> bytes:
    return struct.pack("16sH22x", name.encode(), flags)


def _ifreq_index(name: str, index: int) -> bytes:
    return struct.pack("16si20x", name.encode(), index)


@contextlib.contextmanager
def _ioctl_socket():
    import socket  # ~4 ms; only where a link is made or removed

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        yield sock
    finally:
        sock.close()


def _ifindex(name: str) -> int:
    return int((SYS_NET / name / "ifindex").read_text())


def _master(name: str) -> str | None:
    try:
        return os.path.basename(os.readlink(SYS_NET / name / "master"))
    except OSError:
        return None


def _set_alias(name: str, owner: str) -> None:
    path = SYS_NET / name / "ifalias"
    if path.read_text().rstrip("\n") != owner:
        path.write_text(owner)


def _set_flags(sock, name: str, on: int, off: int = 0) -> None:
    got = fcntl.ioctl(sock, SIOCGIFFLAGS, _ifreq_flags(name, 0))
    flags = struct.unpack_from("H", got, IFNAMSIZ + 1)[0]
    new = (flags | on) & ~off
    if new != flags:
        fcntl.ioctl(sock, SIOCSIFFLAGS, _ifreq_flags(name, new))


def _flush_ipv4(sock, name: str) -> None:
    """Nobody should have put an IPv4 address there; if someone did, it goes (the segment
    is not the host's). SIOCGIFADDR says whether there is one without netlink; removing
    them all needs netlink (rare: pyroute2 then). IPv6 ones went with disable_ipv6."""
    try:
        fcntl.ioctl(sock, SIOCGIFADDR, struct.pack("16s24x", name.encode()))
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            return
        raise
    with _iproute() as ipr:
        index = _index(ipr, name)
        if index is not None:
            _flush_addresses(ipr, index)


def _delete_tap(name: str) -> None:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, _ifreq_flags(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    finally:
        os.close(fd)


def _fail_os(what: str, err: OSError) -> DatapathError:
    if err.errno in (errno.EPERM, errno.EACCES):
        return DatapathError(f"{what}: permission denied (CAP_NET_ADMIN needed)")
    return DatapathError(f"{what}: {os.strerror(err.errno or 0)}",
                         hint="see 'ip -d link' and run with --debug")


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
