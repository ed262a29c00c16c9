"""The one facade the CLI (and later an HTTP API) calls. It never prints.

`run` is create + start + (for the CLI) follow the output until exit. The pieces:
images (hv.images), the container record and state (hv.containers), the domain XML and
libvirt (hv.runtime), the seed ISO and the agent's protocol (hv.guest).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from hv import paths
from hv.containers import Container, Record
from hv.errors import (
    CommandNotExecutable,
    CommandNotFound,
    Conflict,
    ContainerNotFound,
    GuestAssetsMissing,
    HvError,
    ImageNotFound,
    RuntimeFailure,
    UsageError,
    from_os_error,
)
from hv.spec import RunOptions, check_hostname, check_name, parse_cpus, parse_memory, process_spec

DEFAULT_MEMORY_MIB = 512
START_TIMEOUT = float(os.environ.get("HV_START_TIMEOUT", "180"))
POLL = 0.02
POLL_BRISK = 0.005
LOG_RESERVE = 256 * 1024
CONSOLE_RESERVE = 64 * 1024


@dataclass
class LogLine:
    stream: int  # 1 stdout, 2 stderr
    ts_ns: int
    data: bytes


@dataclass
class Created:
    """What create returns (Docker's ContainerCreate: the container and its warnings)."""

    container: Container
    warnings: list[str]


@dataclass
class RunResult:
    """The end of a `run`: the container, its exit code (None for a detached run, which
    returns once the main process started; 130 when interrupted, the VM stopped)."""

    container: Container
    exit_code: int | None


class Engine:
    def __init__(self) -> None:
        self._infos: dict = {}  # container id -> its DomainInfo, from the last listing
        self._paused_why: dict[str, str] = {}  # container id -> why QEMU/libvirt paused it
        self._made: dict = {}  # container id -> the volumes and folders its `run` made

    @cached_property
    def images(self):
        from hv.images.store import ImageStore
        from hv.runtime.connection import is_embedded

        return ImageStore(paths.images_root(), qemu_reads_by_path=not is_embedded())

    # --- images -------------------------------------------------------------------------

    @staticmethod
    def image_reference(text: str):
        """A parsed image reference (familiar form, tag, digest), Docker's parsing rules."""
        from hv.images.reference import Reference

        return Reference.parse(text)

    # --- volumes and the system (the facade's; front ends never import hv.volumes) ----------

    @staticmethod
    def volume_create(name: str | None, labels: dict[str, str]):
        from hv import volumes

        return volumes.create(name, labels)

    @staticmethod
    def volume_list() -> list:
        from hv import volumes

        return volumes.list_volumes()

    @staticmethod
    def volume_users() -> dict[str, list[str]]:
        from hv import volumes

        return volumes.users()

    @staticmethod
    def volume(name: str):
        from hv import volumes

        return volumes.get(name)

    @staticmethod
    def volume_remove(name: str, force: bool = False) -> str:
        from hv import volumes

        return volumes.remove(name, force=force)

    @staticmethod
    def volume_prune(all: bool = False) -> tuple[list[str], int]:
        from hv import volumes

        return volumes.prune(all=all)

    def system_prune(self, all_images: bool = False, with_volumes: bool = False):
        from hv import system

        return system.prune(self, all_images=all_images, with_volumes=with_volumes)

    def system_df(self) -> list[dict]:
        from hv import system

        return system.df(self)

    def image_users(self, image_id: str) -> list[str]:
        """Ids of the containers (any state) created from `image_id`."""
        return [c.id for c in self.containers(all=True) if c.record.image_id == image_id]

    def remove_image(self, ref: str, force: bool = False) -> list[tuple[str, str]]:
        return self.images.remove(ref, force=force, users=self.image_users)

    # --- listing and lookup --------------------------------------------------------------

    def containers(self, all: bool = False) -> list[Container]:
        """Every container (`all`) or the running ones, as they are now: a VM that QEMU
        paused by itself shows as paused, and one that lost a shared folder for good is
        stopped first (see `_stop_broken`)."""
        found = self._list(check=True)
        return found if all else [c for c in found if c.active]

    def _list(self, check: bool) -> list[Container]:
        """The container table from libvirt's files; `check`: ask each running QEMU for its
        run state and check its virtiofsd processes (~1 ms a container; a `run`'s name
        check and a look-up by name do without, a look-up checks the one it found)."""
        from hv.runtime.connection import is_embedded
        from hv.runtime.domains import list_domains, probe_run_states, running

        embedded = is_embedded()
        infos = list_domains()
        if check:
            probe_run_states(infos)
        found = []
        for info in infos:
            try:
                record = Record.from_dict(info.record)
            except TypeError:
                continue
            active = info.active and (not embedded or running(info.name))
            c = Container(record, active, info.paused)
            self._infos[record.id] = info
            found.append(self._checked(c, info) if check else c)
        self._collect_garbage({c.id for c in found})
        found.sort(key=lambda c: c.record.created, reverse=True)
        return found

    def container(self, ref: str) -> Container:
        """By full id, unique id prefix, or name (with or without Docker's leading '/')."""
        ref = ref.strip()
        if not ref:
            raise ContainerNotFound("No such container: ")
        cs = self._list(check=False)
        name = ref.lstrip("/")
        for c in cs:
            if c.id == ref or c.name == name:
                return self._check_one(c)
        matches = [c for c in cs if c.id.startswith(ref.lower())]
        if len(matches) == 1:
            return self._check_one(matches[0])
        if len(matches) > 1:
            raise UsageError(f"multiple IDs found with provided prefix: {ref}",
                             hint="give more characters of the id")
        raise ContainerNotFound(f"No such container: {ref}")

    def _check_one(self, c: Container) -> Container:
        from hv.runtime.domains import probe_run_states

        info = self._infos.get(c.id)
        if info is None or not c.active:
            return c
        probe_run_states([info])
        return self._checked(Container(c.record, c.active, info.paused), info)

    def _checked(self, c: Container, info) -> Container:
        """`c` as it is: a running container whose virtiofsd died is stopped here."""
        from hv.runtime.domains import dead_shares

        if info.paused and info.reason:
            self._paused_why[c.id] = info.reason
        if not c.active:
            return c
        dead = dead_shares(info)
        return self._stop_broken(c, info, dead) if dead else c

    def _stop_broken(self, c: Container, info, dead_tags: list[str]) -> Container:
        """A running container whose virtiofsd died has failed; hv stops it.

        The decision: QEMU 7.2's vhost-user-fs cannot reconnect to a new virtiofsd, so
        every access the guest makes to that share waits forever, inside the guest's
        kernel, where no signal from the container ends it (`hv exec c ls /data` hung, and
        `ps` said Up). The container has lost part of itself for good, as one whose
        runtime died under Docker: it is reported as exited, not left looking healthy.
        The first hv command that notices (any listing or look-up, a foreground run's
        wait, the exec multiplexer's watch) kills the VM, records exit code 137
        with the reason as the container's error (`inspect`'s State.Error), and what the
        user asked for fails with that reason and the hint to start it again; a restart
        policy restarts it as after any other death, and `hv start` brings it back whole
        (libvirt starts new virtiofsd). Files in volumes and bind folders are untouched.
        A stop already under way (`stop`, `kill`, `rm`: their marker; or the guest's own
        power-off: its `exited` line) is left alone.
        """
        from hv.guest import mux
        from hv.guest.logstream import read_status
        from hv.runtime.domains import dead_shares, qemu_pid, running

        status = paths.container_status(c.id)
        for _ in range(2):  # a virtiofsd ends as its QEMU does: give a power-off a moment
            if paths.container_dir(c.id).joinpath("user-stopped").exists() \
                    or read_status(status).exit_code is not None or not running(c.name):
                return c if running(c.name) else Container(c.record, False)
            dead_tags = dead_shares(info)
            if not dead_tags:
                return c
            time.sleep(0.2)
        targets = [v["target"] for v in c.record.volumes if v.get("tag") in dead_tags]
        why = (f"stopped by hv: the virtiofsd serving {', '.join(targets) or 'a shared folder'}"
               " exited, and a running VM cannot get a share back")
        pid = qemu_pid(c.name)
        if pid is None:
            return Container(c.record, False)
        # QEMU is killed as `kill -9` would (libvirt notes it at its next connection; its
        # reconnect to this QEMU fails anyway, after ~2 s). Stopped first, so the reason is
        # in the status file before anyone sees the VM gone, and the guest cannot write
        # over it (QEMU writes that file at its own offset).
        try:
            os.kill(pid, signal.SIGSTOP)
        except OSError:
            return Container(c.record, False)
        st = read_status(status)
        if st.exit_code is not None and not (st.error and st.started_ns is not None):
            os.kill(pid, signal.SIGCONT)  # the guest was exiting after all
            return c
        if st.exit_code is None:  # (else another hv command is at it already)
            with contextlib.suppress(OSError), open(status, "a") as f:
                f.write(f"error 137 {why}\nexited 137 {time.time_ns()}\n")
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while running(c.name) and time.monotonic() < deadline:
            time.sleep(0.01)  # (reaped by init later; `start` waits for that itself)
        mux.stop(c.id)
        return Container(c.record, False)

    def _collect_garbage(self, live_ids: set[str]) -> None:
        """Remove folders of containers whose domain is gone (an exited `--rm -d`)."""
        root = paths.containers_dir()
        if not root.is_dir():
            return
        for d in root.iterdir():
            if d.name in live_ids:
                continue
            if d.name.startswith("."):  # being created (see _new_container_dir)
                with contextlib.suppress(OSError):
                    if time.time() - d.stat().st_mtime > 3600:
                        shutil.rmtree(d, ignore_errors=True)  # left by a crash
                continue
            with _container_lock(d.name, exclusive=True, wait=False) as got:
                if got:
                    _remove_container_dir(d.name, anonymous_volumes=True)

    # --- run -----------------------------------------------------------------------------

    def create(self, opts: RunOptions, progress: Callable | None = None) -> Created:
        """Validate, pull if needed (its events, 'Unable to find image' first, go to
        `progress`), make the disk and seed, start the VM."""
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
        assets = _guest_assets()  # every flag and the guest checked before any download
        image = self._image_for_run(opts.image, progress)
        proc = process_spec(image.run_config, opts)
        mount_specs = volumes.with_image_volumes(mount_specs, image.run_config)
        transport = volumes.transport() if mount_specs else None

        from hv import names
        from hv.runtime.accel import detect

        existing = self._list(check=False)
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
        accel = detect()
        warnings: list[str] = []
        if accel.name == "tcg":
            self._notice_once("accel", f"KVM is not usable here ({accel.reason}); "
                              "guests run under TCG software emulation, which is slower.",
                              warnings)
        if opts.publish_all:
            published += ports.exposed(image.run_config)
        cid = os.urandom(32).hex()
        hostname = hostname or cid[:12]
        record = Record(
            id=cid, name=name, image=opts.image, image_id=image.id, created=time.time(),
            entrypoint=proc.entrypoint, cmd=proc.cmd, env=proc.env, workdir=proc.workdir,
            user=proc.user, hostname=hostname, memory_mib=memory, vcpus=vcpus,
            nano_cpus=int(cpus * 1e9), auto_remove=opts.auto_remove, accel=accel.name,
            ports=[p.to_dict() for p in published], tty=opts.tty,
            stdin_open=opts.interactive, restart=policy.to_text(),
        )
        cdir = paths.container_dir(cid)
        held = _new_container_dir(cid)
        attached = None
        from hv.runtime.connection import Opened, drop_preopened, take_preopened

        # libvirt opens in a child (since the CLI's start, or from here) while the disk and
        # seed are made; not while a first base disk is built: that can take long, and the
        # open holds the root's lock
        if paths.base_disk(image.id).exists():
            opened = take_preopened() or Opened(import_here=False)
        else:
            drop_preopened()
            opened = None
        xml = None
        try:
            with _container_lock(cid, exclusive=False):
                if mount_specs:
                    record.volumes, attached = volumes.attach(cid, mount_specs, transport)
                base = self.images.base_disk(image)
                record.base_disk = str(base)
                _make_overlay(base, paths.container_disk(cid))
                self._write_seed(record, wait_attach=opts.interactive and not opts.detach,
                                 first_boot=True)
                xml = _domain_xml(record, accel, assets)
                self._boot(record, xml=xml, via=opened)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt) and xml is not None:
                _undo_start(record)  # the child may have started it all the same
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
        if policy.name != "no":
            restart.spawn_watcher(cid)
        return Created(Container(record, True), warnings)

    def run(self, opts: RunOptions, progress: Callable | None = None,
            on_created: Callable[[Created], None] | None = None,
            on_output: Callable[[LogLine], None] | None = None) -> RunResult:
        """Docker's `run` without a terminal: create and start, then for `-d` wait until the
        main process started, else follow its output (`on_output`) to its exit; `--rm`
        removes it, and a failed start leaves nothing. `-i` runs compose create + attach."""
        created = self.create(opts, progress)
        if on_created is not None:
            on_created(created)
        c = created.container
        try:
            if opts.detach:
                self.wait_started(c)
                return RunResult(c, None)
            code = self.follow(c, on_output or (lambda _line: None))
        except KeyboardInterrupt:
            self.stop_now(c)
            return RunResult(c, 130)
        except BaseException:
            self.finish_run(c)  # `--rm`: nothing stays behind
            raise
        self.finish_run(c)
        return RunResult(c, code)

    def _boot(self, record: Record, xml: str | None = None, via=None) -> None:
        """Start the domain (defining it from `xml` the first time), then its forwards."""
        from hv.runtime import domains, forwards

        cid = record.id
        paths.container_status(cid).write_bytes(b"")  # libvirt appends; one boot's lines
        # room for the guest's last words should the state root fill up while it runs
        _reserve(paths.container_log(cid), LOG_RESERVE)
        _reserve(paths.container_console(cid), CONSOLE_RESERVE)
        for f in (paths.container_ssh_port(cid), paths.container_ports(cid)):
            f.unlink(missing_ok=True)
        paths.container_started(cid).write_text(f"{time.time():.9f}")
        wanted = [forwards.Forward("tcp", "127.0.0.1", 0, 22)] + [
            forwards.Forward(p["proto"], p["host_ip"], p["host_port"], p["container_port"])
            for p in record.ports]
        if xml is not None:
            bound = domains.start(xml, record.name, persistent=not record.auto_remove,
                                  forwards=wanted, via=via)
        else:
            bound = domains.start_defined(record.name, forwards=wanted)
        paths.container_ssh_port(cid).write_text(str(bound[0].host_port))
        paths.container_ports(cid).write_text(json.dumps([
            dict(p, host_port=b.host_port) for p, b in zip(record.ports, bound[1:], strict=True)
        ]))

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
        from hv.runtime.connection import drop_preopened

        drop_preopened()  # it holds the root's lock: not for the length of a download
        return self.images.pull(ref, progress)

    def _write_seed(self, record: Record, wait_attach: bool = False,
                    maintenance: bool = False, first_boot: bool = False) -> None:
        from hv.guest import keys
        from hv.guest.seed import GuestSpec, write_seed

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
        write_seed(paths.container_seed(cid), GuestSpec(
            container_id=cid, argv=record.argv, env=env, workdir=record.workdir,
            user=record.user, hostname=record.hostname, tty=record.tty,
            stdin_open=record.stdin_open, wait_attach=wait_attach, maintenance=maintenance,
            authorized_keys=paths.container_client_public(cid).read_text(),
            ssh_host_key=paths.container_host_private(cid).read_text(),
            mounts=_guest_mounts(record, first_boot and not maintenance),
        ))

    @staticmethod
    def _notice_once(key: str, text: str, warnings: list[str]) -> None:
        """A warning given once per state root (the TCG notice)."""
        marker = paths.state_root() / f".notice-{key}"
        if marker.exists():
            return
        warnings.append(text)
        with contextlib.suppress(OSError):
            marker.write_text(text + "\n")

    # --- waiting and output --------------------------------------------------------------

    def wait_started(self, c: Container, timeout: float = START_TIMEOUT) -> None:
        """Block until the main process runs (Docker's `run -d` returns then) or failed."""
        from hv.guest.logstream import read_status

        deadline = time.monotonic() + timeout
        status_path = paths.container_status(c.id)
        while True:
            st = read_status(status_path)
            if st.started_ns is not None:
                return
            if st.error is not None:
                raise _exec_error(st.error_code, st.error)
            if st.exit_code is not None:
                return
            if not self._alive(c):
                st = read_status(status_path)
                if st.started_ns is not None:
                    return
                if st.error is not None:
                    raise _exec_error(st.error_code, st.error)
                if st.exit_code is not None:
                    return
                raise _not_ready(c, "the VM powered off before the container started")
            if time.monotonic() > deadline:
                raise _not_ready(c, f"the container did not start within {timeout:.0f} s")
            time.sleep(POLL)

    def _alive(self, c: Container) -> bool:
        from hv.runtime.connection import is_embedded
        from hv.runtime.domains import is_active, qemu_pid

        if is_embedded():
            return qemu_pid(c.name) is not None
        return bool(is_active(c.name))

    def follow(self, c: Container, on_line: Callable[[LogLine], None]) -> int:
        """Stream the main process's output from the start until it exits; its exit code.

        Raises the exec error (126/127) when the command could not be started.
        """
        from hv.guest.logstream import LogDecoder, read_status

        log_path = paths.container_log(c.id)
        status_path = paths.container_status(c.id)
        from hv.runtime.domains import qemu_exit_fd

        decoder = LogDecoder()
        offset = 0
        exit_fd = qemu_exit_fd(c.name)  # power-off wakes us at once, output is polled
        # short commands end within the first seconds: poll briskly there, gently after
        brisk_until = time.monotonic() + 2.0
        # a virtiofsd that dies under the run would leave it waiting forever: looked at
        # once a second (a few file reads), see _stop_broken
        shares_at = time.monotonic() + 1.0 if _virtiofs(c) else None
        try:
            with _container_lock(c.id, exclusive=False):
                while True:
                    offset = _pump(log_path, offset, decoder, on_line)
                    if shares_at is not None and time.monotonic() > shares_at:
                        shares_at = time.monotonic() + 1.0
                        self._watch_shares(c)
                    st = read_status(status_path)
                    if st.exit_code is not None and exit_fd is not None and _discarded_at_exit(c):
                        # the guest wrote its output, unmounted and synced the disk, then
                        # `exited`; all it has left is powering off a VM --rm throws away
                        with contextlib.suppress(OSError):
                            signal.pidfd_send_signal(exit_fd, signal.SIGKILL)
                    if st.exit_code is not None or not self._alive(c):
                        _wait_gone(self, c, exit_fd)
                        _pump(log_path, offset, decoder, on_line)
                        st = read_status(status_path)
                        break
                    _wait_exit(exit_fd, POLL_BRISK if time.monotonic() < brisk_until else POLL)
        finally:
            if exit_fd is not None:
                os.close(exit_fd)
        if st.error is not None and st.started_ns is not None:
            raise _stopped(c, st.error)  # it ran; hv stopped it (see _stop_broken)
        if st.error is not None:
            raise _exec_error(st.error_code, st.error)
        return 137 if st.exit_code is None else st.exit_code

    def _watch_shares(self, c: Container) -> None:
        """Stop `c` if one of its virtiofsd died (the domain's info read once per boot)."""
        from hv.runtime.domains import dead_shares, list_domains

        info = self._infos.get(c.id)
        if info is None or not info.dom_id:
            info = next((i for i in list_domains() if i.name == c.name and i.active), None)
            if info is None:
                return
            self._infos[c.id] = info
        dead = dead_shares(info)
        if dead:
            self._stop_broken(c, info, dead)

    def logs(self, ref: str, follow: bool = False, tail: int | None = None
             ) -> Iterator[LogLine]:
        """Lines of the container's output (Docker splits and counts by line)."""
        from hv.guest.logstream import LogDecoder

        c = self.container(ref)
        log_path = paths.container_log(c.id)
        decoder = LogDecoder()
        splitter = _LineSplitter()
        offset = _pump(log_path, 0, decoder, splitter.feed)
        lines = splitter.lines + splitter.flush(final=not (follow and c.active))
        splitter.lines = []
        if tail is not None and tail >= 0:
            lines = lines[-tail:] if tail else []
        yield from lines
        if not follow:
            return
        with _container_lock(c.id, exclusive=False):
            while True:
                alive = self._alive(c)
                offset = _pump(log_path, offset, decoder, splitter.feed)
                yield from splitter.lines
                splitter.lines = []
                if not alive:
                    yield from splitter.flush(final=True)
                    return
                time.sleep(0.05)

    def wait(self, ref: str) -> int:
        c = self.container(ref)
        with _container_lock(c.id, exclusive=False):
            while c.active and self._alive(c):
                time.sleep(0.05)
            return Container(c.record, False).state().exit_code

    # --- inside and around a running container --------------------------------------------

    def exec(self, ref: str, argv: list[str], env: list[str], env_files: list[str],
             workdir: str | None, user: str | None, pty: tuple[str, int, int] | None):
        """(agent, channel) running argv in the container; the caller pumps the streams."""
        from hv import guestops
        from hv.guest.attach import session_command
        from hv.spec import parse_env_item, read_env_file

        c = self.container(ref)
        if not c.active:
            raise guestops.not_running(c)
        if c.paused:  # its sessions would hang until unpaused
            raise Conflict(f"Container {c.id} is paused{self._paused_by(c)}, unpause the "
                           "container before exec", hint=self._unpause_hint(c))
        if not argv:
            raise UsageError("exec needs a command", hint="hv exec CONTAINER COMMAND [ARG...]")
        extra = []
        for item in [i for f in env_files for i in read_env_file(f)] + list(env):
            value = parse_env_item(item, dict(os.environ))
            if value is not None:
                extra.append(value)
        if workdir is not None and not workdir.startswith("/"):
            raise UsageError(f"the working directory '{workdir}' is invalid, it needs to be "
                             "an absolute path", hint="use -w /absolute/path")
        agent = guestops.connect_agent(c)
        ch = agent.open(session_command("exec", argv, extra, workdir, user), pty=pty)
        return agent, ch

    def _paused_by(self, c: Container) -> str:
        """Why, when it was not `hv pause`: libvirt's reason or QEMU's run state."""
        why = self._paused_why.get(c.id, "")
        if why in ("ioerror", "io-error"):
            return " (QEMU paused it on an I/O error of its disk)"
        if why in ("", "user", "paused"):
            return ""
        return f" (QEMU paused it: {why.replace('-', ' ')})"

    def _unpause_hint(self, c: Container) -> str:
        if self._paused_why.get(c.id) in ("ioerror", "io-error"):
            return (f"free space under {paths.state_root()} (or fix its disk), then "
                    f"'hv unpause {c.name}' retries the write")
        return f"hv unpause {c.name}"

    def attach(self, ref: str):
        """(container, agent, channel) speaking the attach frame protocol."""
        from hv import guestops
        from hv.guest.attach import session_command

        c = self.container(ref)
        if not c.active:
            raise Conflict("You cannot attach to a stopped container, start it first",
                           hint=f"hv start -a {c.name}")
        if c.paused:
            raise Conflict(f"You cannot attach to a paused container{self._paused_by(c)}, "
                           "unpause it first", hint=self._unpause_hint(c))
        agent = guestops.connect_agent(c)
        return c, agent, agent.open(session_command("attach"))

    def stop(self, ref: str, timeout: int = 10) -> Container:
        from hv import guestops, restart
        from hv.guest import mux

        c = self.container(ref)
        restart.mark_user_stop(c.id)
        try:
            guestops.stop(c, timeout)
        finally:
            mux.stop(c.id)  # it exits with the guest anyway; never outlive a stop
        return c

    def start(self, ref: str, watch: bool = True) -> Container:
        from hv import restart
        from hv.runtime.domains import wait_reaped

        c = self.container(ref)
        if c.active:
            return c
        wait_reaped(c.name)  # libvirt must see the last QEMU gone before it starts another
        restart.clear_user_stop(c.id)
        self._write_seed(c.record)
        self._boot(c.record)
        if watch and c.record.restart != "no":
            restart.spawn_watcher(c.id)
        return Container(c.record, True)

    def restart(self, ref: str, timeout: int = 10) -> Container:
        self.stop(ref, timeout)
        return self.start(ref)

    def kill(self, ref: str, signal: str = "KILL") -> Container:
        from hv import guestops, restart

        signum = guestops.parse_signal(signal)
        c = self.container(ref)
        if c.active:
            restart.mark_user_stop(c.id)
        guestops.kill(c, signum)
        if signum == 9:  # SIGKILL: the guest is down; other signals may leave it running
            from hv.guest import mux

            mux.stop(c.id)
        return c

    def pause(self, ref: str, paused: bool = True) -> Container:
        from hv import guestops

        c = self.container(ref)
        guestops.pause(c, paused)
        return c

    def ports(self, ref: str) -> tuple[Container, list[dict]]:
        c = self.container(ref)
        return c, c.bound_ports()

    def top(self, ref: str, args: list[str]) -> str:
        from hv import guestops

        return guestops.top(self.container(ref), args)

    def stats(self, refs: list[str], all: bool = False) -> list[dict]:
        from hv import guestops

        cs = [self.container(r) for r in refs] if refs else self.containers(all=all)
        return guestops.stats(cs)

    def copy(self, src: str, dest: str, follow: bool = False, archive: bool = False,
             stdin=None, stdout=None) -> None:
        """`hv cp`: one side is CONTAINER:PATH; `-` streams a tar on stdin/stdout."""
        from hv import copy as cp

        s_c, s_path = cp.parse_target(src)
        d_c, d_path = cp.parse_target(dest)
        if (s_c is None) == (d_c is None):
            raise UsageError("copying between containers or between two local paths is not "
                             "supported", hint="one side must be CONTAINER:PATH")
        c = self.container(s_c or d_c)
        with self._agent_for_copy(c) as agent:
            if s_c is not None:
                target = stdout if d_path == "-" else d_path
                cp.copy_out(agent, c.name, s_path, target, follow, archive)
            else:
                source = stdin if s_path == "-" else s_path
                cp.copy_in(agent, c.name, source, d_path, follow, archive)

    @contextlib.contextmanager
    def _agent_for_copy(self, c: Container):
        """The running agent (through its exec multiplexer: `stat` and small copies ride it,
        big ones go over `ssh`, hv.guest.bulk), or the stopped container booted in
        maintenance mode (a direct connection: that VM is gone again after the copy)."""
        from hv import guestops
        from hv.runtime import domains, forwards

        if c.active:
            agent = guestops.connect_agent(c)
            try:
                yield agent
            finally:
                agent.close()
            return
        if not c.record.auto_remove:
            self._write_seed(c.record, maintenance=True)
        _become_subreaper()  # reap the maintenance QEMU at once when it is destroyed
        status = paths.container_status(c.id)
        saved = status.read_bytes() if status.exists() else b""  # libvirt truncates it
        mtime = status.stat().st_mtime if status.exists() else None
        try:
            domains.start_defined(c.name)
            try:
                bound = forwards.add(c.name, [forwards.Forward("tcp", "127.0.0.1", 0, 22)])
                paths.container_ssh_port(c.id).write_text(str(bound[0].host_port))
                agent = guestops.connect_agent(Container(c.record, True), direct=True)
                try:
                    yield agent
                finally:
                    agent.close()
            finally:
                domains.destroy(c.name)
                guestops.wait_powered_off(c, 10)
                paths.container_ssh_port(c.id).unlink(missing_ok=True)
        finally:
            status.write_bytes(saved)  # the container's last exit, as before the copy
            if mtime is not None:
                os.utime(status, (mtime, mtime))
            self._write_seed(c.record)

    # --- removal -------------------------------------------------------------------------

    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> str:
        """`rm` (`-v`: and the container's anonymous volumes no other container uses)."""
        c = self.container(ref)
        if c.active and not force:
            raise Conflict(
                f'cannot remove container "/{c.name}": container is running: stop the '
                "container before removing or force remove",
                hint=f"use 'hv rm -f {c.name}'",
            )
        self._discard(c, volumes=volumes)
        return ref

    def _discard(self, c: Container, volumes: bool = False) -> None:
        from hv import restart
        from hv.guest import mux
        from hv.runtime.domains import destroy

        restart.mark_user_stop(c.id)
        destroy(c.name, undefine=True)
        mux.stop(c.id)
        # `--rm` takes its anonymous volumes along, as Docker's does
        _remove_container_dir(c.id, anonymous_volumes=volumes or c.record.auto_remove)

    def stop_now(self, c: Container) -> None:
        """Ctrl-C on a foreground run: power the VM off now (and `--rm` removes it)."""
        from hv.guest import mux
        from hv.runtime.domains import destroy

        destroy(c.name, undefine=c.record.auto_remove)
        mux.stop(c.id)
        if c.record.auto_remove:
            undo = self._made_by_failed_run(c)
            _remove_container_dir(c.id, anonymous_volumes=True)
            if undo is not None:
                undo.undo()

    def container_running(self, c: Container) -> bool:
        return self._alive(c)

    def exit_code(self, c: Container) -> int:
        """After the guest powered off: the main process's code (137 when it was killed)."""
        _wait_gone(self, c)
        return Container(c.record, False).state().exit_code

    def finish_run(self, c: Container) -> None:
        """After a foreground run ended: `--rm` removes the container.

        A transient domain whose QEMU is gone needs no libvirt call (~30 ms on every
        `run --rm`): libvirt drops it at its next connection, and hv's listing already
        treats it as gone. With volumes the call stays, to end their virtiofsd at once.
        """
        if not c.record.auto_remove:
            return
        undo = self._made_by_failed_run(c)
        if c.record.volumes or self._alive(c):
            self._discard(c)
        else:
            _remove_container_dir(c.id, anonymous_volumes=True)
        if undo is not None:
            undo.undo()  # after the container is gone: its mounts no longer use them

    def _made_by_failed_run(self, c: Container):
        """What this process's `run --rm` of `c` made (volumes, `-v` folders), when its main
        process never started (a bad user, 126/127, a failed mount, the VM died first):
        such a run leaves nothing behind, as README says. Never what existed before it
        (only what `volumes.attach` made), never a volume another container took up since,
        never a folder that is no longer empty. A run whose container stays (no `--rm`)
        keeps them: they are that container's, as with Docker."""
        from hv.guest.logstream import read_status

        made = self._made.pop(c.id, None)
        if made is None or read_status(paths.container_status(c.id)).started_ns is not None:
            return None
        return made


