"""`hv system df` and `hv system prune`: what hv keeps, and removing what nothing uses.

Docker's rules: prune removes stopped containers, then (with `--volumes`) anonymous volumes
no container uses (named ones need `hv volume prune -a`), then dangling images (untagged),
or with `-a` every image no container uses; user-defined networks no container is on go
after the containers. hv has no build cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hv.paths import Paths


@dataclass
class PruneReport:
    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)  # names
    volumes: list[str] = field(default_factory=list)
    images: list[tuple[str, str]] = field(default_factory=list)  # ("untagged"|"deleted", ref)
    reclaimed: int = 0


def _allocated(path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for n in files:
            try:
                total += os.lstat(os.path.join(root, n)).st_blocks * 512
            except OSError:
                pass
    return total


def container_size(paths: Paths, cid: str) -> int:
    """The container's own disk: its qcow2 overlay, as allocated on the host."""
    try:
        return os.stat(paths.container_disk(cid)).st_blocks * 512
    except OSError:
        return 0


def prune(engine, all_images: bool = False, with_volumes: bool = False) -> PruneReport:
    rep = PruneReport()
    for c in engine.containers(all=True):
        if c.active:
            continue
        rep.reclaimed += container_size(engine.paths, c.id)
        engine.remove(c.id)
        rep.containers.append(c.id)
    engine.drain_pool()  # no pooled VM outlives a prune (HV_POOL refills at the next run)
    rep.networks = engine.network_prune()
    if with_volumes:
        names, freed = engine.volumes.prune(all=False)
        rep.volumes, rep.reclaimed = names, rep.reclaimed + freed
    used = {c.record.image_id for c in engine.containers(all=True)}
    for image in engine.images.list():
        if image.id in used or (image.repo_tags and not all_images):
            continue
        try:
            lines = engine.remove_image(image.id, force=len(image.repo_tags) > 1)
        except Exception:  # noqa: BLE001 - another hv removed it meanwhile: skip it
            continue
        rep.images += [(kind.lower(), what) for kind, what in lines]
        rep.reclaimed += image.size
    # what killed pulls and loads left: scratch files of dead processes, unnamed blobs
    engine.images.scratch.sweep()
    engine.images.prune_orphans()
    return rep


def df(engine) -> list[dict]:
    """Docker's `system df` rows: Images, Containers, Local Volumes."""
    cs = engine.containers(all=True)
    used_images = {c.record.image_id for c in cs}
    images = engine.images.list()
    img_size = sum(i.size for i in images)
    img_free = sum(i.size for i in images if i.id not in used_images)
    c_sizes = {c.id: container_size(engine.paths, c.id) for c in cs}
    c_size = sum(c_sizes.values())
    c_free = sum(s for cid, s in c_sizes.items()
                 if not next(c for c in cs if c.id == cid).active)
    vols = engine.volumes.list_volumes()
    users = engine.volumes.users()
    v_sizes = {v.name: engine.volumes.size(v.name) for v in vols}
    v_size = sum(v_sizes.values())
    v_free = sum(s for n, s in v_sizes.items() if not users.get(n))
    return [
        {"Type": "Images", "TotalCount": len(images),
         "Active": sum(1 for i in images if i.id in used_images), "Size": img_size,
         "Reclaimable": img_free},
        {"Type": "Containers", "TotalCount": len(cs), "Active": sum(1 for c in cs if c.active),
         "Size": c_size, "Reclaimable": c_free},
        {"Type": "Local Volumes", "TotalCount": len(vols),
         "Active": sum(1 for v in vols if users.get(v.name)), "Size": v_size,
         "Reclaimable": v_free},
    ]
