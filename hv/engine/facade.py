"""The one facade both front ends call (the CLI and the Engine API service). It never prints.

Engine is the container parts (store, create, lifecycle, inside, archive: one job a
module) over one Context, plus the images, volumes and system operations, which it
forwards to hv.images, hv.volumes and hv.system so that no front end imports them.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from hv.config import Config
from hv.containers import Container
from hv.context import Context
from hv.engine.archive import Archive
from hv.engine.checkpoints import Checkpoints
from hv.engine.create import Creating
from hv.engine.events import Events
from hv.engine.execs import Execs
from hv.engine.inside import Inside
from hv.engine.lifecycle import Lifecycle
from hv.engine.networks import Networks
from hv.engine.pool import Pooling
from hv.engine.store import ContainerStore


class Engine(ContainerStore, Creating, Lifecycle, Inside, Execs, Archive, Events, Networks,
             Pooling, Checkpoints):
    def __init__(self, config: Config, context: Context | None = None) -> None:
        """`context`: one made for this Config already (hv.engine.early)."""
        self.config = config
        self.ctx = context or Context.of(config)
        self.paths = self.ctx.paths
        self.libvirt = self.ctx.libvirt
        self._infos: dict = {}  # container id -> its DomainInfo, from the last listing
        self._paused_why: dict[str, str] = {}  # container id -> why QEMU/libvirt paused it
        self._made: dict = {}  # container id -> the volumes and folders its `run` made
        self._live_execs: dict = {}  # exec id -> the ExecStream this process started
        self._exec_containers: dict = {}  # exec id -> its Container, found at create
        self._exec_owner: dict[str, str] = {}  # exec id -> container id

    @cached_property
    def images(self):
        from hv.images.store import ImageStore

        return ImageStore(self.config, qemu_reads_by_path=not self.libvirt.embedded)

    @cached_property
    def volumes(self):
        from hv.volumes import Volumes

        return Volumes(self.config, self.libvirt.embedded, self.libvirt.uri)

    def preopen(self) -> None:
        """Start opening libvirt now, for a `run` about to be prepared (see Libvirt.preopen)."""
        self.libvirt.preopen()

    def accel(self):
        """The accelerator guests get here (hv.runtime.accel.Accel: kvm or tcg, and why)."""
        from hv.runtime.accel import detect

        return detect(self.paths, self.config.accel)

    def vm_pid(self, c: Container) -> int | None:
        """The QEMU process of a running container (embedded libvirt only), for measuring."""
        from hv.runtime.domains import qemu_pid

        return qemu_pid(self.libvirt, c.domain)

    def host_facts(self):
        """The accelerator, the guest kernel, the host's CPUs and memory (hv.host_info)."""
        from hv.host_info import facts

        return facts(self.paths, self.accel())

    def labels(self, cid: str) -> dict[str, str]:
        """Docker's Config.Labels of a container (hv.labels: beside its record)."""
        from hv.labels import labels

        return labels(self.paths, cid)

    def set_labels(self, cid: str, labels: dict[str, str]) -> None:
        from hv.labels import set_labels

        set_labels(self.paths, cid, labels)

    @staticmethod
    def image_reference(text: str):
        """A parsed image reference (familiar form, tag, digest), Docker's parsing rules."""
        from hv.images.reference import Reference

        return Reference.parse(text)

    def volume_create(self, name: str | None, labels: dict[str, str]):
        v = self.volumes.create(name, labels)
        self._event("volume", "create", v.name, driver="local")
        return v

    def volume_list(self) -> list:
        return self.volumes.list_volumes()

    def volume_users(self) -> dict[str, list[str]]:
        return self.volumes.users()

    def volume(self, name: str):
        return self.volumes.get(name)

    def volume_remove(self, name: str, force: bool = False) -> str:
        existed = bool(self.volumes._read(name)) if name and "/" not in name else False
        out = self.volumes.remove(name, force=force)
        if existed:
            self._event("volume", "destroy", name, driver="local")
        return out

    def volume_prune(self, all: bool = False) -> tuple[list[str], int]:
        names, freed = self.volumes.prune(all=all)
        for n in names:
            self._event("volume", "destroy", n, driver="local")
        return names, freed

    def system_prune(self, all_images: bool = False, with_volumes: bool = False):
        from hv import system

        return system.prune(self, all_images=all_images, with_volumes=with_volumes)

    def adopt_vms(self) -> None:
        """For a long-lived front end (the API service): become the subreaper of the QEMUs
        it starts, so an exited one is reaped at once (where init reaps orphans lazily,
        libvirt's next call on its domain waited ~1 s for the zombie). The caller must
        then call `reap_vms()` often: a libvirt child of ours that waits for a zombie only
        we can reap (its start-up reconnects to every domain and kills a dead one's QEMU,
        40 s per zombie) would otherwise hold the root's lock for minutes (seen with ten
        clients at once)."""
        from hv.engine.lifecycle import _become_subreaper

        _become_subreaper()

    def reap_vms(self) -> list[int]:
        """Reap exited QEMUs (and other-session helpers) this process adopted."""
        from hv.runtime.connection import reap_children

        return reap_children()

    def container_size(self, cid: str) -> int:
        """The container's own disk (its overlay) as allocated on the host."""
        from hv import system

        return system.container_size(self.paths, cid)

    def system_df(self) -> list[dict]:
        from hv import system

        return system.df(self)

    def image_users(self, image_id: str) -> list[str]:
        """Ids of the containers (any state) created from `image_id`."""
        return [c.id for c in self.containers(all=True) if c.record.image_id == image_id]

    def remove_image(self, ref: str, force: bool = False) -> list[tuple[str, str]]:
        done = self.images.remove(ref, force=force, users=self.image_users)
        for kind, value in done:
            self._event("image", "untag" if kind == "Untagged" else "delete", value,
                        name=value)
        return done

    def pull_image(self, ref: str, progress=None):
        """`pull` (its events to `progress`); the image."""
        image = self.images.pull(ref, progress)
        self._event("image", "pull", ref, name=ref)
        return image

    def tag_image(self, source: str, target: str) -> None:
        self.images.tag(source, target)
        self._event("image", "tag", target, name=target)

    def image_save(self, refs: list[str], out: Path | BinaryIO, fmt: str = "docker") -> None:
        """`save`: the images as a docker-archive (`fmt` "docker") or OCI-archive ("oci")
        tarball, written to a file or a stream as it is made. Every ref is resolved before
        the first byte is written (a missing one is ImageNotFound, nothing written)."""
        images = [self.images.get(ref) for ref in refs]
        self.images.save(refs, out, fmt)
        for image in images:
            self._event("image", "save", image.id, name=image.id)

    def image_load(self, source: Path | BinaryIO, label: str = "stdin") -> list[str]:
        """`load` of a docker-archive or OCI-archive tarball (a file, or a stream read to its
        end first, called `label` in errors); Docker's lines: `Loaded image: busybox:latest`
        (or `Loaded image ID: sha256:…`)."""
        before = {image.id for image in self.images.list()}
        lines = self.images.load(source, label)
        for image in self.images.list():
            if image.id not in before or any(
                    line == f"Loaded image: {tag}" for tag in image.repo_tags for line in lines):
                self._event("image", "load", image.id, name=image.id)
        return lines

    def image_history(self, ref: str) -> list:
        """`history`: hv.images.history.HistoryRow, newest first (Docker's rows)."""
        from hv.images.history import history

        return history(self.images, self.images.get(ref))
