"""Making a container: validate, pull if needed, the overlay disk, the seed, the domain, the
first boot (and its undoing when any step fails).

A part of the facade (hv.engine.Engine mixes it in); `self` is the Engine.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hv.containers import Container, Record
from hv.context import Context
from hv.engine.lifecycle import _become_subreaper
from hv.engine.results import Created
from hv.engine.store import _adopt_container_dir, _container_lock, _new_container_dir
from hv.errors import (
    Conflict,
    GuestAssetsMissing,
    HvError,
    ImageNotFound,
    RuntimeFailure,
    UsageError,
    from_os_error,
)
from hv.paths import Paths
from hv.spec import RunOptions, check_hostname, check_name, parse_cpus, parse_memory, process_spec

DEFAULT_MEMORY_MIB = 512
LOG_RESERVE = 256 * 1024
CONSOLE_RESERVE = 64 * 1024


class Creating:
    def create(self, opts: RunOptions, progress: Callable | None = None,
               start: bool = True, hold: bool = False) -> Created:
        """Validate, pull if needed (its events, 'Unable to find image' first, go to
        `progress`), make the disk and seed, start the VM. `start=False` (`hv create`):
        the domain is defined only, the container is Created until `start`. `hold`: the
        VM boots, but its main process waits for a first attach (or a release), as with
        `-i` (the Engine API's create: nothing runs before the client's attach or start)."""
        memory = parse_memory(opts.memory) if opts.memory else DEFAULT_MEMORY_MIB
        vcpus, cpus = parse_cpus(opts.cpus) if opts.cpus else (1, 0.0)
        name = check_name(opts.name) if opts.name else None
        hostname = check_hostname(opts.hostname) if opts.hostname else None
        from hv import restart

        policy = restart.parse(opts.restart)
        if opts.auto_remove and policy.name != "no":
            raise UsageError("Conflicting options: --restart and --rm",
                             hint="a container removed at exit cannot be restarted")
        from hv import mounts, volumes

        mount_specs = mounts.parse_all(opts.volumes, opts.mounts)
        volumes.check_sources(mount_specs)
        from hv import ports

        published = [ports.parse(p) for p in opts.publish]
        networks, add_hosts = self._plan_networks(opts)
        dns, dns_search, dns_options = self._plan_dns(opts)
        from hv.spec import check_tmpfs

        tmpfs = [check_tmpfs(t) for t in opts.tmpfs]
        stop_signal = ""
        if opts.stop_signal:
            from hv.guestops import parse_signal

            parse_signal(opts.stop_signal)  # Docker's error for a bad one, before anything
            stop_signal = opts.stop_signal  # as given, as Docker keeps it
        if opts.stop_timeout is not None and opts.stop_timeout < -1:
            raise UsageError(f"invalid --stop-timeout {opts.stop_timeout}",
                             hint="seconds to wait, or -1 to wait forever")
        # every flag and the guest checked before any download
        assets = _guest_assets(self.paths, self.config.firmware)
        image = self._image_for_run(opts.image, progress)
        proc = process_spec(image.run_config, opts, dict(self.config.environ))
        mount_specs = volumes.with_image_volumes(mount_specs, image.run_config)
        transport = self.volumes.transport() if mount_specs else None

        from hv import names
        from hv.runtime.accel import detect

        existing = self._list(check=False)
        self._sweep_links(existing)
        taken = {c.name for c in existing}
        if name is None:
            name = names.generate(taken)
        elif name in taken:
            other = next(c for c in existing if c.name == name)
            raise Conflict(
                f'The container name "/{name}" is already in use by container "{other.id}". '
                "You have to remove (or rename) that container to be able to reuse that name.",
                hint=f"remove it with 'hv rm -f {name}' or choose another --name",
            )
        if not opts.detach:
            _become_subreaper()
        accel = detect(self.paths, self.config.accel)
        warnings: list[str] = []
        if accel.name == "tcg":
            self._notice_once("accel", f"KVM is not usable here ({accel.reason}); "
                              "guests run under TCG software emulation, which is slower.",
                              warnings)
        if opts.publish_all:
            published += ports.exposed(image.run_config)
        warm = None
        if self._pool_serves(opts, mount_specs=mount_specs, published=published,
                                       memory=memory, vcpus=vcpus, cpus=cpus,
                                       networks=networks):
            warm = self._claim_pooled(image.id)  # its folder is containers/.ID now
        cid = warm or os.urandom(32).hex()
        hostname = hostname or cid[:12]
        # a renamed container's domain keeps its first name: a newcomer of that name gets
        # another domain name; a pooled VM's domain was named when it booted
        domain = name if name not in {c.domain for c in existing} else f"hv-{cid[:12]}"
        if warm:
            domain = f"hv-{cid[:12]}"
        record = Record(
            id=cid, name=name, image=opts.image, image_id=image.id, created=time.time(),
            entrypoint=proc.entrypoint, cmd=proc.cmd, env=proc.env, workdir=proc.workdir,
            user=proc.user, hostname=hostname, memory_mib=memory, vcpus=vcpus,
            nano_cpus=int(cpus * 1e9), auto_remove=opts.auto_remove, accel=accel.name,
            ports=[p.to_dict() for p in published], tty=opts.tty,
            stdin_open=opts.interactive, restart=policy.to_text(), networks=networks,
            add_hosts=add_hosts, dns=dns, dns_search=dns_search, dns_options=dns_options,
            domain=domain, stop_signal=stop_signal, stop_timeout=opts.stop_timeout,
            tmpfs=tmpfs, read_only=opts.read_only,
        )
        cdir = self.paths.container_dir(cid)
        try:
            held = (_adopt_container_dir(self.paths, cid) if warm
                    else _new_container_dir(self.paths, cid, self.libvirt.embedded))
        except BaseException:
            if warm:
                self._discard_claimed(cid)
            raise
        attached = None
        from hv.runtime.connection import Opened

        # libvirt opens in a child (since the CLI's start, or from here) while the disk and
        # seed are made; not while a first base disk is built: that can take long, and the
        # open holds the root's lock
        if self.paths.base_disk(image.id).exists():
            opened = self.libvirt.take_preopened() or Opened(self.libvirt, import_here=False)
        else:
            self.libvirt.drop_preopened()
            opened = None
        xml = None
        try:
            with _container_lock(self.paths, cid, exclusive=False):
                if warm:  # joined when it was pooled: the endpoint gets the name
                    self._name_endpoints(record)
                else:
                    self._join_networks(record, opts)  # records first: addresses for the seed
                if opts.labels:  # beside the record, before anyone can list it
                    from hv.labels import set_labels

                    set_labels(self.paths, cid, opts.labels)
                if mount_specs:
                    record.volumes, attached = self.volumes.attach(cid, mount_specs, transport)
                base = self.images.base_disk(image)
                record.base_disk = str(base)
                if not warm:
                    _make_overlay(self.paths, base, self.paths.container_disk(cid))
                waits = hold or (opts.interactive and not opts.detach)
                self._write_seed(record, wait_attach=waits,
                                 first_boot=True)
                interfaces = self._interfaces(cid)
                restrict = self._restricted(record)
                if record.networks:  # what the domain has, for `start` after a connect
                    (cdir / "nics.defined").write_text(
                        json.dumps(self._nics_mark(interfaces, restrict)))
                xml = _domain_xml(self.ctx, self.volumes, record, accel, assets, interfaces,
                                  restrict=restrict)
                if warm and start:
                    self._hand_over(record, xml, waits,
                                    via=opened)
                elif warm:  # `create`: the VM stays reserved, waiting, until `start`
                    from hv.runtime import domains

                    domains.adopt(self.libvirt, record.domain_name, record.to_dict(), xml,
                                  live=False, via=opened)
                    (cdir / "reserved").write_text("1")
                elif start:
                    self._boot(record, xml=xml, via=opened)
                else:
                    from hv.runtime import domains

                    domains.define(self.libvirt, xml, record.domain_name, via=opened)
        except BaseException as e:
            if warm:  # a claimed VM is never handed to anyone else
                from hv.runtime.domains import destroy

                with contextlib.suppress(HvError):
                    destroy(self.libvirt, record.domain_name, undefine=True)
            elif isinstance(e, KeyboardInterrupt) and xml is not None:
                _undo_start(self.libvirt, record)  # the child may have started it all the same
            if record.networks:  # no endpoint, tap or bridge outlives a failed create
                from hv.network import ops

                with contextlib.suppress(HvError, OSError):
                    ops.release(self.paths.state_root(), cid)
            shutil.rmtree(cdir, ignore_errors=True)
            if attached is not None:
                attached.undo()  # volumes and -v folders this run made
            raise
        finally:
            os.close(held)
            if opened is not None:
                opened.close()
        if attached is not None and opts.auto_remove:
            self._made[cid] = attached  # undone if the main process never starts
        if policy.name != "no" and start:
            restart.spawn_watcher(cid, self.config.child_environ())
        if warm or self._pool_serves(
                opts, mount_specs=mount_specs, published=published, memory=memory,
                vcpus=vcpus, cpus=cpus, networks=networks):
            self.refill_pool(image.id)  # detached: off this run's path
        if networks:  # the peers already running resolve the newcomer
            from hv.network import ops

            self._push_hosts(ops.peers(self.paths.state_root(), cid) - {cid})
        c = Container(record, start, paths=self.paths)
        self._container_event("create", c)
        if start:
            self._container_event("start", c)
        return Created(c, warnings)

    def _boot(self, record: Record, xml: str | None = None, via=None) -> None:
        """Start the domain (defining it from `xml` the first time), then its forwards."""
        from hv.runtime import domains

        cid = record.id
        self.paths.container_status(cid).write_bytes(b"")  # libvirt appends; one boot's lines
        # room for the guest's last words should the state root fill up while it runs
        _reserve(self.paths.container_log(cid), LOG_RESERVE)
        _reserve(self.paths.container_console(cid), CONSOLE_RESERVE)
        for f in (self.paths.container_ssh_port(cid), self.paths.container_ports(cid),
                  self.paths.container_dir(cid) / "warm",
                  self.paths.container_dir(cid) / "checkpointed"):  # hv.engine.checkpoints
            f.unlink(missing_ok=True)
        self.paths.container_started(cid).write_text(f"{time.time():.9f}")
        wanted = _forwards(record, not self._restricted(record))
        if xml is not None:
            bound = domains.start(self.libvirt, xml, record.domain_name,
                                  persistent=not record.auto_remove,
                                  forwards=wanted, via=via)
        else:
            # a Created `--rm` container is defined (persistent) until its first start
            bound = domains.start_defined(self.libvirt, record.domain_name, forwards=wanted,
                                          transient=record.auto_remove)
        self._note_forwards(record, bound)

    def _note_forwards(self, record: Record, bound: list) -> None:
        """The agent's SSH port and -p's host ports as QEMU bound them (`_forwards`)."""
        cid = record.id
        self.paths.container_ssh_port(cid).write_text(str(bound[0].host_port))
        published = record.ports if bound[1:] else []  # none without a way out (`_forwards`)
        self.paths.container_ports(cid).write_text(json.dumps([
            dict(p, host_port=b.host_port) for p, b in zip(published, bound[1:], strict=True)
        ]))

    def _sweep_links(self, existing: list[Container]) -> None:
        """What a killed QEMU or hv left: taps of containers not running (nor being made:
        a folder without a domain yet), links no record names. Sysfs reads when clean."""
        from hv.network import datapath, ops

        self._forget_vanished(existing)
        if not datapath.can_admin():
            return
        listed = {c.id for c in existing}
        running = {c.id for c in existing if c.active} | self.pool_ids() | {
            c.id for c in existing if self.paths.container_dir(c.id).joinpath("reserved").exists()}
        with contextlib.suppress(OSError):
            running |= {p.name.lstrip(".") for p in self.paths.containers_dir().iterdir()
                        if p.name not in listed}
        with contextlib.suppress(HvError, OSError):
            ops.sweep(self.paths.state_root(), running)

    def _image_for_run(self, ref: str, progress: Callable | None):
        try:
            return self.images.get(ref)
        except ImageNotFound:
            pass
        from hv.images.reference import Reference

        parsed = Reference.parse(ref)
        if parsed.digest is None and all(c in "0123456789abcdef" for c in ref) and len(ref) >= 12:
            raise ImageNotFound(f"No such image: {ref}")
        if progress is not None:  # Docker's line before the pull's own
            from hv.images.model import PullEvent

            progress(PullEvent("", f"Unable to find image '{parsed.familiar()}' locally"))
        self.libvirt.drop_preopened()  # it holds the root's lock: not for the length of a download
        return self.pull_image(ref, progress)

    def _write_seed(self, record: Record, wait_attach: bool = False,
                    maintenance: bool = False, first_boot: bool = False) -> None:
        from hv.guest.seed import write_seed

        write_seed(self.paths.container_seed(record.id), self._guest_spec(
            record, wait_attach=wait_attach, maintenance=maintenance, first_boot=first_boot))

    def _guest_spec(self, record: Record, wait_attach: bool = False,
                    maintenance: bool = False, first_boot: bool = False,
                    paths: Paths | None = None):
        """The seed's content (hv.guest.seed.GuestSpec), the container's keys made the
        first time; `paths`: where its files are (a pooled VM's: Paths.pooled())."""
        from hv.guest import keys
        from hv.guest.seed import GuestSpec

        paths = paths or self.paths
        cid = record.id
        client_key = paths.container_client_key(cid)
        if not client_key.exists():
            client, host = keys.generate(f"hv-{cid[:12]}"), keys.generate(f"hv-{cid[:12]}")
            keys.write_private(client_key, client.private_openssh)
            paths.container_client_public(cid).write_text(client.public_line + "\n")
            paths.container_host_private(cid).parent.mkdir(exist_ok=True)
            keys.write_private(paths.container_host_private(cid), host.private_openssh)
            paths.container_host_key(cid).write_text(host.public_line + "\n")

        env = list(record.env)
        if not any(e.startswith("HOSTNAME=") for e in env):
            env.insert(1 if env and env[0].startswith("PATH=") else 0,
                       f"HOSTNAME={record.hostname}")
        nics, hosts = self._guest_network(record)
        dns = self._embedded_dns(record)
        return GuestSpec(
            container_id=cid, argv=record.argv, env=env, workdir=record.workdir,
            user=record.user, hostname=record.hostname, tty=record.tty,
            stdin_open=record.stdin_open, wait_attach=wait_attach, maintenance=maintenance,
            authorized_keys=paths.container_client_public(cid).read_text(),
            ssh_host_key=paths.container_host_private(cid).read_text(),
            mounts=_guest_mounts(record, first_boot and not maintenance, maintenance),
            nics=nics, hosts=hosts, resolv=_resolv_conf(record, dns is not None), dns=dns,
            read_only=record.read_only and not maintenance,
        )

    def _notice_once(self, key: str, text: str, warnings: list[str]) -> None:
        """A warning given once per state root (the TCG notice)."""
        marker = self.paths.state_root() / f".notice-{key}"
        if marker.exists():
            return
        warnings.append(text)
        with contextlib.suppress(OSError):
            marker.write_text(text + "\n")


def _forwards(record: Record, published: bool = True) -> list:
    """What a boot forwards: the agent's SSH on its NIC, then each `-p` on the workload's
    user-mode NIC. `published` False: the container has none (`--internal` only, `none`),
    and, as on Docker, its -p publishes nothing."""
    from hv.runtime import forwards

    return [forwards.agent_forward()] + [
        forwards.Forward(p["proto"], p["host_ip"], p["host_port"], p["container_port"])
        for p in (record.ports if published else [])]


def _resolv_conf(record: Record, embedded: bool = False) -> str | None:
    """The container's /etc/resolv.conf as Docker writes it: on a user-defined network its
    embedded resolver (`embedded`: the agent's, at 127.0.0.11, `options ndots:0`), else
    `--dns`/`--dns-search`/`--dns-option`; None: the agent's (the user-mode NIC's
    resolver, 10.0.2.3)."""
    if not (embedded or record.dns or record.dns_search or record.dns_options):
        return None
    servers = ["127.0.0.11"] if embedded else record.dns or ["10.0.2.3"]
    lines = [f"nameserver {ip}" for ip in servers]
    if record.dns_search:
        lines.append("search " + " ".join(record.dns_search))
    options = list(record.dns_options)
    if embedded and not any(o.startswith("ndots:") for o in options):
        options.append("ndots:0")
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


@dataclass
class GuestAssets:
    """What guest-images/build.sh left in the guest dir: how to boot hv's guest."""

    kernel: Path
    initrd: Path
    cmdline: str
    machine: str = "pc"
    firmware: Path | None = None
    agent_disk: Path | None = None  # sshd + libraries, read-only, shared (older guests: none)


def _guest_assets(paths: Paths, firmware: str = "") -> GuestAssets:
    """`firmware`: HV_FIRMWARE, instead of the guest's own."""
    kernel, initrd = paths.guest_kernel(), paths.guest_initrd()
    if not kernel.exists() or not initrd.exists():
        raise GuestAssetsMissing(f"the guest kernel or initramfs is missing in {paths.guest_dir()}")

    def text(path: Path, default: str) -> str:
        try:
            return path.read_text().strip() or default
        except OSError:
            return default

    firmware = firmware or text(paths.guest_firmware(), "")
    agent = paths.guest_agent_disk()
    return GuestAssets(kernel, initrd, text(paths.guest_cmdline(), "console=ttyS0 panic=-1"),
                       text(paths.guest_machine(), "pc"), Path(firmware) if firmware else None,
                       agent if agent.exists() else None)


def _reserve(path: Path, nbytes: int) -> None:
    """Allocate the next `nbytes` of an append-only output file now, its size unchanged
    (fallocate KEEP_SIZE): when the filesystem under the state root fills up under a running
    guest (its disk is a file there), what the container says about it (`dd: I/O error`)
    still reaches `logs` and the terminal, and the console the kernel's side. Best effort:
    a filesystem without fallocate just gets no reserve."""
    import ctypes

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        libc.fallocate(fd, 1, os.fstat(fd).st_size, nbytes)  # 1: FALLOC_FL_KEEP_SIZE
    except (OSError, AttributeError):
        pass
    finally:
        os.close(fd)


def _make_overlay(paths: Paths, base: Path, disk: Path) -> None:
    """The container's disk: a copy of the base disk's empty overlay, which qemu-img makes
    once per base disk (a qemu-img run on every `run` costs ~10 ms). A template older than
    its base disk (rebuilt since) is made again."""
    template = paths.base_overlay(base)
    try:
        fresh = template.stat().st_mtime_ns >= base.stat().st_mtime_ns
    except FileNotFoundError:
        fresh = False
    try:
        if not fresh:
            tmp = template.with_name(f".{template.name}.{os.getpid()}")
            try:
                _qemu_img_overlay(base, tmp, paths.state_root())
                tmp.replace(template)
            finally:
                tmp.unlink(missing_ok=True)
        shutil.copyfile(template, disk)
    except OSError as e:
        raise from_os_error(e, paths.state_root()) from e


def _qemu_img_overlay(base: Path, disk: Path, root: Path) -> None:
    try:
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(disk)],
            check=True, capture_output=True, text=True,
        )
    except FileNotFoundError:
        raise RuntimeFailure("qemu-img is not installed", hint="run 'make setup'") from None
    except subprocess.CalledProcessError as e:
        if "No space left on device" in e.stderr:
            raise from_os_error(OSError(errno.ENOSPC, "No space left on device"),
                                root) from None
        raise RuntimeFailure(f"cannot create the container disk: {e.stderr.strip()}") from None


