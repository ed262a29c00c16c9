"""The local image store: records in an index, content-addressed blobs, cached base disks.

An image id is Docker's: "sha256:" + the digest of the image config. Tags and digests are
kept in Docker's familiar form ("busybox:latest", "busybox@sha256:..."). Nothing here prints;
pull reports progress through PullEvent callbacks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from hv.errors import Conflict, Interrupted, UsageError
from hv.images import archive
from hv.images import pull as pulling
from hv.images.model import Image, Progress, PullEvent
from hv.images.records import _HEX_PREFIX, ImageRecords
from hv.images.reference import Reference


def _repo_of(familiar_ref: str) -> str:
    """'busybox:latest' / 'busybox@sha256:..' -> 'busybox'."""
    ref = Reference.parse(familiar_ref)
    return ref.familiar_name


class ImageStore(ImageRecords):
    """Docker's image verbs over the records: tag, rmi, pull, load, save."""

    def tag(self, source: str, target: str) -> None:
        ref = Reference.parse(target)
        if ref.digest:
            raise UsageError(
                f"refusing to create a tag with a digest reference: {target}",
                hint="give the target as NAME[:TAG]",
            )
        with self.index.transaction() as data:
            image_id, _ = self._resolve(data, source)
            self._claim(data, image_id, [ref.familiar()], [])

    def remove(
        self, name_or_id: str, force: bool, users: Callable[[str], list[str]]
    ) -> list[tuple[str, str]]:
        """Docker's `rmi`: untag, then delete the image when nothing refers to it."""
        out: list[tuple[str, str]] = []
        if not _HEX_PREFIX.match(name_or_id):
            # Docker reports a malformed name as such, e.g. the `IMAGE` header word that
            # `docker images | awk '{print $3}'` hands to rmi: "invalid reference format"
            Reference.parse(name_or_id)
        with self.index.transaction() as data:
            image_id, key = self._resolve(data, name_or_id)
            rec = data["images"][image_id]
            tags, digests = rec.setdefault("repo_tags", []), rec.setdefault("repo_digests", [])
            repos = {_repo_of(r) for r in tags + digests}
            single = len(tags) <= 1 and len(repos) <= 1
            in_use = users(image_id)
            short = image_id.removeprefix("sha256:")[:12]
            if key is not None:
                if not force and single and in_use:
                    raise Conflict(
                        f'conflict: unable to remove repository reference "{name_or_id}" (must '
                        f"force) - container {in_use[0][:12]} is using its referenced image "
                        f"{short}",
                        hint="remove the container first ('hv rm ID'), or use 'hv rmi -f'",
                    )
                (tags if key in tags else digests).remove(key)
                out.append(("Untagged", key))
                if "@" not in key and not any(_repo_of(t) == _repo_of(key) for t in tags):
                    for dgst in [d for d in digests if _repo_of(d) == _repo_of(key)]:
                        digests.remove(dgst)
                        out.append(("Untagged", dgst))
                if tags or digests:
                    return out
            else:
                if not single and not force:
                    raise Conflict(
                        f"conflict: unable to delete {short} (must be forced) - image is "
                        "referenced in multiple repositories",
                        hint="remove the tags one by one, or use 'hv rmi -f'",
                    )
                if in_use and not force:
                    raise Conflict(
                        f"conflict: unable to delete {short} (must be forced) - image is being "
                        f"used by container {in_use[0][:12]}",
                        hint="remove the container first ('hv rm ID'), or use 'hv rmi -f'",
                    )
                out += [("Untagged", r) for r in tags + digests]
            del data["images"][image_id]
            out.append(("Deleted", image_id))
            still = set()
            for other_id, other in data["images"].items():
                still |= {other_id, other.get("manifest", ""), *other.get("layers", [])}
            self.blobs.delete(
                {image_id, rec.get("manifest", ""), *rec.get("layers", [])} - still - {""})
            if not in_use:
                self.forget_disk(image_id)
        return out

    def pull(self, ref: str, progress: Progress | None = None) -> Image:
        try:
            with self.writing():
                return pulling.pull(self, ref, progress or (lambda _e: None))
        except KeyboardInterrupt:
            raise Interrupted(f"pull of {ref} interrupted") from None

    # --- load / save ----------------------------------------------------------------------

    def load(self, source: Path | BinaryIO, label: str = "stdin") -> list[str]:
        try:
            with self.writing():
                return archive.load(self, source, label)
        except KeyboardInterrupt:
            raise Interrupted("load interrupted") from None

    def save(self, names: list[str], dest: Path | BinaryIO, fmt: str = "docker") -> None:
        if fmt not in ("docker", "oci"):
            raise UsageError(f"unknown save format {fmt!r}", hint="use --format docker or oci")
        images = [self.get(n) for n in names]
        try:
            archive.save(self, images, names, dest, fmt)
        except KeyboardInterrupt:
            raise Interrupted("save interrupted") from None

    # --- base disks -------------------------------------------------------------------


__all__ = ["Image", "ImageStore", "PullEvent"]
