"""Every file and folder hv keeps, named once.

The state root is `$HV_ROOT`, else `/var/lib/hv` for root, else `~/.local/share/hv`.
Nobody else joins path pieces by hand.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hv.errors import InvalidDigest

# The only digests hv stores: a digest names a file, so anything else (a '../' path, a
# slash, upper case) must never reach a path join.
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


def is_digest(text: object) -> bool:
    return isinstance(text, str) and _SHA256.fullmatch(text) is not None


def _hex(digest: str) -> str:
    if not is_digest(digest):
        raise InvalidDigest(f"invalid digest {digest!r}: want sha256: and 64 lowercase hex digits")
    return digest[len("sha256:"):]


def state_root() -> Path:
    env = os.environ.get("HV_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/hv")
    return Path.home() / ".local/share/hv"


def cache_root() -> Path:
    """Build caches shared by every checkout on this machine (guest kernel, test images)."""
    env = os.environ.get("HV_CACHE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/hv")
    return Path.home() / ".cache/hv"


# --- guest assets (kernel, initramfs, kernel command line) -------------------------------


def guest_dir() -> Path:
    env = os.environ.get("HV_GUEST_DIR")
    return Path(env) if env else state_root() / "guest"


def guest_kernel() -> Path:
    return guest_dir() / "vmlinuz"


def guest_initrd() -> Path:
    return guest_dir() / "initrd.img"


def guest_agent_disk() -> Path:
    """The agent's read-only disk (sshd and its libraries), shared by every VM."""
    return guest_dir() / "agent.img"


def guest_cmdline() -> Path:
    return guest_dir() / "cmdline"


def guest_firmware() -> Path:
    """The firmware ROM the kernel wants (qboot for hv's PVH kernel; empty: SeaBIOS)."""
    return guest_dir() / "firmware"


def guest_machine() -> Path:
    """The QEMU machine type the guest was built for (`pc`)."""
    return guest_dir() / "machine"


# --- libvirt ----------------------------------------------------------------------------


