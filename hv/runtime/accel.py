"""Which accelerator guests get: KVM only where it really works, else TCG.

`/dev/kvm` alone proves nothing: on a PVM nested host it exists and a normal guest hangs.
KVM counts as usable when the cpu flags show vmx/svm, /dev/kvm opens, and a probe guest
boots to a kernel panic and exits within seconds. The verdict is cached per state root.
`HV_ACCEL=kvm|tcg` forces the choice.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hv.errors import UsageError
from hv.paths import Paths


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    reason: str

    @property
    def domain_type(self) -> str:
        return "kvm" if self.name == "kvm" else "qemu"


def _cpu_has_virt() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"vmx", "svm"})
    return False


def _kvm_opens() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _probe_boots(kernel: Path) -> bool:
    """Boot the guest kernel under KVM with no root: it must panic and exit quickly."""
    if not kernel.exists():
        return False
    cmd = [
        "qemu-system-x86_64", "-accel", "kvm", "-M", "pc", "-m", "128", "-nodefaults",
        "-display", "none", "-no-reboot", "-kernel", str(kernel),
        "-append", "panic=-1 console=none root=/dev/nonexistent",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def detect(paths: Paths, forced: str = "") -> Accel:
    """KVM if it really runs guests here, else TCG; `forced`: HV_ACCEL. Cached per root."""
    if forced:
        if forced not in ("kvm", "tcg"):
            raise UsageError(f"HV_ACCEL={forced!r} is not kvm or tcg", hint="unset HV_ACCEL")
        return Accel(forced, "forced by HV_ACCEL")
    cache = paths.state_root() / "accel.json"
    try:
        data = json.loads(cache.read_text())
        return Accel(data["name"], data["reason"])
    except (OSError, ValueError, KeyError):
        pass
    if not _cpu_has_virt():
        verdict = Accel("tcg", "the CPU shows no vmx/svm flag, so KVM cannot run guests here")
    elif not _kvm_opens():
        verdict = Accel("tcg", "/dev/kvm is missing or not accessible")
    elif not _probe_boots(paths.guest_kernel()):
        verdict = Accel("tcg", "a KVM probe guest did not boot")
    else:
        verdict = Accel("kvm", "hardware virtualization works")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"name": verdict.name, "reason": verdict.reason}))
    except OSError:
        pass
    return verdict
