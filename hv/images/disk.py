"""A root filesystem directory -> a sparse ext4 base disk, with `mkfs.ext4 -d` (no mount).

Flags, measured on this host (8 GiB virtual size; busybox 2 MB tree / 54 MB / 263 MB trees):
defaults 0.03 s / - / 1.3 s and 72 MB allocated even for busybox (journal and inode tables
written out); `-m 0 -E assume_storage_prezeroed=1` 0.02 s / 0.28 s / 0.8-1.5 s and 6 MB
allocated for busybox. `assume_storage_prezeroed` (e2fsprogs >= 1.47) skips zeroing the
journal and inode tables *and* marks the tables zeroed, which is true of a fresh sparse
file; plain `lazy_itable_init=1` would leave the guest kernel's ext4lazyinit thread writing
~130 MB of zeroes into every container's qcow2 overlay, and `lazy_itable_init=0` allocates
those blocks on the host. `-m 0`: no root reserve, the container owns the whole disk.

How big an image may unpack (`allowed_size`): its files may add up to at most
ALLOWED_RATIO (32) times the size of its layers as stored (compressed), and never less than
ALLOWED_FLOOR (4 GiB) whatever the layers' size. Real layers unpack to 2-5 times their gzip
or zstd size, so 32 leaves room for files of zeroes and the like; a 10 KB layer declaring a
10 GB file (sparse, or a gzip/zstd bomb) is refused. HV_MAX_IMAGE_SIZE (bytes, or a number
with K/M/G/T) replaces the rule with a fixed limit, for an image known to need more.
The extraction (hv.images.layers) applies the limit to each file's declared size before
writing it, and `build` applies it again to the unpacked tree.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path

from hv.errors import HvError, Interrupted, UsageError

DEFAULT_SIZE = 8 << 30
ALLOWED_RATIO = 32
ALLOWED_FLOOR = 4 << 30
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MKFS_FLAGS = ["-q", "-F", "-t", "ext4", "-m", "0", "-E", "assume_storage_prezeroed=1"]


class DiskBuildError(HvError):
    hint = "check that e2fsprogs >= 1.47 (mkfs.ext4) is installed and HV_ROOT has free space"


def parse_size(text: str, what: str = "HV_DISK_SIZE") -> int:
    """'8589934592', '8G', '512M', '10g', '1.5G' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not match:
        raise UsageError(
            f"invalid {'disk ' if what == 'HV_DISK_SIZE' else ''}size {text!r}"
            + ("" if what == "HV_DISK_SIZE" else f" in {what}"),
            hint=f"{what} takes bytes or a number with K, M, G or T (e.g. 8G)",
        )
    return int(float(match.group(1)) * _SUFFIX[match.group(2).upper()])


def human_bytes(n: float) -> str:
    """1536 -> '1.5KiB', 10 << 30 -> '10.0GiB' (binary units, one decimal)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)}B" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}TiB"  # pragma: no cover - the loop returns


def allowed_size(compressed_bytes: int, fixed: str = "") -> int:
    """The bytes an image's files may add up to, unpacked (see the module's docstring);
    `fixed`: HV_MAX_IMAGE_SIZE, when set."""
    if fixed:
        return parse_size(fixed, "HV_MAX_IMAGE_SIZE")
    return max(ALLOWED_FLOOR, ALLOWED_RATIO * compressed_bytes)


def too_large_hint(compressed_bytes: int, fixed: str = "") -> str:
    if fixed:
        return "HV_MAX_IMAGE_SIZE sets that limit; raise it if the image is trusted"
    return (f"hv allows {ALLOWED_RATIO} times an image's compressed layers "
            f"({human_bytes(compressed_bytes)}), at least {human_bytes(ALLOWED_FLOOR)}; "
            "set HV_MAX_IMAGE_SIZE (e.g. 64G) for an image known to need more")


class ImageTooLarge(DiskBuildError):
    """An image whose files unpack to more than `allowed_size` of its layers."""


def check_size(content_bytes: int, compressed_bytes: int, image_id: str,
               fixed: str = "") -> None:
    """Refuse an unpacked tree past the allowed size, naming the image and the limit."""
    limit = allowed_size(compressed_bytes, fixed)
    if content_bytes > limit:
        short = image_id.removeprefix("sha256:")[:12]
        raise ImageTooLarge(
            f"image {short} unpacks to {human_bytes(content_bytes)}, more than the "
            f"{human_bytes(limit)} allowed for its {human_bytes(compressed_bytes)} of layers",
            hint=too_large_hint(compressed_bytes, fixed),
        )


def virtual_size(content_bytes: int, disk_size: str = "") -> int:
    """`disk_size` (HV_DISK_SIZE; default 8 GiB), grown when the image alone would fill half
    of it."""
    size = parse_size(disk_size) if disk_size else DEFAULT_SIZE
    size = max(size, 2 * content_bytes + (64 << 20))
    return (size + (1 << 20) - 1) & ~((1 << 20) - 1)


def build(rootfs: Path, dest: Path, content_bytes: int, image_id: str,
          compressed_bytes: int | None = None, max_image_size: str = "",
          disk_size: str = "") -> None:
    """Write `dest` (a fresh sparse file) as ext4 holding `rootfs`; removes it on failure.

    With `compressed_bytes` (the image's layers as stored), an unpacked tree of more than
    `allowed_size` of them is refused (ImageTooLarge) before anything is written."""
    if compressed_bytes is not None:
        check_size(content_bytes, compressed_bytes, image_id, max_image_size)
    mkfs = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
    if not mkfs:
        raise DiskBuildError("mkfs.ext4 is not installed; it builds the image's base disk")
    fs_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"hv:{image_id}"))
    try:
        with open(dest, "wb") as f:
            f.truncate(virtual_size(content_bytes, disk_size))
        proc = subprocess.run(
            [mkfs, *MKFS_FLAGS, "-U", fs_uuid, "-L", "hv-root", "-d", str(rootfs), str(dest)],
            capture_output=True,
            text=True,
        )
    except KeyboardInterrupt:
        dest.unlink(missing_ok=True)
        raise Interrupted("interrupted while building the image's base disk") from None
    except OSError as e:
        dest.unlink(missing_ok=True)
        raise DiskBuildError(f"cannot build the base disk {dest}: {e.strerror}") from e
    if proc.returncode != 0:
        dest.unlink(missing_ok=True)
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise DiskBuildError(
            "mkfs.ext4 failed to build the base disk: " + (detail[-1] if detail else "no output")
        )