def _domain_xml(ctx: Context, volumes, record: Record, accel, assets: GuestAssets,
                interfaces: list | None = None, restrict: bool = False,
                metadata: bool = True, extra_channels: list | None = None) -> str:
    """`metadata`: False for a pooled VM (no container until claimed); `extra_channels`:
    its claim port."""
    paths = ctx.paths
    from hv.runtime.domain import (
        Balloon,
        Disk,
        DomainSpec,
        FileChannel,
        FileSerial,
        MemoryBacking,
        Rng,
        UserNetwork,
    )
    cid = record.id
    filesystems, memory_backing = volumes.domain_devices(record.volumes)
    if memory_backing is None and accel.domain_type == "qemu":
        # Under TCG, guest RAM in a memfd (4 KiB shmem pages) rather than anonymous memory
        # that QEMU madvises for transparent huge pages: a page the guest touches costs 4 KiB,
        # not 2 MiB (idle RSS -5 MiB, boot time unchanged). KVM keeps THP for its EPT.
        memory_backing = MemoryBacking()
    uuid = f"{cid[:8]}-{cid[8:12]}-{cid[12:16]}-{cid[16:20]}-{cid[20:32]}"
    return DomainSpec(
        name=record.domain_name,
        uuid=uuid,
        kernel=assets.kernel,
        initrd=assets.initrd,
        cmdline=assets.cmdline,
        machine=assets.machine,
        memory_mib=record.memory_mib,
        vcpus=record.vcpus,
        domain_type=accel.domain_type,
        # TCG's translation cache defaults to 1 GiB, of which a boot fills ~42 MiB (and keeps
        # it resident). 40 MiB: boots as fast as the default (the one flush comes as the guest
        # powers off) and idle RSS is ~10 MiB lower; 32-36 MiB flush mid-boot (+0.1 s);
        # 16 MiB thrashes (boots take 3x longer). guest-images/README.md has the numbers.
        tb_cache_mib=ctx.config.tb_cache_mib or None,
        loader=assets.firmware,
        disks=[
            Disk(paths.container_disk(cid), serial="hv-root", target="vda"),
            Disk(paths.container_seed(cid), serial="hv-seed", target="vdb", fmt="raw",
                 readonly=True),
            # the agent's /usr (sshd): one read-only file for every VM, paged in on use
            *([Disk(assets.agent_disk, serial="hv-agent", target="vdc", fmt="raw",
                    readonly=True)] if assets.agent_disk else []),
        ],
        channels=[
            FileChannel("hv.log", paths.container_log(cid), append=True),
            FileChannel("hv.status", paths.container_status(cid)),
            *(extra_channels or []),
        ],
        serial=FileSerial(paths.container_console(cid)),
        network=UserNetwork(restrict=restrict),  # --internal only, or none: no way out
        interfaces=list(interfaces or []),  # hv networks' NICs, after the user-mode one
        rng=Rng(),
        balloon=Balloon(),  # free page reporting: what the guest frees goes back to the host
        filesystems=filesystems,
        memory_backing=memory_backing,
        metadata=record.to_dict() if metadata else None,
    ).to_xml()


def _guest_mounts(record: Record, first_boot: bool, maintenance: bool = False):
    """The seed's mounts; image content is copied into empty volumes at the first boot only
    (Docker copies when the container is created). `--tmpfs` ones come last (a tmpfs
    inside a volume is Docker's order too); a maintenance boot (cp) has none: Docker copies
    into the container's own filesystem."""
    from hv.guest.seed import GuestMount
    from hv.volumes import guest_mounts

    mounts = guest_mounts(record.volumes, first_boot) if record.volumes else []
    if not maintenance:
        mounts += [GuestMount(t.partition(":")[2], "tmpfs", "", t.partition(":")[0])
                   for t in record.tmpfs]
    return mounts or None


def _undo_start(lv, record: Record) -> None:
    """After ^C during the start: no domain of this container may outlive its folder. A
    second ^C must not cut the clean-up short."""
    from hv.runtime import domains

    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with contextlib.suppress(HvError):
            domains.discard_if(lv, record.domain_name, record.id)
    finally:
        signal.signal(signal.SIGINT, old)
