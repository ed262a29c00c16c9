"""`docker history`: an image's config `history`, newest first, with each layer's size.

As moby's ImageHistory: one row per history entry, newest first; an entry that made a layer
(no `empty_layer`) is matched with the next of the config's diff_ids and shows that layer's
unpacked size, an empty one shows 0. Only the top row carries the image's id and tags: hv
keeps no parent images, so every other row is `<missing>`, as Docker shows a pulled image.
A layer's unpacked size is counted once (the layer is decompressed) and kept beside the
blobs, by digest.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from hv.errors import HvError
from hv.images.layers import decompressed
from hv.images.model import Image, parse_created
from hv.images.records import ImageRecords

MISSING = "<missing>"
_SIZES = "layer-sizes.json"


@dataclass(frozen=True)
class HistoryRow:
    """One row of Docker's HistoryResponseItem."""

    id: str  # the image id on the top row, "<missing>" below
    created: int  # Unix seconds (0 when the entry has no date)
    created_by: str
    tags: list[str] | None  # the top row's tags (None when it has none, and below it)
    size: int  # the layer's unpacked size; 0 for an empty_layer entry
    comment: str

    def to_api(self) -> dict:
        return {"Id": self.id, "Created": self.created, "CreatedBy": self.created_by,
                "Tags": self.tags, "Size": self.size, "Comment": self.comment}


def history(store: ImageRecords, image: Image) -> list[HistoryRow]:
    entries = image.config.get("history")
    if not isinstance(entries, list):
        entries = []
    diff_ids = list((image.config.get("rootfs") or {}).get("diff_ids") or [])
    sizes = _LayerSizes(store.root / _SIZES)
    rows: list[HistoryRow] = []
    layer = 0
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        size = 0
        if not entry.get("empty_layer"):
            if layer >= len(diff_ids):
                raise HvError(f"image {image.short_id}: too many non-empty layers in its "
                              "History section", hint="the image's config is malformed")
            if layer < len(image.layers):
                size = sizes.get(store, image.layers[layer])
            layer += 1
        created = parse_created(entry.get("created"))
        rows.append(HistoryRow(MISSING, int(created.timestamp()) if created else 0,
                               str(entry.get("created_by") or ""), None, size,
                               str(entry.get("comment") or "")))
    sizes.save()
    rows.reverse()
    if rows:
        top = rows[0]
        rows[0] = HistoryRow(image.id, top.created, top.created_by,
                             list(image.repo_tags) or None, top.size, top.comment)
    return rows


class _LayerSizes:
    """Unpacked sizes by layer digest, in a small JSON file (best effort: a cache)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.changed = False
        try:
            data = json.loads(path.read_text())
            self.sizes: dict[str, int] = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self.sizes = {}

    def get(self, store: ImageRecords, digest: str) -> int:
        known = self.sizes.get(digest)
        if isinstance(known, int):
            return known
        size = 0
        try:
            with open(store.blobs.path(digest), "rb") as raw, decompressed(raw) as f:
                while chunk := f.read(1 << 20):
                    size += len(chunk)
        except (OSError, EOFError, ValueError):
            return 0  # a layer that cannot be read: no size, as no history fails for it
        self.sizes[digest] = size
        self.changed = True
        return size

    def save(self) -> None:
        if not self.changed:
            return
        tmp = self.path.with_name(f"{_SIZES}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(self.sizes))
            tmp.replace(self.path)
        with contextlib.suppress(OSError):
            tmp.unlink()
