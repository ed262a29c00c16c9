"""Real guests on hv networks, booted through libvirt from a DomainSpec (no engine yet):
two containers on one network reach each other by IP and by name (ping, TCP through busybox
nc); a third on another network, given an address *inside* the first network's subnet,
reaches neither (the segments are separate L2 domains, not just separate subnets); nobody
answers at the gateway address (the host has no address on a segment).

Every packet stays on this machine: the segments are bridges with no host address and no
forwarding; the guests' only other NIC is QEMU's user-mode one, which these scripts never
use.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hv.guest.logstream import read_records, read_status
from hv.guest.seed import GuestNic, GuestSpec, write_seed
from hv.network import datapath, ops
from hv.runtime.domain import (
    Disk,
    DomainSpec,
    EthernetInterface,
    FileChannel,
    FileSerial,
    MemoryBacking,
    Rng,
    UserNetwork,
)

REPO = Path(__file__).resolve().parents[2]
PATH_ENV = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 150.0

pytestmark = [pytest.mark.vm,
              pytest.mark.usefixtures("net_admin")]


@pytest.fixture(scope="module")
def guest_dir() -> Path:
    d = Path(os.environ.get("HV_GUEST_DIR", "/var/cache/hv/guest/current"))
    if not (d / "vmlinuz").exists():
        pytest.fail(f"no guest in {d}: run 'make setup' or guest-images/build.sh")
    return d


@pytest.fixture(scope="module")
def root_disk(tmp_path_factory, test_images_dir) -> Path:
    work = tmp_path_factory.mktemp("netdisk")
    disk = work / "busybox.ext4"
    layout = test_images_dir / "busybox"
    if not layout.is_dir():
        subprocess.run(["tar", "-xf", str(test_images_dir / "busybox.oci.tar"), "-C",
                        str(work / "layout")], check=False)
        layout = work / "layout"
    subprocess.run([str(REPO / "guest-images/images/rootfs-ext4.sh"), str(layout), str(disk)],
                   check=True)
    return disk


class Guest:
    def __init__(self, name: str, work: Path, cid: str):
        self.name, self.work, self.cid = name, work, cid

    @property
    def status(self):
        return read_status(self.work / "status")

    def out(self) -> str:
        recs = read_records(self.work / "log")[0]
        return b"".join(r.data for r in recs).decode(errors="replace")


def _boot(name: str, cid: str, work: Path, guest: Path, disk: Path, script: str,
          nics: list[GuestNic], hosts: str, ifaces: list[EthernetInterface]) -> Guest:
    from hv.runtime import domains

    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(disk, work / "root.ext4")
    write_seed(work / "seed.iso", GuestSpec(cid, ["sh", "-c", script], [PATH_ENV],
                                            hostname=name, nics=nics, hosts=hosts))
    agent = guest / "agent.img"
    firmware = (guest / "firmware").read_text().strip() if (guest / "firmware").exists() else ""
    spec = DomainSpec(
        name=name, uuid=f"{cid[:8]}-{cid[8:12]}-{cid[12:16]}-{cid[16:20]}-{cid[20:32]}",
        kernel=guest / "vmlinuz", initrd=guest / "initrd.img",
        cmdline=(guest / "cmdline").read_text().strip(), memory_mib=256,
        tb_cache_mib=40, loader=Path(firmware) if firmware else None,
        disks=[Disk(work / "root.ext4", "hv-root", "vda", fmt="raw"),
               Disk(work / "seed.iso", "hv-seed", "vdb", fmt="raw", readonly=True),
               *([Disk(agent, "hv-agent", "vdc", fmt="raw", readonly=True)]
                 if agent.exists() else [])],
        channels=[FileChannel("hv.log", work / "log", append=True),
                  FileChannel("hv.status", work / "status")],
        serial=FileSerial(work / "console.log"), network=UserNetwork(), interfaces=ifaces,
        rng=Rng(), memory_backing=MemoryBacking())
    domains.start(_libvirt(), spec.to_xml(), name, persistent=False)
    return Guest(name, work, cid)


def _libvirt():
    """The session state root's libvirt (HV_ROOT, set by the hv_root fixture)."""
    from hv.config import Config
    from hv.runtime.connection import Libvirt

    config = Config.from_environ()
    return Libvirt(config.paths, config.host)


