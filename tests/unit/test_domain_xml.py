"""Domain XML built from typed objects, pinned by a golden file."""

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from hv.runtime.domain import (
    Balloon,
    Disk,
    DomainSpec,
    FileChannel,
    FileSerial,
    UserNetwork,
    read_metadata,
)

GOLDEN = Path(__file__).parent / "golden" / "container-domain.xml"


def make() -> DomainSpec:
    return DomainSpec(
        name="web", uuid="0123abcd-0123-4567-89ab-0123456789ab", kernel=Path("/g/vmlinuz"),
        initrd=Path("/g/initrd.img"), cmdline="console=ttyS0 quiet panic=-1", memory_mib=256,
        vcpus=2,
        disks=[Disk(Path("/c/disk.qcow2"), "hv-root", "vda"),
               Disk(Path("/c/seed.iso"), "hv-seed", "vdb", fmt="raw", readonly=True)],
        channels=[FileChannel("hv.log", Path("/c/log"), append=True),
                  FileChannel("hv.status", Path("/c/status"))],
        serial=FileSerial(Path("/c/console.log")), network=UserNetwork(),
        metadata={"id": "0123", "name": "web", "cmd": ["echo", "<&>"]},
    )


def test_golden():
    xml = make().to_xml()
    if os.environ.get("HV_UPDATE_GOLDEN"):
        GOLDEN.write_text(xml)
    assert xml == GOLDEN.read_text()


def test_metadata_round_trip_and_escaping():
    xml = make().to_xml()
    assert read_metadata(xml) == {"id": "0123", "name": "web", "cmd": ["echo", "<&>"]}
    assert read_metadata("<domain><name>other</name></domain>") is None


def test_kvm_and_firmware():
    spec = make()
    spec.domain_type = "kvm"
    spec.loader = Path("/usr/share/qemu/qboot.rom")
    root = ET.fromstring(spec.to_xml())
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert root.find("os/loader").text == "/usr/share/qemu/qboot.rom"


def test_devices():
    root = ET.fromstring(make().to_xml())
    serials = [d.findtext("serial") for d in root.findall("devices/disk")]
    assert serials == ["hv-root", "hv-seed"]
    assert root.find("devices/disk[2]/readonly") is not None
    names = [c.find("target").get("name") for c in root.findall("devices/channel")]
    assert names == ["hv.log", "hv.status"]
    assert root.findtext("on_poweroff") == root.findtext("on_crash") == "destroy"


def test_balloon_reports_free_pages_and_none_without():
    assert ET.fromstring(make().to_xml()).find("devices/memballoon").get("model") == "none"
    spec = make()
    spec.balloon = Balloon()
    el = ET.fromstring(spec.to_xml()).find("devices/memballoon")
    assert el.get("model") == "virtio" and el.get("freePageReporting") == "on"


def test_capability_cache_trim(tmp_path):
    from hv.runtime import capscache

    folder = tmp_path / "cache" / "qemu" / "capabilities"
    folder.mkdir(parents=True)
    f = folder / "x.xml"
    f.write_text("<qemuCaps>\n  <flag name='kvm'/>\n  <flag name='cpu-unavailable-features'/>\n"
                 "  <flag name='sdl'/>\n</qemuCaps>\n")
    capscache.trim(tmp_path)
    assert f.read_text() == "<qemuCaps>\n  <flag name='kvm'/>\n  <flag name='sdl'/>\n</qemuCaps>\n"
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    capscache.trim(tmp_path / "nothing-here")  # no cache yet: nothing to do


GOLDEN_NETWORKS = Path(__file__).parent / "golden" / "container-domain-networks.xml"


