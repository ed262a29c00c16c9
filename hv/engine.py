"""The one facade the CLI (and later an HTTP API) calls. It never prints."""

from __future__ import annotations

from functools import cached_property

from hv import paths


class Engine:
    @cached_property
    def images(self):
        from hv.images.store import ImageStore

        return ImageStore(paths.images_root())

    def image_users(self, image_id: str) -> list[str]:
        """Ids of the containers (any state) created from `image_id`."""
        return []

    def remove_image(self, ref: str, force: bool = False) -> list[tuple[str, str]]:
        return self.images.remove(ref, force=force, users=self.image_users)