# --- helpers ------------------------------------------------------------------------------


@dataclass
class GuestAssets:
    """What guest-images/build.sh left in the guest dir: how to boot hv's guest."""

    kernel: Path
    initrd: Path
    cmdline: str
    machine: str = "pc"
    firmware: Path | None = None
    agent_disk: Path | None = None  # sshd + libraries, read-only, shared (older guests: none)


def _guest_assets() -> GuestAssets:
    kernel, initrd = paths.guest_kernel(), paths.guest_initrd()
    if not kernel.exists() or not initrd.exists():
        raise GuestAssetsMissing(f"the guest kernel or initramfs is missing in {paths.guest_dir()}")

    def text(path: Path, default: str) -> str:
        try:
            return path.read_text().strip() or default
        except OSError:
            return default

    firmware = os.environ.get("HV_FIRMWARE") or text(paths.guest_firmware(), "")
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


def _make_overlay(base: Path, disk: Path) -> None:
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
                _qemu_img_overlay(base, tmp)
                tmp.replace(template)
            finally:
                tmp.unlink(missing_ok=True)
        shutil.copyfile(template, disk)
    except OSError as e:
        raise from_os_error(e, paths.state_root()) from e


def _qemu_img_overlay(base: Path, disk: Path) -> None:
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
                                paths.state_root()) from None
        raise RuntimeFailure(f"cannot create the container disk: {e.stderr.strip()}") from None


