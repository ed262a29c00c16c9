"""Every file and folder hv keeps, named once, under the roots a `Config` chose.

Nobody else joins path pieces by hand. A `Paths` is a value (three roots); it holds no
other state and reads no environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Paths:
    """`root`: the state root; `cache`: build caches shared by every checkout on this
    machine (guest kernel, test images); `guest`: the guest's kernel, initramfs, agent."""

    root: Path
    cache: Path
    guest: Path

    def state_root(self) -> Path:
        return self.root

    def guest_dir(self) -> Path:
        return self.guest

    # --- guest assets (kernel, initramfs, kernel command line) ---------------------------


    def guest_kernel(self) -> Path:
        return self.guest / "vmlinuz"


    def guest_initrd(self) -> Path:
        return self.guest / "initrd.img"


    def guest_agent_disk(self) -> Path:
        """The agent's read-only disk (sshd and its libraries), shared by every VM."""
        return self.guest / "agent.img"


    def guest_cmdline(self) -> Path:
        return self.guest / "cmdline"


    def guest_firmware(self) -> Path:
        """The firmware ROM the kernel wants (qboot for hv's PVH kernel; empty: SeaBIOS)."""
        return self.guest / "firmware"


    def guest_machine(self) -> Path:
        """The QEMU machine type the guest was built for (`pc`)."""
        return self.guest / "machine"


    # --- libvirt ----------------------------------------------------------------------------


    def libvirt_root(self) -> Path:
        """The embedded libvirt's root, as libvirt is given it.

        QEMU's monitor socket lives ~60 characters below it and UNIX socket paths stop at 107,
        so a long state root is reached through a short symlink in the temp folder instead.
        """
        real = self.libvirt_root_dir()
        if len(str(real)) <= 44:
            return real
        import hashlib
        import tempfile

        tag = hashlib.sha256(str(real).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"hv-libvirt-{tag}"


    def libvirt_root_dir(self) -> Path:
        """Where the embedded libvirt's files really are."""
        return self.root / "libvirt"


    def libvirt_log(self) -> Path:
        return self.root / "libvirt.log"


    # --- images -----------------------------------------------------------------------------


    def images_root(self) -> Path:
        return self.root / "images"


    def blobs_dir(self) -> Path:
        return self.images_root() / "blobs" / "sha256"


    def blob(self, digest: str) -> Path:
        """`digest` is 'sha256:' + 64 lowercase hex, checked here as well as where it entered."""
        return self.blobs_dir() / _hex(digest)


    def image_index(self) -> Path:
        return self.images_root() / "index.json"


    def image_lock(self) -> Path:
        return self.images_root() / "index.lock"


    def image_writers_dir(self) -> Path:
        """One journal per pull or load at work (hv.images.records.writing)."""
        return self.images_root() / "writers"

    def base_disks_dir(self) -> Path:
        return self.images_root() / "disks"


    def base_disk(self, image_id: str) -> Path:
        """The ext4 base disk of an image, named by the image id (its config digest)."""
        return self.base_disks_dir() / (_hex(image_id) + ".ext4")


    def tmp_dir(self) -> Path:
        """Scratch space on the same filesystem as the store, so renames are atomic."""
        return self.root / "tmp"


    # --- containers -------------------------------------------------------------------------


    def containers_dir(self) -> Path:
        return self.root / "containers"

    def pool_dir(self) -> Path:
        """Pooled VMs' folders (hv.engine.pool), each laid out as a container's."""
        return self.root / "pool"

    def pooled(self) -> Paths:
        """These paths with pool/ for containers/: where a pooled VM's files are."""
        return _PoolPaths(self.root, self.cache, self.guest)


    def container_dir(self, cid: str) -> Path:
        return self.containers_dir() / cid


    def container_disk(self, cid: str) -> Path:
        """qcow2 overlay on the image's base disk."""
        return self.container_dir(cid) / "disk.qcow2"


    def container_seed(self, cid: str) -> Path:
        """ISO 9660 seed carrying the container spec into the guest."""
        return self.container_dir(cid) / "seed.iso"


    def container_log(self, cid: str) -> Path:
        """Framed stdout/stderr records written by the guest agent (virtio-serial `hv.log`)."""
        return self.container_dir(cid) / "log"


    def container_status(self, cid: str) -> Path:
        """`started` / `exited CODE` lines from the guest agent (virtio-serial `hv.status`)."""
        return self.container_dir(cid) / "status"


    def container_console(self, cid: str) -> Path:
        """Kernel and agent messages (serial ttyS0): what to read when a guest will not boot."""
        return self.container_dir(cid) / "console.log"


    def container_started(self, cid: str) -> Path:
        """Host time of the last start, written by hv."""
        return self.container_dir(cid) / "started"


    def container_lock(self, cid: str) -> Path:
        """Held while the container is being created, so garbage collection leaves it alone."""
        return self.container_dir(cid) / "lock"


    def base_overlay(self, base: Path) -> Path:
        """An empty qcow2 overlay of a base disk, copied for each new container's disk."""
        return base.with_suffix(".overlay.qcow2")


    def base_disk_lock(self, image_id: str) -> Path:
        """Held while an image's base disk is built, so two builders never race."""
        return self.base_disks_dir() / (_hex(image_id) + ".lock")


    def container_client_key(self, cid: str) -> Path:
        """The container's SSH client key (private, 0600)."""
        return self.container_dir(cid) / "id_ed25519"


    def container_client_public(self, cid: str) -> Path:
        return self.container_dir(cid) / "id_ed25519.pub"


    def container_host_private(self, cid: str) -> Path:
        """The guest's host key (private); it reaches the guest only through the seed."""
        return self.container_dir(cid) / "host_key"


    def container_host_key(self, cid: str) -> Path:
        """The public half of the guest's host key, pinned."""
        return self.container_dir(cid) / "host_key.pub"


    def container_known_hosts(self, cid: str) -> Path:
        """The pinned host key as OpenSSH's known_hosts line, for cp's bulk streams."""
        return self.container_dir(cid) / "known_hosts"


    def container_ssh_port(self, cid: str) -> Path:
        """The loopback host port forwarded to the agent's sshd while the container runs."""
        return self.container_dir(cid) / "ssh-port"


    def container_ports(self, cid: str) -> Path:
        """Published ports as bound at the last start (JSON)."""
        return self.container_dir(cid) / "ports.json"


    # --- volumes ----------------------------------------------------------------------------


    def volumes_dir(self) -> Path:
        return self.root / "volumes"


    def volume_dir(self, name: str) -> Path:
        return self.volumes_dir() / name


    def volume_data(self, name: str) -> Path:
        """What a container sees at the mount point (Docker's `_data`; the share's source)."""
        return self.volume_dir(name) / "_data"


    def volume_meta(self, name: str) -> Path:
        """The volume's record: small versioned JSON (name, created, driver, labels, anonymous)."""
        return self.volume_dir(name) / "volume.json"


    def volumes_lock(self) -> Path:
        """Held while volumes are created or removed, so `rm` never races a `run`."""
        return self.volumes_dir() / ".lock"


    def volume_transport_cache(self) -> Path:
        """The probed verdict virtiofs-or-9p for this state root (as accel.json for KVM)."""
        return self.root / "volume-transport.json"


    def container_mounts(self, cid: str) -> Path:
        """The container's mounts (JSON), written before its volumes are created: which volumes
        a container uses is read from here, so a volume in use is never removed, even while
        the container is being created or after its domain vanished (`--rm -d`)."""
        return self.container_dir(cid) / "mounts.json"


    # --- the exec multiplexer (hv.guest.mux) -------------------------------------------------


    def container_mux_socket(self, cid: str) -> Path:
        """The UNIX socket of the container's exec multiplexer (one SSH transport, many sessions).

        Often longer than a socket path may be (107 bytes): hv.guest.mux binds and connects
        through /proc/self/fd/DIRFD/ instead of this path."""
        return self.container_dir(cid) / "mux.sock"


    def container_mux_pid(self, cid: str) -> Path:
        """The pid of the multiplexer now serving the socket (written by the multiplexer)."""
        return self.container_dir(cid) / "mux.pid"


    def container_mux_lock(self, cid: str) -> Path:
        """Held while a client starts a multiplexer, so two `hv exec` never start two; its
        existence also says a multiplexer was ever started for the container."""
        return self.container_dir(cid) / "mux.lock"


    def container_mux_log(self, cid: str) -> Path:
        """The multiplexer's log: start, readiness, exit and why, tracebacks."""
        return self.container_dir(cid) / "mux.log"

    # --- exec sessions and events (hv.engine.execs, hv.engine.events) --------------------

    def container_execs_dir(self, cid: str) -> Path:
        """One JSON record per exec session (Docker's exec create/start/inspect); they go
        with the container."""
        return self.container_dir(cid) / "execs"

    def container_exec(self, cid: str, exec_id: str) -> Path:
        if not (len(exec_id) == 64 and all(c in "0123456789abcdef" for c in exec_id)):
            raise InvalidDigest(f"invalid exec id {exec_id!r}")
        return self.container_execs_dir(cid) / f"{exec_id}.json"

    def events_log(self) -> Path:
        """Docker's events as JSON lines, appended by every hv process (`hv events`)."""
        return self.root / "events.jsonl"

    def container_name(self, cid: str) -> Path:
        """The name `rename` gave the container (absent: the record's); its libvirt domain
        keeps the name it was made with (a running domain cannot be renamed)."""
        return self.container_dir(cid) / "name"

    def container_labels(self, cid: str) -> Path:
        """Docker's Config.Labels of the container (JSON), written once at create."""
        return self.container_dir(cid) / "labels.json"


@dataclass(frozen=True)
class _PoolPaths(Paths):
    def containers_dir(self) -> Path:
        return self.pool_dir()
