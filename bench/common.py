"""What bench/api.py and bench/network.py share: a private state root and its QEMUs."""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class PrivateRoot:
    """A state root of its own under /tmp (`prefix`), the offline images, and how to run
    hv on it; HV_ROOT is set in this process too (the engine reads it through Config)."""

    prefix: str
    images: Path = field(init=False)
    work: Path = field(init=False)
    root: Path = field(init=False)
    env: dict = field(init=False)
    hv: list[str] = field(init=False)

    def __post_init__(self) -> None:
        from hv.config import Config

        self.images = Path(os.environ.get("HV_TEST_IMAGES",
                                          Config.from_environ().cache / "images" / "out"))
        self.work = Path(tempfile.mkdtemp(prefix=self.prefix, dir="/tmp"))
        self.root = self.work / "root"
        self.env = dict(os.environ, HV_ROOT=str(self.root), PYTHONPATH=str(REPO))
        os.environ["HV_ROOT"] = str(self.root)
        self.hv = [sys.executable, "-m", "cli"]


def qemu_pids(root: Path) -> list[int]:
    """QEMU processes whose command line names a path under `root` (only this root's)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and str(root).encode() in cmd:
            pids.append(int(p.name))
    return pids
