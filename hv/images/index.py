"""The image index (paths.image_index()): image records keyed by image id.

Readers see a whole file (written to a temp name then renamed); writers change it inside
`transaction()`, which holds an fcntl.flock on paths.image_lock() from read to rename.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from hv import paths
from hv.errors import HvError
from hv.paths import Paths


def _empty() -> dict:
    return {"version": 1, "images": {}}


def _well_formed(image_id: str, rec: object) -> bool:
    if not isinstance(rec, dict) or not paths.is_digest(image_id):
        return False
    layers = rec.get("layers", [])
    manifest = rec.get("manifest", "")
    return (isinstance(layers, list) and all(paths.is_digest(d) for d in layers)
            and (manifest == "" or paths.is_digest(manifest)))


class Index:
    """One state root's image index."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def load(self) -> dict:
        try:
            with open(self.paths.image_index()) as f:
                data = json.load(f)
        except FileNotFoundError:
            return _empty()
        except (OSError, ValueError) as e:
            raise HvError(
                f"the image index {self.paths.image_index()} cannot be read: {e}",
                hint="move the file away and pull or load your images again",
            ) from e
        images = data.setdefault("images", {})
        # A record naming anything but well-formed digests was not written by a correct hv
        # (older ones accepted '../' digests): it is left out, so nothing reads or deletes by it.
        for image_id in [i for i, rec in images.items() if not _well_formed(i, rec)]:
            del images[image_id]
        return data

    def _write(self, data: dict) -> None:
        target = self.paths.image_index()
        fd, tmp = tempfile.mkstemp(prefix=".index-", dir=target.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store lock (also used around blob garbage collection and disk builds)."""
        self.paths.images_root().mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.paths.image_lock(), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextmanager
    def transaction(self) -> Iterator[dict]:
        """Yield the index for changing; it is written back only if the block succeeds."""
        with self.locked():
            data = self.load()
            yield data
            self._write(data)


