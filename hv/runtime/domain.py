"""Domain XML as small typed objects, not string templates.

Each device knows how to write itself as an ElementTree element; `DomainSpec.to_xml()`
assembles them. Golden files in tests/unit/golden/ pin the result.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

HV_NS = "https://hv.dev/xmlns/container/1"
HV_PREFIX = "hv"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"

# libvirt starts QEMU with -no-shutdown and destroys it when the guest powers off. With the
# embedded driver no process is there to do that between hv commands, so QEMU is told to
# exit by itself when the guest powers off (a later -action overrides -no-shutdown).
SELF_EXIT_ARGS = ["-action", "shutdown=poweroff"]


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


@dataclass
class Disk:
    """A virtio-blk disk the guest finds by its serial (no reliance on vda/vdb order).

    I/O errors of the host file (ENOSPC when the state root is full, EIO) are reported to
    the guest (`error_policy`/`rerror_policy` 'report': the guest kernel gets an I/O error
    for that request and the container sees it, as a full disk under Docker). libvirt's
    default, 'stop', pauses the whole VM on the first failed write: the guest freezes with
    its main process, nobody is told, and with no daemon nothing ever resumes it.
    ('enospace' is no better here: it pauses on ENOSPC and reports only other errors.)
    """

    path: Path
    serial: str
    target: str
    fmt: str = "qcow2"
    readonly: bool = False
    error_policy: str = "report"  # writes: stop | report | ignore | enospace
    rerror_policy: str = "report"  # reads: stop | report | ignore

    def element(self, devices: ET.Element) -> None:
        disk = _sub(devices, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type=self.fmt, discard="unmap",
             error_policy=self.error_policy, rerror_policy=self.rerror_policy)
        _sub(disk, "source", file=str(self.path))
        _sub(disk, "target", dev=self.target, bus="virtio")
        if self.readonly:
            _sub(disk, "readonly")
        _sub(disk, "serial", self.serial)


@dataclass
class FileChannel:
    """A virtio-serial port backed by a host file: how the guest agent talks back."""

    name: str
    path: Path
    append: bool = False

    def element(self, devices: ET.Element) -> None:
        ch = _sub(devices, "channel", type="file")
        src = _sub(ch, "source", path=str(self.path))
        if self.append:
            src.set("append", "on")
        _sub(ch, "target", type="virtio", name=self.name)


@dataclass
class SocketChannel:
    """A virtio-serial port on a unix socket QEMU listens on: host to guest (a pooled VM's
    claim, hv.engine.pool)."""

    name: str
    path: Path

    def element(self, devices: ET.Element) -> None:
        ch = _sub(devices, "channel", type="unix")
        _sub(ch, "source", mode="bind", path=str(self.path))
        _sub(ch, "target", type="virtio", name=self.name)


@dataclass
class FileSerial:
    """ttyS0 into a host file: kernel and agent messages for post-mortems."""

    path: Path

    def element(self, devices: ET.Element) -> None:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=str(self.path), append="on")
        _sub(serial, "target", port="0")


AGENT_MAC = "52:54:00:68:76:01"  # the guest keeps this NIC in its root namespace (netns.c)
USER_MAC = "52:54:00:68:76:02"  # this one goes into the container's network namespace
AGENT_NETDEV = "hvagent"  # never one of libvirt's ids (hostnet0, hostua-…)


@dataclass
class UserNetwork:
    """QEMU user networking (SLIRP; unprivileged, no bridge, no vhost): two NICs, each its own
    SLIRP stack (docs/networks.md, "Two user-mode NICs").

    The agent's NIC carries hv's SSH forward and nothing else: `restrict=on` (no host, no
    outside), given to QEMU directly since libvirt 9.0's <interface type='user'> cannot say
    it, on the last slot of pc's bus (libvirt fills it only past 29 devices). The guest keeps
    it in its root namespace, out of the workload's sight.
    The workload's NIC (libvirt's first <interface>, netdev hostnet0, where -p forwards go)
    is its way out; `restrict`: none (`--internal` networks only, or `none`)."""

    model: str = "virtio"
    restrict: bool = False

    def element(self, devices: ET.Element) -> None:
        if self.restrict:
            return
        iface = _sub(devices, "interface", type="user")
        _sub(iface, "mac", address=USER_MAC)
        _sub(iface, "model", type=self.model)
        _sub(iface, "rom", enabled="no")  # the iPXE option ROM costs ~0.1 s of boot, unused

    def qemu_args(self) -> list[str]:
        return ["-netdev", f"user,id={AGENT_NETDEV},restrict=on",
                "-device", f"virtio-net-pci,netdev={AGENT_NETDEV},id=hv-agent-nic,"
                           f"mac={AGENT_MAC},romfile=,bus=pci.0,addr=0x1f"]


@dataclass
class EthernetInterface:
    """A NIC on an hv network: a tap hv made beforehand (the embedded driver has no network
    driver), so libvirt only opens it (`managed='no'`) and never creates or deletes it. The
    guest agent finds the NIC by its MAC and moves it into the container's network
    namespace."""

    tap: str
    mac: str
    model: str = "virtio"

    def element(self, devices: ET.Element) -> None:
        iface = _sub(devices, "interface", type="ethernet")
        _sub(iface, "mac", address=self.mac)
        _sub(iface, "target", dev=self.tap, managed="no")
        _sub(iface, "model", type=self.model)
        _sub(iface, "rom", enabled="no")

    def to_xml(self) -> str:
        """The <interface> alone, for a hot-plug (libvirt attachDevice)."""
        holder = ET.Element("devices")
        self.element(holder)
        el = holder[0]
        ET.indent(el)
        return ET.tostring(el, encoding="unicode") + "\n"


@dataclass
class Rng:
    """virtio-rng: without it the agent's sshd waits ~1 s under TCG for the guest's CRNG."""

    def element(self, devices: ET.Element) -> None:
        rng = _sub(devices, "rng", model="virtio")
        _sub(rng, "backend", "/dev/urandom", model="random")


@dataclass
class Balloon:
    """virtio-balloon, here only for free page reporting: memory the guest frees in large
    blocks (a finished process's, dropped caches) goes back to the host within seconds, so a
    VM that was busy does not keep its peak RSS. The balloon is never inflated."""

    free_page_reporting: bool = True

    def element(self, devices: ET.Element) -> None:
        attrs = {"freePageReporting": "on"} if self.free_page_reporting else {}
        _sub(devices, "memballoon", model="virtio", **attrs)


@dataclass
class Filesystem:
    """A host folder shared with the guest: virtiofs (virtiofsd, needs shared memory) or
    virtio-9p (QEMU's own server). accessmode passthrough: files keep their real owners."""

    source: Path
    tag: str  # the guest mounts it by this tag
    driver: str = "virtiofs"  # "virtiofs" | "9p"
    readonly: bool = False  # 9p: refused by QEMU too; virtiofs: enforced by the guest
    binary: Path | None = None  # virtiofsd; None: libvirt finds one
    cache: str = ""  # virtiofsd's cache mode: "" = its default (auto), "none", "always"

    def element(self, devices: ET.Element) -> None:
        fs = _sub(devices, "filesystem", type="mount", accessmode="passthrough")
        if self.driver == "virtiofs":
            _sub(fs, "driver", type="virtiofs", queue="1024")
            if self.binary or self.cache:
                binary = _sub(fs, "binary", **({"path": str(self.binary)} if self.binary else {}))
                if self.cache:  # libvirt 9.0 knows none|always only
                    _sub(binary, "cache", mode=self.cache)
        else:
            _sub(fs, "driver", type="path", wrpolicy="immediate")
        _sub(fs, "source", dir=str(self.source))
        _sub(fs, "target", dir=self.tag)
        if self.readonly and self.driver != "virtiofs":
            _sub(fs, "readonly")


@dataclass
class MemoryBacking:
    """Guest RAM that another process may map: virtiofsd needs it (vhost-user)."""

    source: str = "memfd"
    access: str = "shared"

    def element(self, dom: ET.Element) -> None:
        mb = _sub(dom, "memoryBacking")
        _sub(mb, "source", type=self.source)
        _sub(mb, "access", mode=self.access)


@dataclass
class DomainSpec:
    name: str
    uuid: str
    kernel: Path
    initrd: Path
    cmdline: str
    memory_mib: int = 512
    vcpus: int = 1
    domain_type: str = "qemu"  # "qemu" = TCG, "kvm" = hardware
    tb_cache_mib: int | None = None  # TCG translation cache; QEMU's default is 1 GiB
    machine: str = "pc"
    loader: Path | None = None  # firmware ROM (qboot) instead of SeaBIOS
    emulator: Path | None = None
    disks: list[Disk] = field(default_factory=list)
    channels: list[FileChannel | SocketChannel] = field(default_factory=list)
    serial: FileSerial | None = None
    network: UserNetwork | None = None
    interfaces: list[EthernetInterface] = field(default_factory=list)  # after `network`
    rng: Rng | None = None
    balloon: Balloon | None = None  # None: <memballoon model='none'/>
    filesystems: list[Filesystem] = field(default_factory=list)
    memory_backing: MemoryBacking | None = None
    metadata: dict | None = None
    qemu_args: list[str] = field(default_factory=lambda: list(SELF_EXIT_ARGS))

    def to_xml(self) -> str:
        dom = ET.Element("domain", type=self.domain_type)
        _sub(dom, "name", self.name)
        _sub(dom, "uuid", self.uuid)
        if self.metadata is not None:
            meta = _sub(dom, "metadata")
            rec = ET.SubElement(meta, f"{{{HV_NS}}}container")
            rec.text = json.dumps(self.metadata, sort_keys=True)
        _sub(dom, "memory", str(self.memory_mib), unit="MiB")
        if self.memory_backing is not None:
            self.memory_backing.element(dom)
        _sub(dom, "vcpu", str(self.vcpus), placement="static")
        os_ = _sub(dom, "os")
        _sub(os_, "type", "hvm", arch="x86_64", machine=self.machine)
        if self.loader is not None:
            _sub(os_, "loader", str(self.loader), type="rom", readonly="yes")
        _sub(os_, "kernel", str(self.kernel))
        _sub(os_, "initrd", str(self.initrd))
        _sub(os_, "cmdline", self.cmdline)
        features = _sub(dom, "features")
        _sub(features, "acpi")
        if self.domain_type == "qemu" and self.tb_cache_mib:
            tcg = _sub(features, "tcg")
            _sub(tcg, "tb-cache", str(self.tb_cache_mib), unit="MiB")
        if self.domain_type == "kvm":
            _sub(dom, "cpu", mode="host-passthrough")
        _sub(dom, "clock", offset="utc")
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            _sub(dom, event, "destroy")
        devices = _sub(dom, "devices")
        if self.emulator is not None:
            _sub(devices, "emulator", str(self.emulator))
        for disk in self.disks:
            disk.element(devices)
        for fs in self.filesystems:
            fs.element(devices)
        _sub(devices, "controller", type="usb", model="none")
        if self.network is not None:
            self.network.element(devices)
        for iface in self.interfaces:
            iface.element(devices)
        if self.serial is not None:
            self.serial.element(devices)
        for ch in self.channels:
            ch.element(devices)
        if self.rng is not None:
            self.rng.element(devices)
        if self.balloon is not None:
            self.balloon.element(devices)
        else:
            _sub(devices, "memballoon", model="none")
        qemu_args = [*self.qemu_args, *(self.network.qemu_args() if self.network else [])]
        if qemu_args:
            cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
            for arg in qemu_args:
                ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)
        ET.indent(dom)
        return ET.tostring(dom, encoding="unicode") + "\n"


ET.register_namespace(HV_PREFIX, HV_NS)
ET.register_namespace("qemu", QEMU_NS)


def report_io_errors(xml: str) -> str | None:
    """`xml` with every disk reporting I/O errors to the guest (see `Disk`), or None when
    it does already: a domain defined by an older hv is brought up to date at its start."""
    dom = ET.fromstring(xml)
    changed = False
    for driver in dom.findall("devices/disk/driver"):
        for attr in ("error_policy", "rerror_policy"):
            if driver.get(attr) in (None, "stop", "enospace"):
                driver.set(attr, "report")
                changed = True
    return ET.tostring(dom, encoding="unicode") if changed else None


def metadata_element(record: dict) -> str:
    """The hv record as libvirt's setMetadata takes it: the element to_xml writes, without
    its namespace (libvirt puts it in HV_NS under the prefix it is given)."""
    rec = ET.Element("container")
    rec.text = json.dumps(record, sort_keys=True)
    return ET.tostring(rec, encoding="unicode")


def read_metadata(xml: str) -> dict | None:
    """The hv record of a domain's XML, or None for a domain hv did not create."""
    return record_of(ET.fromstring(xml))


def record_of(domain: ET.Element) -> dict | None:
    """The hv record of a parsed <domain> element (see read_metadata)."""
    el = domain.find(f"metadata/{{{HV_NS}}}container")
    if el is None or not el.text:
        return None
    try:
        return json.loads(el.text)
    except ValueError:
        return {}
