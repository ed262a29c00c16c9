"""Image records: the index, content-addressed blobs and base disks, under one folder.

The lower half of the image store: what pull and load need to record an image (commit,
build_disk, forget_*). Docker's verbs over it (tag, rmi, pull, load, save) are
hv.images.store.ImageStore; pull and archive import only this module, so there is no cycle.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from hv.config import Config
from hv.errors import HvError, ImageNotFound, Interrupted, UsageError, from_os_error
from hv.images import blobs
from hv.images.blobs import Blobs
from hv.images.index import Index
from hv.images.model import Image, parse_created
from hv.images.reference import Reference
from hv.images.scratch import Scratch
from hv.paths import is_digest

_HEX_PREFIX = re.compile(r"^(?:sha256:)?([0-9a-f]{1,64})$")


class ImageRecords:
    """`qemu_reads_by_path`: a libvirtd runs QEMU as its own user, which must reach the base
    disks by path (the folder is 0711 then, never listable); otherwise the folder is 0700:
    a privately pulled image is its owner's alone, as the container folders are."""

    def __init__(self, config: Config, qemu_reads_by_path: bool = False) -> None:
        self.config = config
        self.paths = config.paths
        self.root = self.paths.images_root()
        self.scratch = Scratch(self.paths)
        self.blobs = Blobs(self.paths, self.scratch)
        self.index = Index(self.paths)
        self.mode = 0o711 if qemu_reads_by_path else 0o700

    def _prepare(self) -> None:
        """Make the store's folder with its mode (and fix one an older hv made 0755)."""
        self.root.mkdir(mode=self.mode, parents=True, exist_ok=True)
        if self.root.stat().st_mode & 0o777 != self.mode:
            self.root.chmod(self.mode)

    # --- reading ----------------------------------------------------------------------

    def _image(self, image_id: str, record: dict) -> Image:
        try:
            config = json.loads(self.blobs.read(image_id))
        except ValueError:
            config = {}
        return Image(
            id=image_id,
            repo_tags=list(record.get("repo_tags", [])),
            repo_digests=list(record.get("repo_digests", [])),
            config=config,
            created=parse_created(config.get("created")),
            size=int(record.get("size", 0)),
            manifest_digest=record.get("manifest", ""),
            layers=list(record.get("layers", [])),
        )

    def _resolve(self, data: dict, text: str) -> tuple[str, str | None]:
        """(image id, the familiar ref that matched or None when matched by id)."""
        images = data["images"]
        try:
            ref = Reference.parse(text)
        except UsageError:
            ref = None
        if ref is not None:
            if ref.digest:
                key = f"{ref.familiar_name}@{ref.digest}"
                for image_id, rec in images.items():
                    if key in rec.get("repo_digests", []):
                        return image_id, key
            else:
                key = ref.familiar()
                for image_id, rec in images.items():
                    if key in rec.get("repo_tags", []):
                        return image_id, key
        match = _HEX_PREFIX.match(text)
        if match:
            found = [i for i in images if i.removeprefix("sha256:").startswith(match.group(1))]
            if len(found) == 1:
                return found[0], None
            if len(found) > 1:
                raise ImageNotFound(
                    f"No such image: {text}",
                    hint=f"the id prefix {text} matches {len(found)} images; give more of the id",
                )
        raise ImageNotFound(f"No such image: {text}")

    def get(self, name_or_id: str) -> Image:
        data = self.index.load()
        image_id, _ = self._resolve(data, name_or_id)
        return self._image(image_id, data["images"][image_id])

    def exists(self, name_or_id: str) -> bool:
        try:
            self._resolve(self.index.load(), name_or_id)
        except ImageNotFound:
            return False
        return True

    def list(self) -> list[Image]:
        data = self.index.load()
        out = [self._image(i, rec) for i, rec in data["images"].items()]
        epoch = datetime.fromtimestamp(0, UTC)
        out.sort(key=lambda im: (im.created or epoch, im.id), reverse=True)
        return out

    # --- writing ----------------------------------------------------------------------

    @staticmethod
    def _claim(data: dict, image_id: str, tags: list[str], digests: list[str]) -> None:
        """Point `tags` at `image_id`, taking them from any other image (as Docker does)."""
        for other_id, rec in data["images"].items():
            if other_id != image_id:
                rec["repo_tags"] = [t for t in rec.get("repo_tags", []) if t not in tags]
        rec = data["images"][image_id]
        for name, items in (("repo_tags", tags), ("repo_digests", digests)):
            for item in items:
                if item not in rec.setdefault(name, []):
                    rec[name].append(item)

    def commit(
        self,
        image_id: str,
        manifest_digest: str,
        layers: list[str],
        size: int,
        tags: list[str],
        digests: list[str],
    ) -> bool:
        """Record an image whose blobs are all stored. Returns False if tags already matched."""
        for digest in [image_id, manifest_digest, *layers]:
            blobs.check(digest, "an image record")
        with self.index.transaction() as data:
            missing = [d for d in [image_id, manifest_digest, *layers] if not self.blobs.exists(d)]
            if missing:
                raise HvError(
                    f"image content {missing[0]} vanished while the image was stored",
                    hint="another hv removed it at the same time; run the command again",
                )
            images = data["images"]
            fresh = image_id not in images
            rec = images.setdefault(
                image_id, {"repo_tags": [], "repo_digests": [], "size": size, "added": time.time()}
            )
            up_to_date = not fresh and all(t in rec["repo_tags"] for t in tags)
            rec["manifest"] = manifest_digest
            rec["layers"] = layers
            self._claim(data, image_id, tags, digests)
        return not up_to_date

    def forget_blobs(self, digests: list[str]) -> None:
        """Delete blobs of an aborted pull/load that no recorded image refers to."""
        with self.index.locked():
            data = self.index.load()
            used = set()
            for image_id, rec in data["images"].items():
                used |= {image_id, rec.get("manifest", ""), *rec.get("layers", [])}
            self.blobs.delete(set(digests) - used)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around a pull or load: first the leftovers of killed ones go (scratch files whose
        owner is gone, blobs no record or live writer names), then this one keeps a
        journal of the blobs it stores or counts on, locked while it runs."""
        if self.blobs.journal is not None:  # nested (a run's pull): the outer one journals
            yield
            return
        self._prepare()
        self.scratch.sweep()
        self.prune_orphans()
        folder = self.paths.image_writers_dir()
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{os.urandom(6).hex()}"
        tmp = folder / ("." + name)
        with open(tmp, "w") as journal:
            # locked before it has its name: a pruner never sees it unlocked while it lives
            fcntl.flock(journal, fcntl.LOCK_EX)
            os.rename(tmp, folder / name)
            self.blobs.journal = journal
            try:
                yield
            finally:
                self.blobs.journal = None
                with contextlib.suppress(OSError):
                    os.unlink(folder / name)

    def _in_flight(self) -> set[str]:
        """Blobs live writers journaled; the journals of dead writers (unlocked) go.

        Each writer has its own journal and lock, so a process that inherited some other
        lock (a forked child outliving a killed load) never stops a prune; only the blobs a
        live writer named are spared."""
        spared: set[str] = set()
        try:
            names = [n for n in os.listdir(self.paths.image_writers_dir())
                     if not n.startswith(".")]
        except OSError:
            return spared
        for n in names:
            path = self.paths.image_writers_dir() / n
            try:
                with open(path) as j:
                    try:
                        fcntl.flock(j, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        spared |= {line.strip() for line in j if line.strip()}
                        continue
                    os.unlink(path)  # its writer is gone (we hold its lock now)
            except OSError:
                continue
        return spared

    def prune_orphans(self) -> list[str]:
        """Delete blobs no image record names and no live pull or load counts on (left by
        one that was killed). Returns the digests removed."""
        if not self.paths.images_root().is_dir():
            return []
        with self.index.locked():
            try:  # listed before the journals are read: a writer notes a blob first
                names = os.listdir(self.paths.blobs_dir())
            except OSError:
                names = []
            used = self._in_flight()
            data = self.index.load()
            for image_id, rec in data["images"].items():
                used |= {image_id, rec.get("manifest", ""), *rec.get("layers", [])}
            orphans = {"sha256:" + n for n in names} - used
            self.blobs.delete(orphans)
        return sorted(o for o in orphans if is_digest(o))

    # --- pull ---------------------------------------------------------------------------

    def base_disk(self, image: Image, on_layer: Callable[[int], None] | None = None) -> Path:
        """The image's ext4 base disk, built from its layers the first time it is needed
        (images pulled or loaded by this hv have one already: see build_disk)."""
        dest, size = self.build_disk(image.id, image.layers, on_layer)
        if size is not None:
            with self.index.transaction() as data:
                if image.id in data["images"]:
                    data["images"][image.id]["size"] = size
            image.size = size
        return dest

    def build_disk(
        self, image_id: str, layer_digests: list[str], on_layer: Callable[[int], None] | None = None
    ) -> tuple[Path, int | None]:
        """Build the base disk of an image whose blobs are stored; (path, the unpacked size,
        or None when the disk existed). pull and load call it before the image is recorded,
        so an image is listed only once it can run."""
        dest = self.paths.base_disk(image_id)
        if dest.exists():
            return dest, None
        from hv.images import disk, layers

        self._prepare()
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(self.paths.base_disk_lock(image_id), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if dest.exists():
                return dest, None
            try:
                with self.scratch.folder("rootfs-") as work:
                    rootfs = work / "rootfs"
                    rootfs.mkdir(mode=0o755)
                    layers.extract([self.blobs.path(d) for d in layer_digests], rootfs, on_layer,
                                   max_image_size=self.config.max_image_size)
                    size = layers.tree_size(rootfs)
                    tmp_disk = work / "disk.ext4"
                    compressed = sum(self.blobs.path(d).stat().st_size for d in layer_digests)
                    disk.build(rootfs, tmp_disk, size, image_id, compressed_bytes=compressed,
                               max_image_size=self.config.max_image_size,
                               disk_size=self.config.disk_size)
                    os.replace(tmp_disk, dest)
            except KeyboardInterrupt:
                raise Interrupted("interrupted while building the image's base disk") from None
            except OSError as e:
                raise from_os_error(e, self.paths.state_root()) from e
        return dest, size

    def forget_disk(self, image_id: str) -> None:
        """Remove a base disk built for an image that was then not recorded."""
        self.paths.base_disk(image_id).unlink(missing_ok=True)
        self.paths.base_overlay(self.paths.base_disk(image_id)).unlink(missing_ok=True)
        self.paths.base_disk_lock(image_id).unlink(missing_ok=True)