def _wait_exited(guests: list[Guest], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(g.status.exit_code is not None for g in guests):
            return
        time.sleep(0.3)
    report = "\n".join(f"--- {g.name}: {g.out()[-1500:]}\n"
                       f"console: {(g.work / 'console.log').read_text(errors='replace')[-1500:]}"
                       for g in guests)
    raise AssertionError(f"guests did not finish within {timeout:.0f}s:\n{report}")


def _wait_output(g: Guest, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in g.out():
        if time.monotonic() > deadline or g.status.exit_code is not None:
            raise AssertionError(f"{g.name}: no {text!r} in {g.out()[-1500:]!r}")
        time.sleep(0.3)


SERVER = r"""
echo "routes: $(ip route | tr '\n' ';')"
echo "hosts: $(tr '\n' ';' </etc/hosts)"
msg=$(nc -l -p 5000)
echo "got: $msg"
sleep 120  # stays reachable for the outsider's attempts; the test destroys it
"""

CLIENT = r"""
ok=
for i in $(seq 60); do ping -c 1 -W 1 {peer_ip} >/dev/null 2>&1 && ok=1 && break; done
echo "ping-ip: ${{ok:-fail}}"
ping -c 2 -W 2 web >/dev/null 2>&1 && echo "ping-name: ok" || echo "ping-name: fail"
ping -c 2 -W 1 {gateway} >/dev/null 2>&1 && echo "gateway: answered" || echo "gateway: silent"
for i in $(seq 20); do echo hello-over-tcp | nc {peer_ip} 5000 && break; sleep 0.5; done
echo "routes: $(ip route | tr '\n' ';')"
"""

OUTSIDER = r"""
echo "addr: $(ip -4 addr | grep -o 'inet [0-9./]*' | tr '\n' ';')"
ping -c 3 -W 1 {peer_ip} >/dev/null 2>&1 && echo "reach-a: yes" || echo "reach-a: no"
ping -c 2 -W 1 {peer2_ip} >/dev/null 2>&1 && echo "reach-b: yes" || echo "reach-b: no"
grep -q web /etc/hosts && echo "name-a: yes" || echo "name-a: no"
"""


@pytest.fixture(autouse=True)
def _no_pooled_vms(hv_root):
    """These tests count the root's hv links: a warm pool's VMs (HV_POOL) hold taps too."""
    from tests.conftest import drain_pool

    drain_pool(hv_root)


def test_two_guests_talk_and_a_third_on_another_network_cannot(hv_root, guest_dir,
                                                                root_disk, tmp_path):
    from hv.runtime import domains

    root = Path(hv_root)
    a, b, c = (secrets.token_hex(32) for _ in range(3))
    names = {a: "hvnet-web", b: "hvnet-client", c: "hvnet-outsider"}
    ops.create(root, "hvt-front")
    back = ops.create(root, "hvt-back")
    guests: list[Guest] = []
    try:
        ea = ops.connect(root, "hvt-front", a, "web")
        eb = ops.connect(root, "hvt-front", b, "client")
        # the outsider's endpoint is on `back`, but its guest is told an address in front's
        # subnet: only L2 separation can keep it out
        ops.connect(root, "hvt-back", c, "outsider")
        spoof = GuestNic(ops.endpoints_of(root, c)[0][1].mac, "172.18.200.9", ea.prefix)
        assert back.subnet != "172.18.0.0/16" and ea.ipv4.startswith("172.18.")
        scripts = {a: SERVER,
                   b: CLIENT.format(peer_ip=ea.ipv4, gateway=ops.get(root, "hvt-front").gateway),
                   c: OUTSIDER.format(peer_ip=ea.ipv4, peer2_ip=eb.ipv4)}
        for cid in (a, b, c):
            if cid == c:  # the outsider tries only once web is known to answer on front
                _wait_output(guests[1], "ping-ip: 1", BOOT_TIMEOUT)
            ifaces = ops.prepare_taps(root, cid)
            nics = [spoof] if cid == c else ops.guest_nics(root, cid)
            guests.append(_boot(names[cid], cid, tmp_path / names[cid], guest_dir, root_disk,
                                scripts[cid], nics, ops.hosts_file(root, cid, names[cid]),
                                ifaces))
        assert datapath.hv_addresses() == []  # guests up: still no host address anywhere
        _wait_exited(guests[1:], BOOT_TIMEOUT)
        _wait_output(guests[0], "got: ", 30)
        out = {g.cid: g.out() for g in guests}
        for g in guests:
            print(f"\n--- {g.name}\n{out[g.cid]}")
        assert "ping-ip: 1" in out[b], out[b]
        assert "ping-name: ok" in out[b], out[b]
        assert "gateway: silent" in out[b], out[b]
        assert "got: hello-over-tcp" in out[a], out[a]
        assert f"{eb.ipv4}\tclient {b[:12]}" in out[a]  # the peer's hosts line
        # outbound stays on the user-mode NIC: the only default route goes via 10.0.2.2
        assert "default via 10.0.2.2" in out[a] and "172.18.0.0/16 dev" in out[a], out[a]
        assert f"inet {spoof.address}/{spoof.prefix};" in out[c], out[c]
        assert out[c].count(": no") == 3, out[c]
    finally:
        for g in guests:
            try:
                domains.destroy(_libvirt(), g.name)
            except Exception:  # already gone (powered off)
                pass
        for cid in (a, b, c):
            ops.release(root, cid)
        for n in ("hvt-front", "hvt-back"):
            ops.remove(root, n)
    assert datapath.hv_links(datapath.owner_tag(root)) == {}
    assert datapath.hv_addresses() == []


IDLE = r"""
echo "addr: $(ip -4 addr | grep -o 'inet [0-9./]*' | tr '\n' ';')"
sleep 120  # the test destroys it
"""

TWO_NETS = r"""
echo "addr: $(ip -4 addr | grep -o 'inet [0-9./]*' | tr '\n' ';')"
ok=
for i in $(seq 60); do ping -c 1 -W 1 yalias >/dev/null 2>&1 && ok=1 && break; done
echo "left-by-alias: ${{ok:-fail}}"
ok=
for i in $(seq 60); do ping -c 1 -W 1 {z_ip} >/dev/null 2>&1 && ok=1 && break; done
echo "bridge-by-ip: ${{ok:-fail}}"
grep -q zed /etc/hosts && echo "bridge-names: yes" || echo "bridge-names: none"
"""


def test_a_container_on_two_networks_and_the_default_bridge(hv_root, guest_dir, root_disk,
                                                            tmp_path):
    """X is on a user network and the default `bridge` (two hv NICs, found by MAC): it
    reaches Y by alias on the first and Z by IP on `bridge`, where there are no names."""
    from hv.runtime import domains

    root = Path(hv_root)
    x, y, z = (secrets.token_hex(32) for _ in range(3))
    names = {x: "hvnet-x", y: "hvnet-y", z: "zed"}
    ops.create(root, "hvt-left")
    guests: list[Guest] = []
    try:
        ex_left = ops.connect(root, "hvt-left", x, "hvnet-x")
        ex_bridge = ops.connect(root, "bridge", x, "hvnet-x")
        ops.connect(root, "hvt-left", y, "hvnet-y", aliases=["yalias"])
        ez = ops.connect(root, "bridge", z, "zed")
        assert ex_bridge.ipv4.startswith("172.17.") and ex_bridge.tap.endswith("-1")
        scripts = {x: TWO_NETS.format(z_ip=ez.ipv4), y: IDLE, z: IDLE}
        for cid in (y, z, x):
            ifaces = ops.prepare_taps(root, cid)
            guests.append(_boot(names[cid], cid, tmp_path / names[cid], guest_dir, root_disk,
                                scripts[cid], ops.guest_nics(root, cid),
                                ops.hosts_file(root, cid, names[cid]), ifaces))
        _wait_exited(guests[2:], BOOT_TIMEOUT)
        out = guests[2].out()
        print(f"\n--- {guests[2].name}\n{out}")
        assert f"inet {ex_left.ipv4_cidr};" in out and f"inet {ex_bridge.ipv4_cidr};" in out
        assert "left-by-alias: 1" in out, out
        assert "bridge-by-ip: 1" in out, out
        assert "bridge-names: none" in out, out
    finally:
        for g in guests:
            try:
                domains.destroy(_libvirt(), g.name)
            except Exception:  # already gone (powered off)
                pass
        for cid in (x, y, z):
            ops.release(root, cid)
        ops.remove(root, "hvt-left")
    assert datapath.hv_links(datapath.owner_tag(root)) == {}
