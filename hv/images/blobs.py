"""Content-addressed blobs under paths.blobs_dir(): written to a temp file, verified, renamed.

A blob that exists under its digest name has been verified by hv; nothing else ever sits
there, so `exists()` may skip a download. That holds only for well-formed digests: every
digest from outside (manifest, index, config, archive, registry) goes through `check()` where
it enters, and paths.blob() refuses any other text, so a crafted '../' digest can neither
name a host file as "already stored" nor let rmi delete one. The store is its owner's alone:
blobs are 0600 and the images folder 0700 (0711 under a libvirtd, see ImageStore).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO

from hv import paths
from hv.errors import DigestMismatch, HvError, InvalidDigest
from hv.images.scratch import Scratch
from hv.paths import Paths


def check(digest: object, what: str, error: type[HvError] = InvalidDigest) -> str:
    """`digest` if it is 'sha256:' + 64 lowercase hex, else `error` naming `what`."""
    if not paths.is_digest(digest):
        shown = repr(digest)[:100]
        raise error(f"{what} has an invalid digest {shown}",
                    hint=InvalidDigest.hint)
    return digest  # type: ignore[return-value]


class Blobs:
    """One state root's blobs (and the scratch files they are written to first)."""

    def __init__(self, paths: Paths, scratch: Scratch) -> None:
        self.paths = paths
        self.scratch = scratch
        # while this process pulls or loads: its writer's journal (ImageRecords.writing),
        # naming each blob it stores or counts on, so no prune takes them meanwhile
        self.journal: TextIO | None = None

    def _note(self, digest: str) -> None:
        if self.journal is not None:
            self.journal.write(digest + "\n")
            self.journal.flush()

    def path(self, digest: str) -> Path:
        return self.paths.blob(digest)

    def exists(self, digest: str) -> bool:
        """(A writer asking counts on the blob: it is journaled first.)"""
        self._note(digest)
        return self.paths.blob(digest).is_file()

    def read(self, digest: str) -> bytes:
        try:
            return self.paths.blob(digest).read_bytes()
        except OSError as e:
            raise HvError(
                f"image content {digest} is missing from the store",
                hint="remove the image with 'hv rmi' and pull or load it again",
            ) from e

    def temp_file(self, prefix: str = "blob-") -> contextlib.AbstractContextManager[Path]:
        """A scratch file on the store's filesystem, removed unless the caller renamed it away
        (locked while in use: see hv.images.scratch)."""
        return self.scratch.file(prefix)

    def commit(self, tmp: Path, digest: str) -> Path:
        """Move a verified temp file to its content address (atomic; a racing writer is
        harmless)."""
        dest = self.paths.blob(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o600)
        self._note(digest)  # journaled before it is visible
        os.replace(tmp, dest)
        return dest

    def put_bytes(self, data: bytes, digest: str | None = None) -> str:
        """Store `data`; if `digest` is given it must match. Returns the digest."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest and digest != actual:
            raise DigestMismatch(f"content {digest} does not match its digest (got {actual})")
        if not self.exists(actual):
            with self.temp_file() as tmp:
                tmp.write_bytes(data)
                self.commit(tmp, actual)
        return actual

    def put_stream(self,
        src: BinaryIO, digest: str | None = None, progress: Callable[[int], None] | None = None
    ) -> tuple[str, int]:
        """Copy a stream into the store, hashing as it goes; returns (digest, size)."""
        hasher = hashlib.sha256()
        size = 0
        with self.temp_file() as tmp:
            with open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                    if progress:
                        progress(size)
            actual = "sha256:" + hasher.hexdigest()
            if digest and digest != actual:
                raise DigestMismatch(f"content {digest} does not match its digest (got {actual})")
            if not self.exists(actual):
                self.commit(tmp, actual)
        return actual, size

    def copy_to(self, digest: str, out: BinaryIO) -> None:
        with open(self.paths.blob(digest), "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)

    def delete(self, digests: set[str]) -> None:
        for digest in digests:
            if not paths.is_digest(digest):
                continue  # never a path: a malformed record must not delete anything
            try:
                self.paths.blob(digest).unlink(missing_ok=True)
            except OSError:
                pass


