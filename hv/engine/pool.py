"""The warm pool: VMs of hv's guest booted ahead, per image, each waiting for one container.

A pooled VM is booted as a container would be (the image's fresh overlay, the default NICs,
its own keys, its own entropy) with a seed that says `pool`: the agent brings up its NICs
and sshd, reports `pooled`, and waits on the virtio-serial port `hv.claim`. A `run` that
the pool can serve claims one by renaming its folder (pool/ID -> containers/.ID: atomic,
so two claimers never get the same VM), sets the container's record on the live domain,
sends the container's seed over the port and goes on as after a cold boot. A pooled VM
serves exactly one container and is never reused; refills run in a detached process
(`python -m hv.pool_refill`, one per state root by a flock), never on `run`'s path.
docs/warm-pool.md has the design and the numbers.

A part of the facade (hv.engine.Engine mixes it in); `self` is the Engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import time
from dataclasses import replace
from pathlib import Path

from hv.containers import Record
from hv.errors import HvError, RuntimeFailure

CLAIM_SOCKET = "c.sock"  # short: a unix socket path has 108 bytes
POOL_MEMORY_MIB = 512  # create's default: only default-sized containers are served warm


class Pooling:
    # --- what the pool holds -------------------------------------------------------------

    def pool_entries(self) -> list[dict]:
        """Each pooled VM: id, image id, ready (booted to the claim), QEMU alive."""
        from hv.runtime.domains import qemu_pid

        out = []
        root = self.paths.pool_dir()
        with contextlib.suppress(OSError):
            for d in sorted(root.iterdir()):
                if d.name.startswith("."):
                    continue
                try:
                    image_id = (d / "image").read_text().strip()
                except OSError:
                    continue
                alive = qemu_pid(self.libvirt, f"hv-{d.name[:12]}") is not None
                out.append({"id": d.name, "image": image_id, "ready": _pooled(d),
                            "alive": alive})
        return out

    def pool_status(self) -> dict:
        """For `info`: the size asked for, the pooled VMs there, how many are ready."""
        pooled = self.pool_entries()
        return {"Size": self.config.pool, "VMs": len(pooled),
                "Ready": sum(1 for e in pooled if e["ready"] and e["alive"])}

    def pool_ids(self) -> set[str]:
        """The container ids pooled VMs hold (their endpoints and taps are not orphans)."""
        with contextlib.suppress(OSError):
            return {d.name.lstrip(".") for d in self.paths.pool_dir().iterdir()}
        return set()

    # --- serving a run -------------------------------------------------------------------

    def _pool_serves(self, opts, *, mount_specs, published, memory, vcpus, cpus,
                     networks) -> bool:
        """Can a pooled VM (default size, default NICs, no shares, no forwards but the
        agent's) be this container? Anything else boots cold, transparently."""
        return (self.config.pool > 0 and self.libvirt.embedded and _socket_fits(self.paths)
                and self._pool_allowed()
                and not mount_specs
                and not published and memory == POOL_MEMORY_MIB and vcpus == 1 and not cpus
                and not opts.networks and not opts.network_aliases and not opts.ip
                and networks == self._pool_networks())

    def _pool_networks(self) -> list[str]:
        return ["bridge"]

    @staticmethod
    def _pool_allowed() -> bool:
        """Pooled VMs sit on the default `bridge`, as a root hv's containers do: an hv
        without CAP_NET_ADMIN (user-mode networking only) neither fills nor claims."""
        from hv.network import datapath

        return datapath.can_admin()

    def _claim_pooled(self, image_id: str) -> str | None:
        """Take a ready pooled VM of `image_id`: its id, its folder now containers/.ID (a
        being-made container to every other hv command), or None."""
        from hv.runtime.domains import qemu_pid

        root = self.paths.pool_dir()
        try:
            names = sorted(os.listdir(root))
        except OSError:
            return None
        kernel = _kernel_stamp(self.paths)
        for name in names:
            d = root / name
            if name.startswith(".") or not _pooled(d):
                continue
            try:
                if (d / "image").read_text().strip() != image_id:
                    continue
                stale = (d / "kernel").read_text() != kernel
            except OSError:
                continue
            staging = self.paths.containers_dir() / ("." + name)
            self.paths.containers_dir().mkdir(parents=True, exist_ok=True)
            try:
                os.rename(d, staging)
            except OSError:
                continue  # another run took it first
            if not stale and qemu_pid(self.libvirt, f"hv-{name[:12]}") is not None:
                return name
            self._release_pooled(name, staging)
        return None

    def _discard_claimed(self, cid: str) -> None:
        """A claim that went wrong before its folder was in place: the VM goes."""
        self._release_pooled(cid, self.paths.containers_dir() / ("." + cid))

    def _release_pooled(self, cid: str, folder: Path) -> None:
        """A pooled VM goes for good: its domain, endpoint, taps and folder."""
        from hv.network import ops
        from hv.runtime.domains import destroy

        with contextlib.suppress(HvError):
            destroy(self.libvirt, f"hv-{cid[:12]}")
        with contextlib.suppress(HvError, OSError):
            ops.release(self.paths.state_root(), cid)
        with contextlib.suppress(HvError, OSError):
            ops.teardown_taps(self.paths.state_root(), cid)
        shutil.rmtree(folder, ignore_errors=True)

        with contextlib.suppress(HvError, OSError):
            ops.release(self.paths.state_root(), cid)
        with contextlib.suppress(HvError, OSError):
            ops.teardown_taps(self.paths.state_root(), cid)
        shutil.rmtree(folder, ignore_errors=True)

    def _hand_over(self, record: Record, xml: str | None, wait_attach: bool, via=None,
                   reserved: bool = False) -> None:
        """The claimed VM becomes `record`'s: the record on its live domain (and `xml` as
        its persistent definition unless `--rm`), then the container's seed over the claim
        port; the agent goes on as after a cold boot's seed. `reserved`: a `create`d one's
        start (its definition is there already; `--rm` drops it)."""
        from hv.guest.seed import claim_message
        from hv.runtime import domains

        cid = record.id
        domains.adopt(self.libvirt, record.domain_name, record.to_dict(),
                      None if record.auto_remove or reserved else xml,
                      transient=reserved and record.auto_remove, via=via)
        message = claim_message(self._guest_spec(record, wait_attach=wait_attach))
        folder = os.open(self.paths.container_dir(cid), os.O_PATH | os.O_CLOEXEC)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(10)
            # through the folder's fd: a unix socket's path has 108 bytes at most
            sock.connect(f"/proc/self/fd/{folder}/{CLAIM_SOCKET}")
            sock.sendall(message)
        except OSError as e:
            raise RuntimeFailure(
                f"cannot hand the pooled VM its container: {e.strerror or e}",
                hint="run the command again (it boots cold when the pool is empty)") from None
        finally:
            sock.close()
            os.close(folder)
        self.paths.container_ports(cid).write_text("[]")
        self.paths.container_started(cid).write_text(f"{time.time():.9f}")
        (self.paths.container_dir(cid) / "warm").write_text("1")
        self.paths.container_dir(cid).joinpath("reserved").unlink(missing_ok=True)

    def _start_reserved(self, c, wait_attach: bool) -> bool:
        """`start` of a `create`d container that holds a pooled VM: hand it over (True);
        False when that VM died meanwhile (the caller boots cold from the definition)."""
        from hv.runtime.domains import destroy, qemu_pid

        marker = self.paths.container_dir(c.id) / "reserved"
        if not marker.exists():
            return False
        if qemu_pid(self.libvirt, c.domain) is not None:
            self._hand_over(c.record, None, wait_attach, reserved=True)
            return True
        marker.unlink(missing_ok=True)
        with contextlib.suppress(HvError):
            destroy(self.libvirt, c.domain)  # (a dead one's status, if libvirt has it)
        return False

    # --- filling -------------------------------------------------------------------------

    def refill_pool(self, image_id: str) -> None:
        """Start the detached refiller for `image_id` (it exits at once if one runs)."""
        if self.config.pool <= 0 or not self.libvirt.embedded:
            return
        from hv.detached import spawn_module

        spawn_module("hv.pool_refill", [image_id, f"{time.time():.6f}"],
                     self.config.child_environ())

    def fill_pool(self, image_id: str, asked_at: float | None = None) -> int:
        """Boot pooled VMs of `image_id` until the pool holds `pool` of them (dead ones
        go first); one filler per state root at a time. The number booted. `asked_at`:
        when the refill was asked for; a drain since then (prune, the service's stop, a
        test's clean-up) wins, so a refiller slow to start never refills behind it."""
        if self.config.pool <= 0 or not self.libvirt.embedded or not _socket_fits(self.paths) \
                or not self._pool_allowed():
            return 0
        root = self.paths.pool_dir()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(root / ".fill.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return 0
            if asked_at is not None and _drained_at(root) >= asked_at:
                return 0
            self._sweep_pool()
            booted = 0
            while sum(1 for e in self.pool_entries()
                      if e["image"] == image_id) < self.config.pool:
                self._boot_pooled(image_id)
                booted += 1
            return booted

    def _sweep_pool(self) -> None:
        """Pooled VMs whose QEMU died (killed while idle), or booted from an older guest
        kernel, go: never handed out."""

        kernel = _kernel_stamp(self.paths)
        for e in self.pool_entries():
            d = self.paths.pool_dir() / e["id"]
            try:
                stale = (d / "kernel").read_text() != kernel
            except OSError:
                stale = True
            if e["alive"] and not stale:  # ready, or still booting
                continue
            self._release_pooled(e["id"], d)
        for d in self._half_made(min_age=600):
            self._release_pooled(d.name, d)

    def _boot_pooled(self, image_id: str) -> str:
        """One pooled VM of `image_id`, booted up to its claim wait (the caller does not
        wait for `pooled`). Its folder gets `image` last: a folder without it is half-made
        (a killed filler's), never claimed, swept."""
        from hv.context import Context
        from hv.engine.create import _domain_xml, _guest_assets, _make_overlay, _reserve
        from hv.guest.seed import write_seed
        from hv.runtime import domains, forwards
        from hv.runtime.accel import detect
        from hv.runtime.domain import SocketChannel
        from hv.spec import RunOptions

        image = self.images.get(image_id)
        assets = _guest_assets(self.paths, self.config.firmware)
        accel = detect(self.paths, self.config.accel)
        cid = os.urandom(32).hex()
        pp = self.paths.pooled()
        folder = pp.container_dir(cid)
        folder.mkdir(mode=0o700)
        record = Record(id=cid, name="", image=image_id, image_id=image.id, created=time.time(),
                        entrypoint=[], cmd=["true"], env=[], workdir="/", user="",
                        hostname=cid[:12], memory_mib=POOL_MEMORY_MIB, vcpus=1, nano_cpus=0,
                        auto_remove=True, accel=accel.name, networks=self._pool_networks(),
                        domain=f"hv-{cid[:12]}")
        try:
            self._join_networks(record, RunOptions(image=image_id))
            _make_overlay(self.paths, self.images.base_disk(image), pp.container_disk(cid))
            (folder / "kernel").write_text(_kernel_stamp(self.paths))
            interfaces = self._interfaces(cid)
            write_seed(pp.container_seed(cid),
                       replace(self._guest_spec(record, paths=pp), pool=True))
            xml = _domain_xml(Context(self.config, pp, self.libvirt), self.volumes, record,
                              accel, assets, interfaces, metadata=False,
                              extra_channels=[SocketChannel("hv.claim", folder / CLAIM_SOCKET)])
            _reserve(pp.container_log(cid), 256 * 1024)
            _reserve(pp.container_console(cid), 64 * 1024)
            pp.container_status(cid).write_bytes(b"")
            bound = domains.start(self.libvirt, xml, record.domain_name, persistent=False,
                                  forwards=[forwards.agent_forward()])
            pp.container_ssh_port(cid).write_text(str(bound[0].host_port))
            (folder / "image").write_text(image.id)
        except BaseException:
            self._release_pooled(cid, folder)  # (its domain too, if it started)
            raise
        return cid

    def drain_pool(self) -> int:
        """Destroy every pooled VM (prune, the service's stop). How many. A filler at work
        is waited for first (up to a minute), so it cannot boot one after the drain."""
        root = self.paths.pool_dir()
        if not root.is_dir():
            return 0
        with open(root / ".fill.lock", "a") as lock:
            deadline = time.monotonic() + 60
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break  # drain anyway
                    time.sleep(0.05)
            (root / ".drained").write_text(f"{time.time():.6f}")
            return self._drain()

    def _drain(self) -> int:
        entries = self.pool_entries()
        for e in entries:
            self._release_pooled(e["id"], self.paths.pool_dir() / e["id"])
        for d in self._half_made(min_age=0):
            self._release_pooled(d.name, d)
        return len(entries)

    def _half_made(self, min_age: float) -> list[Path]:
        """Pool folders without `image` (a filler killed while it booted one) older than
        `min_age` seconds."""
        out = []
        with contextlib.suppress(OSError):
            for d in self.paths.pool_dir().iterdir():
                if d.is_dir() and not d.name.startswith(".") and not (d / "image").exists():
                    with contextlib.suppress(OSError):
                        if time.time() - d.stat().st_mtime >= min_age:
                            out.append(d)
        return out


def _drained_at(root: Path) -> float:
    try:
        return float((root / ".drained").read_text())
    except (OSError, ValueError):
        return 0.0


def _socket_fits(paths) -> bool:
    """QEMU binds the claim socket by path (108 bytes at most): a deep state root has no
    pool (its runs boot cold)."""
    return len(os.fsencode(paths.pool_dir() / ("0" * 64) / CLAIM_SOCKET)) < 108


def _pooled(folder: Path) -> bool:
    """Has the VM booted to its claim wait (the agent's `pooled` line)?"""
    try:
        return b"pooled " in (folder / "status").read_bytes()
    except OSError:
        return False


def _kernel_stamp(paths) -> str:
    """Which guest a pooled VM booted: another kernel or initramfs since means cold."""
    parts = []
    for p in (paths.guest_kernel(), paths.guest_initrd()):
        with contextlib.suppress(OSError):
            st = p.stat()
            parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)