def libvirt_root() -> Path:
    """The embedded libvirt's root, as libvirt is given it.

    QEMU's monitor socket lives ~60 characters below it and UNIX socket paths stop at 107,
    so a long state root is reached through a short symlink in the temp folder instead.
    """
    real = libvirt_root_dir()
    if len(str(real)) <= 44:
        return real
    import hashlib
    import tempfile

    tag = hashlib.sha256(str(real).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"hv-libvirt-{tag}"


def libvirt_root_dir() -> Path:
    """Where the embedded libvirt's files really are."""
    return state_root() / "libvirt"


def libvirt_log() -> Path:
    return state_root() / "libvirt.log"


# --- images -----------------------------------------------------------------------------


def images_root() -> Path:
    return state_root() / "images"


def blobs_dir() -> Path:
    return images_root() / "blobs" / "sha256"


def blob(digest: str) -> Path:
    """`digest` is 'sha256:' + 64 lowercase hex, checked here as well as where it entered."""
    return blobs_dir() / _hex(digest)


def image_index() -> Path:
    return images_root() / "index.json"


def image_lock() -> Path:
    return images_root() / "index.lock"


def image_writers_lock() -> Path:
    """Held shared by every pull and load from its first blob to its record; orphan blobs
    are only collected by whoever gets it exclusively."""
    return images_root() / "writers.lock"


def base_disks_dir() -> Path:
    return images_root() / "disks"


def base_disk(image_id: str) -> Path:
    """The ext4 base disk of an image, named by the image id (its config digest)."""
    return base_disks_dir() / (_hex(image_id) + ".ext4")


def tmp_dir() -> Path:
    """Scratch space on the same filesystem as the store, so renames are atomic."""
    return state_root() / "tmp"


# --- containers -------------------------------------------------------------------------


def containers_dir() -> Path:
    return state_root() / "containers"


def container_dir(cid: str) -> Path:
    return containers_dir() / cid


def container_disk(cid: str) -> Path:
    """qcow2 overlay on the image's base disk."""
    return container_dir(cid) / "disk.qcow2"


def container_seed(cid: str) -> Path:
    """ISO 9660 seed carrying the container spec into the guest."""
    return container_dir(cid) / "seed.iso"


def container_log(cid: str) -> Path:
    """Framed stdout/stderr records written by the guest agent (virtio-serial `hv.log`)."""
    return container_dir(cid) / "log"


def container_status(cid: str) -> Path:
    """`started` / `exited CODE` lines from the guest agent (virtio-serial `hv.status`)."""
    return container_dir(cid) / "status"


def container_console(cid: str) -> Path:
    """Kernel and agent messages (serial ttyS0): what to read when a guest will not boot."""
    return container_dir(cid) / "console.log"


def container_started(cid: str) -> Path:
    """Host time of the last start, written by hv."""
    return container_dir(cid) / "started"


def container_lock(cid: str) -> Path:
    """Held while the container is being created, so garbage collection leaves it alone."""
    return container_dir(cid) / "lock"


def base_overlay(base: Path) -> Path:
    """An empty qcow2 overlay of a base disk, copied for each new container's disk."""
    return base.with_suffix(".overlay.qcow2")


def base_disk_lock(image_id: str) -> Path:
    """Held while an image's base disk is built, so two builders never race."""
    return base_disks_dir() / (_hex(image_id) + ".lock")


def container_client_key(cid: str) -> Path:
    """The container's SSH client key (private, 0600)."""
    return container_dir(cid) / "id_ed25519"


def container_client_public(cid: str) -> Path:
    return container_dir(cid) / "id_ed25519.pub"


def container_host_private(cid: str) -> Path:
    """The guest's host key (private); it reaches the guest only through the seed."""
    return container_dir(cid) / "host_key"


def container_host_key(cid: str) -> Path:
    """The public half of the guest's host key, pinned."""
    return container_dir(cid) / "host_key.pub"


def container_known_hosts(cid: str) -> Path:
    """The pinned host key as OpenSSH's known_hosts line, for cp's bulk streams."""
    return container_dir(cid) / "known_hosts"


def container_ssh_port(cid: str) -> Path:
    """The loopback host port forwarded to the agent's sshd while the container runs."""
    return container_dir(cid) / "ssh-port"


def container_ports(cid: str) -> Path:
    """Published ports as bound at the last start (JSON)."""
    return container_dir(cid) / "ports.json"


# --- volumes ----------------------------------------------------------------------------


def volumes_dir() -> Path:
    return state_root() / "volumes"


def volume_dir(name: str) -> Path:
    return volumes_dir() / name


def volume_data(name: str) -> Path:
    """What a container sees at the mount point (Docker's `_data`; the share's source)."""
    return volume_dir(name) / "_data"


def volume_meta(name: str) -> Path:
    """The volume's record: small versioned JSON (name, created, driver, labels, anonymous)."""
    return volume_dir(name) / "volume.json"


def volumes_lock() -> Path:
    """Held while volumes are created or removed, so `rm` never races a `run`."""
    return volumes_dir() / ".lock"


def volume_transport_cache() -> Path:
    """The probed verdict virtiofs-or-9p for this state root (as accel.json for KVM)."""
    return state_root() / "volume-transport.json"


def container_mounts(cid: str) -> Path:
    """The container's mounts (JSON), written before its volumes are created: which volumes
    a container uses is read from here, so a volume in use is never removed, even while
    the container is being created or after its domain vanished (`--rm -d`)."""
    return container_dir(cid) / "mounts.json"


# --- the exec multiplexer (hv.guest.mux) -------------------------------------------------


def container_mux_socket(cid: str) -> Path:
    """The UNIX socket of the container's exec multiplexer (one SSH transport, many sessions).

    Often longer than a socket path may be (107 bytes): hv.guest.mux binds and connects
    through /proc/self/fd/DIRFD/ instead of this path."""
    return container_dir(cid) / "mux.sock"


def container_mux_pid(cid: str) -> Path:
    """The pid of the multiplexer now serving the socket (written by the multiplexer)."""
    return container_dir(cid) / "mux.pid"


def container_mux_lock(cid: str) -> Path:
    """Held while a client starts a multiplexer, so two `hv exec` never start two; its
    existence also says a multiplexer was ever started for the container."""
    return container_dir(cid) / "mux.lock"


def container_mux_log(cid: str) -> Path:
    """The multiplexer's log: start, readiness, exit and why, tracebacks."""
    return container_dir(cid) / "mux.log"
