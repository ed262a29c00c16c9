"""What the image seam hands out: the Image record, pull progress events, media types."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
@dataclass
class PullEvent:
    layer: str
    status: str
    current: int = 0
    total: int = 0


Progress = Callable[[PullEvent], None]


def parse_created(text: str | None) -> datetime | None:
    """RFC 3339 with up to nanoseconds (what image configs carry) -> aware datetime."""
    if not text:
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", text)
    if not match:
        return None
    frac = (match.group(2) or ".0")[:7]
    zone = match.group(3) or "Z"
    zone = "+00:00" if zone == "Z" else zone
    try:
        return datetime.fromisoformat(match.group(1) + frac.ljust(7, "0") + zone)
    except ValueError:
        return None


@dataclass
class Image:
    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    config: dict
    created: datetime | None
    size: int
    manifest_digest: str
    layers: list[str] = field(default_factory=list)

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]

    @property
    def run_config(self) -> dict:
        return self.config.get("config") or {}

    def inspect(self) -> dict:
        """Docker's `image inspect` shape."""
        rootfs = self.config.get("rootfs") or {}
        return {
            "Id": self.id,
            "RepoTags": list(self.repo_tags),
            "RepoDigests": list(self.repo_digests),
            "Parent": "",
            "Comment": "",
            "Created": self.config.get("created", ""),
            "Author": self.config.get("author", ""),
            "Config": self.run_config,
            "Architecture": self.config.get("architecture", ""),
            "Os": self.config.get("os", ""),
            "Size": self.size,
            "RootFS": {"Type": rootfs.get("type", "layers"), "Layers": rootfs.get("diff_ids", [])},
        }
