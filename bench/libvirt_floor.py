"""The libvirt floor: hv's own domain started through libvirt by a process that is already
warm (libvirt imported, the embedded root open), timed from createXML to QEMU's exit.

No hv code runs in the timed part. `hv run` minus this is what hv itself costs (Python
start-up, the CLI, disk and seed, opening libvirt); this minus the raw QEMU boot is what
libvirt's start path costs (spawning QEMU paused, the QMP handshake, `cont`).

    python bench/libvirt_floor.py ROOT DOMAIN_XML DISK_TEMPLATE   # one boot; prints seconds

DOMAIN_XML is a container's persistent domain (libvirt's etc/qemu/NAME.xml in the embedded
ROOT). The boot gets a copy with a fresh name and its own disk (a copy of DISK_TEMPLATE, the
base disk's empty overlay) and output files, so the source stays untouched.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import sys
import tempfile
import time
from pathlib import Path


def transient_copy(xml: str, work: Path, disk_template: Path, name: str) -> str:
    """The domain as a new transient one whose writable files live in `work`."""
    xml = re.sub(r"<uuid>[^<]*</uuid>", "", xml)
    xml = re.sub(r"<name>[^<]*</name>", f"<name>{name}</name>", xml, count=1)
    cdir = re.search(r"file='([^']+)/disk\.qcow2'", xml).group(1)
    shutil.copyfile(disk_template, work / "disk.qcow2")
    shutil.copyfile(Path(cdir) / "seed.iso", work / "seed.iso")
    return xml.replace(cdir + "/", f"{work}/")


def main(root: str, domain_xml: str, disk_template: str) -> None:
    os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", "3:stderr")  # errors only
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    libvirt.virEventRegisterDefaultImpl()
    name = f"hvb-floor-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="hvb-floor.") as tmp:
        xml = transient_copy(Path(domain_xml).read_text(), Path(tmp), Path(disk_template), name)
        conn = libvirt.open(f"qemu:///embed?root={root}")
        t0 = time.perf_counter()
        conn.createXML(xml, 0)
        pid = int((Path(root) / "run" / "qemu" / f"{name}.pid").read_text())
        fd = os.pidfd_open(pid)
        select.select([fd], [], [], 60)
        dt = time.perf_counter() - t0
        conn.close()
    print(f"{dt:.6f}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
