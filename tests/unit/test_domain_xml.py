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
    # the user-mode NIC stays first: the agent's SSH, -p and outbound use it
    assert [i.get("type") for i in ifaces] == ["user", "ethernet", "ethernet"]
    assert ifaces[1].find("target").attrib == {"dev": "hvt-0123abcd-0", "managed": "no"}
    assert ifaces[1].find("mac").get("address") == "02:42:ac:12:00:02"


def test_interface_alone_for_hotplug():
    from hv.runtime.domain import EthernetInterface

    el = ET.fromstring(EthernetInterface("hvt-0123abcd-2", "02:42:ac:12:00:09").to_xml())
    assert el.tag == "interface" and el.get("type") == "ethernet"
    assert el.find("model").get("type") == "virtio"


def test_restricted_user_nic_is_qemus_own_under_libvirts_first_netdev_id():
    """--internal / none: QEMU's restrict=on (libvirt cannot say it), the netdev keeps the id
    the host forwards use, and the hv NICs get aliases so libvirt names no netdev hostnet0."""
    from hv.runtime.domain import QEMU_NS, EthernetInterface
    from hv.runtime.forwards import NETDEV

    spec = make()
    spec.network = UserNetwork(restrict=True)
    spec.interfaces = [EthernetInterface("hvt-0123abcd-0", "02:42:ac:12:00:02"),
                       EthernetInterface("hvt-0123abcd-1", "02:42:ac:13:00:05")]
    dom = ET.fromstring(spec.to_xml())
    ifaces = dom.findall("devices/interface")
    assert [i.get("type") for i in ifaces] == ["ethernet", "ethernet"]
    assert [i.find("alias").get("name") for i in ifaces] == ["ua-hvnic0", "ua-hvnic1"]
    args = [a.get("value") for a in dom.findall(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
    netdev = args[args.index("-netdev") + 1]
    assert netdev == f"user,id={NETDEV},restrict=on"
    device = args[args.index("-device") + 1]
    assert f"netdev={NETDEV}" in device and "addr=0x1f" in device
    assert args[:2] == ["-action", "shutdown=poweroff"]  # hv's own arguments stay
    # unrestricted: libvirt's <interface type='user'> as before, no alias on the others
    spec.network = UserNetwork()
    dom = ET.fromstring(spec.to_xml())
    assert [i.get("type") for i in dom.findall("devices/interface")] == ["user", "ethernet",
                                                                           "ethernet"]
    assert dom.find("devices/interface/alias") is None