def test_golden_with_network_interfaces():
    from hv.runtime.domain import EthernetInterface

    spec = make()
    spec.interfaces = [EthernetInterface("hvt-0123abcd-0", "02:42:ac:12:00:02"),
                       EthernetInterface("hvt-0123abcd-1", "02:42:ac:13:00:05")]
    xml = spec.to_xml()
    if os.environ.get("HV_UPDATE_GOLDEN"):
        GOLDEN_NETWORKS.write_text(xml)
    assert xml == GOLDEN_NETWORKS.read_text()
    ifaces = ET.fromstring(xml).findall("devices/interface")
    # the workload's user-mode NIC stays libvirt's first (hostnet0): -p and outbound use it
    assert [i.get("type") for i in ifaces] == ["user", "ethernet", "ethernet"]
    assert ifaces[1].find("target").attrib == {"dev": "hvt-0123abcd-0", "managed": "no"}
    assert ifaces[1].find("mac").get("address") == "02:42:ac:12:00:02"


def test_interface_alone_for_hotplug():
    from hv.runtime.domain import EthernetInterface

    el = ET.fromstring(EthernetInterface("hvt-0123abcd-2", "02:42:ac:12:00:09").to_xml())
    assert el.tag == "interface" and el.get("type") == "ethernet"
    assert el.find("model").get("type") == "virtio"


def test_agent_nic_is_qemus_own_restricted_and_the_workloads_is_libvirts_first():
    """The agent's SSH has a NIC of its own: QEMU's restrict=on (libvirt cannot say it) under
    an id libvirt never uses, with the MAC the guest keeps out of the container's network
    namespace. The workload's user-mode NIC is libvirt's first (hostnet0, where -p goes),
    and absent for --internal only or none."""
    from hv.runtime.domain import AGENT_MAC, AGENT_NETDEV, QEMU_NS, USER_MAC, EthernetInterface
    from hv.runtime.forwards import NETDEV, agent_forward

    spec = make()
    spec.interfaces = [EthernetInterface("hvt-0123abcd-0", "02:42:ac:12:00:02"),
                       EthernetInterface("hvt-0123abcd-1", "02:42:ac:13:00:05")]
    for restrict in (False, True):
        spec.network = UserNetwork(restrict=restrict)
        dom = ET.fromstring(spec.to_xml())
        args = [a.get("value")
                for a in dom.findall(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
        assert args[:2] == ["-action", "shutdown=poweroff"]  # hv's own arguments stay
        assert args[args.index("-netdev") + 1] == f"user,id={AGENT_NETDEV},restrict=on"
        device = args[args.index("-device") + 1]
        assert f"netdev={AGENT_NETDEV}" in device and f"mac={AGENT_MAC}" in device
        assert "addr=0x1f" in device
        ifaces = dom.findall("devices/interface")
        assert dom.find("devices/interface/alias") is None
        if restrict:
            assert [i.get("type") for i in ifaces] == ["ethernet", "ethernet"]
        else:
            assert [i.get("type") for i in ifaces] == ["user", "ethernet", "ethernet"]
            assert ifaces[0].find("mac").get("address") == USER_MAC
    assert AGENT_NETDEV != NETDEV and agent_forward().netdev == AGENT_NETDEV


def test_usernet_rows_are_told_apart_by_netdev():
    """`info usernet` lists each SLIRP stack under its hub: an agent forward to port 22 and
    a `-p 2222:22` are different rows."""
    from hv.runtime.forwards import Forward, parse_usernet

    text = (
        "Hub -1 (hvagent):\n"
        "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n"
        "  TCP[HOST_FORWARD]  13       127.0.0.1 40001       10.0.2.15    22     0     0\n"
        "Hub -1 (hostnet0):\n"
        "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n"
        "  TCP[HOST_FORWARD]  14               * 2222       10.0.2.15    22     0     0\n"
        "  UDP[236 sec]       15       10.0.2.15 41000        10.0.2.3    53     0     0\n")
    assert parse_usernet(text) == [Forward("tcp", "127.0.0.1", 40001, 22, "hvagent"),
                                   Forward("tcp", "0.0.0.0", 2222, 22, "hostnet0")]