def _domain_xml(record: Record, accel, assets: GuestAssets) -> str:
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
    from hv.volumes import domain_devices

    cid = record.id
    filesystems, memory_backing = domain_devices(record.volumes)
    if memory_backing is None and accel.domain_type == "qemu":
        # Under TCG, guest RAM in a memfd (4 KiB shmem pages) rather than anonymous memory
        # that QEMU madvises for transparent huge pages: a page the guest touches costs 4 KiB,
        # not 2 MiB (idle RSS -5 MiB, boot time unchanged). KVM keeps THP for its EPT.
        memory_backing = MemoryBacking()
    uuid = f"{cid[:8]}-{cid[8:12]}-{cid[12:16]}-{cid[16:20]}-{cid[20:32]}"
    return DomainSpec(
        name=record.name,
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
        tb_cache_mib=int(os.environ.get("HV_TB_CACHE_MIB", "40")) or None,
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
        ],
        serial=FileSerial(paths.container_console(cid)),
        network=UserNetwork(),
        rng=Rng(),
        balloon=Balloon(),  # free page reporting: what the guest frees goes back to the host
        filesystems=filesystems,
        memory_backing=memory_backing,
        metadata=record.to_dict(),
    ).to_xml()


def _guest_mounts(record: Record, first_boot: bool):
    """The seed's mounts; image content is copied into empty volumes at the first boot only
    (Docker copies when the container is created)."""
    from hv.volumes import guest_mounts

    return guest_mounts(record.volumes, first_boot) if record.volumes else None


