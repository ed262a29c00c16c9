"""The image's root filesystem for the process and container columns, and the OCI bundle.

The rootfs is unpacked from hv's own image store with hv.images.layers (whiteouts and all),
into a temporary folder on the state root's filesystem, so the process, the container and
the VM's disk all write to the same host filesystem.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hv.compare.workload import APPLETS, NEEDS, PIPE_NEEDS

MAX_LINKS = 40


def resolve_in_root(root: Path, path: str) -> Path | None:
    """`path` as seen from inside `root` (symlinks followed, absolute ones re-rooted, `..`
    never above root); the host path of the final file, or None when it does not exist."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if current:
                current.pop()
            continue
        host = root.joinpath(*current, name)
        if host.is_symlink():
            hops += 1
            if hops > MAX_LINKS:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                current = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        if not os.path.lexists(host):
            return None
        current.append(name)
    return root.joinpath(*current)


def image_env(run_config: dict) -> dict[str, str]:
    """The image's ENV as a dict, with Docker's defaults for PATH and HOME."""
    from hv.spec import DEFAULT_PATH

    env: dict[str, str] = {}
    for item in run_config.get("Env") or []:
        k, eq, v = item.partition("=")
        if eq:
            env[k] = v
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", "/root")
    return env


def find_shell(root: Path) -> str | None:
    for candidate in ("/bin/sh", "/usr/bin/sh"):
        found = resolve_in_root(root, candidate)
        if found is not None and found.is_file() and os.access(found, os.X_OK):
            return candidate
    return None


def missing_applets(root: Path, env: dict[str, str]) -> list[str]:
    dirs = [d for d in env.get("PATH", "").split(":") if d.startswith("/")]
    missing = []
    for applet in APPLETS:
        if not any(resolve_in_root(root, f"{d}/{applet}") for d in dirs):
            missing.append(applet)
    return missing


def static_busybox() -> Path | None:
    """The host's statically linked busybox (Debian's busybox-static), if any."""
    for p in (Path("/bin/busybox"), Path("/usr/bin/busybox")):
        try:
            head = p.read_bytes()[:4096]
        except OSError:
            continue
        if head.startswith(b"\x7fELF") and b"ld-linux" not in head:
            return p
    return None


INJECT_DIR = "/.hvcmp"


def inject_busybox(root: Path, busybox: Path) -> list[str]:
    """Copy a static busybox to /.hvcmp/busybox with applet links in /.hvcmp/bin; the shell
    argv to use."""
    d = root / INJECT_DIR.lstrip("/")
    (d / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, d / "busybox")
    for applet in dict.fromkeys(("sh", *APPLETS, *PIPE_NEEDS, *NEEDS)):
        link = d / "bin" / applet
        if not link.is_symlink():
            link.symlink_to("../busybox")
    return [f"{INJECT_DIR}/busybox", "sh"]


def oci_config(rootfs: Path, args: list[str], env: dict[str, str], hostname: str) -> dict:
    """An OCI runtime config like `runc spec`'s (Docker's defaults: pid, net, ipc, uts and
    mount namespaces, masked and read-only /proc paths, three capabilities), run as root, root
    filesystem writable, no terminal."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }


def has_mounts_below(root: Path) -> bool:
    """True if anything is mounted at or below `root` in hv's own mount namespace (then the
    folder must not be removed recursively)."""
    prefix = str(root.resolve()).rstrip("/") + "/"
    try:
        text = Path("/proc/self/mounts").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 1:
            mnt = fields[1].replace("\\040", " ")
            if (mnt + "/").startswith(prefix):
                return True
    return False
