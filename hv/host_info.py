"""What a front end reports about this host and hv's guest (the Engine API's /info and
/version): the accelerator, the guest kernel's release, the host's CPUs and memory.

Kept out of the front ends because it reads below the facade (the guest assets' folder);
the facade's `host_facts()` gives it.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass


@dataclass
class HostFacts:
    accelerator: str  # "kvm" | "tcg"
    accelerator_reason: str
    guest_kernel: str  # the release hv's guest boots ("" when the guest is not built)
    guest_kernel_kind: str  # "hv" (hv's own) | "cloud" (Debian's) | ""
    host_kernel: str
    operating_system: str
    ncpu: int
    mem_total: int  # bytes
    hostname: str
    state_root: str


def _read(path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def facts(paths, accel) -> HostFacts:
    """`paths`: the Config's (hv.paths.Paths); `accel`: hv.runtime.accel.Accel."""
    from hv.spec import host_memory_bytes

    guest = paths.guest_dir()
    return HostFacts(
        accelerator=accel.name, accelerator_reason=accel.reason,
        guest_kernel=_read(guest / "release"), guest_kernel_kind=_read(guest / "kernel"),
        host_kernel=platform.release(), operating_system=_os_name(),
        ncpu=os.cpu_count() or 1, mem_total=host_memory_bytes() or 0,
        hostname=platform.node(), state_root=str(paths.state_root()),
    )