def _new_container_dir(cid: str) -> int:
    """Make the container's folder with its lock already held (shared); the lock's fd.

    The folder is made under a dot-name, locked, then renamed into place: garbage
    collection (any concurrent `ps`) skips dot-names and cannot take the lock of a folder
    whose domain does not exist yet.
    """
    from hv.runtime.connection import is_embedded

    # disks, output and keys are the user's alone, as Docker's containers folder is root's;
    # a libvirtd runs QEMU as its own user, which must still reach the files by path
    mode = 0o700 if is_embedded() else 0o711
    root = paths.containers_dir()
    root.mkdir(parents=True, exist_ok=True)
    if root.stat().st_mode & 0o777 != mode:
        root.chmod(mode)  # made by an older hv with the umask's mode
    cdir = paths.container_dir(cid)
    staging = cdir.with_name("." + cid)
    staging.mkdir(mode=mode)
    fd = os.open(staging / paths.container_lock(cid).name,
                 os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    staging.rename(cdir)
    return fd


def _remove_container_dir(cid: str, anonymous_volumes: bool) -> None:
    from hv import volumes

    anonymous = volumes.anonymous_of(cid) if anonymous_volumes else []
    shutil.rmtree(paths.container_dir(cid), ignore_errors=True)
    if anonymous:
        volumes.remove_anonymous(anonymous)


@contextlib.contextmanager
def _container_lock(cid: str, exclusive: bool, wait: bool = True) -> Iterator[bool]:
    """Shared while a container is used; exclusive (non-blocking) to garbage-collect it."""
    path = paths.container_lock(cid)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        yield False
        return
    try:
        flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if not wait:
            flags |= fcntl.LOCK_NB
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _pump(path: Path, offset: int, decoder, on_line: Callable) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    if data:
        for rec in decoder.feed(data):
            on_line(LogLine(rec.stream, rec.ts_ns, rec.data))
    return offset + len(data)


def _undo_start(record: Record) -> None:
    """After ^C during the start: no domain of this container may outlive its folder. A
    second ^C must not cut the clean-up short."""
    from hv.runtime import domains

    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with contextlib.suppress(HvError):
            domains.discard_if(record.name, record.id)
    finally:
        signal.signal(signal.SIGINT, old)


def _discarded_at_exit(c: Container) -> bool:
    """Nothing of this container outlives its main process: `--rm`, no volumes (their
    virtiofsd and folders are ended by the guest's clean power-off and the destroy)."""
    return c.record.auto_remove and not c.record.volumes


def _wait_exit(exit_fd: int | None, timeout: float) -> None:
    """Sleep `timeout`, or less when the QEMU behind `exit_fd` (a pidfd) exits."""
    if exit_fd is None:
        time.sleep(timeout)
    else:
        import select

        select.select([exit_fd], [], [], timeout)


def _wait_gone(engine: Engine, c: Container, exit_fd: int | None = None,
               timeout: float = 10.0) -> None:
    from hv.runtime.connection import reap_children
    from hv.runtime.domains import wait_reaped

    deadline = time.monotonic() + timeout
    while engine._alive(c) and time.monotonic() < deadline:
        _wait_exit(exit_fd, POLL)
    if exit_fd is not None:
        # a killed QEMU stops counting as alive before its threads are gone (~15 ms of
        # tearing down its memory); the pidfd says when it can be reaped
        _wait_exit(exit_fd, max(0.0, deadline - time.monotonic()))
    reap_children()
    # a QEMU we adopted may be a zombie whose last threads are still exiting (seen with a
    # vhost-user virtiofs device): wait_reaped reaps it once they are gone
    wait_reaped(c.name)


def _become_subreaper() -> None:
    """Adopt the QEMU we start, so its exit is reaped at once.

    libvirt daemonizes QEMU; when init is slow to reap orphans (seen in sandboxes), the
    zombie makes libvirt's next clean-up wait over a second for it to die.
    """
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


class _LineSplitter:
    """Chunks of output -> lines, kept per stream (a partial line waits for its end)."""

    def __init__(self) -> None:
        self.lines: list[LogLine] = []
        self._partial: dict[int, LogLine] = {}

    def feed(self, chunk: LogLine) -> None:
        data = chunk.data
        while data:
            nl = data.find(b"\n")
            piece, data = (data, b"") if nl < 0 else (data[: nl + 1], data[nl + 1:])
            prev = self._partial.pop(chunk.stream, None)
            if prev is not None:
                piece = prev.data + piece
                ts = prev.ts_ns
            else:
                ts = chunk.ts_ns
            line = LogLine(chunk.stream, ts, piece)
            if piece.endswith(b"\n"):
                self.lines.append(line)
            else:
                self._partial[chunk.stream] = line

    def flush(self, final: bool) -> list[LogLine]:
        if not final:
            return []
        rest = sorted(self._partial.values(), key=lambda line: line.ts_ns)
        self._partial.clear()
        return rest


def _virtiofs(c: Container) -> bool:
    return any(v.get("transport") == "virtiofs" for v in c.record.volumes)


def _stopped(c: Container, why: str) -> HvError:
    """A container hv stopped while it ran (its `error` line came after `started`)."""
    again = "run it again" if c.record.auto_remove else f"start it again with 'hv start {c.name}'"
    return RuntimeFailure(f"container {c.name} {why}", exit_code=137,
                          hint=f"{again}; the files in its volumes and bind folders are kept")


def _exec_error(code: int | None, message: str) -> HvError:
    if code == 127:
        return CommandNotFound(message)
    if code == 126:
        return CommandNotExecutable(message)
    return HvError(message, exit_code=code or 125,
                   hint="check the image's user, workdir and command ('hv inspect IMAGE')")


def _not_ready(c: Container, what: str) -> HvError:
    return RuntimeFailure(
        f"{what}: {c.name}",
        hint=f"read the guest console log: {paths.container_console(c.id)}",
    )

