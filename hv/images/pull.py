"""`hv pull`: manifest (list) -> config and layer blobs, verified -> index record -> base disk.

The index entry is written only after every blob is stored and verified, so an interrupted
pull leaves either nothing or a whole image (temp files are removed on the way out).
"""

from __future__ import annotations

import json

from hv.errors import RegistryError
from hv.images import blobs
from hv.images.reference import Reference
from hv.images.registry import INDEX_TYPES, MANIFEST_TYPES, RegistryClient
from hv.images.store import Image, ImageStore, Progress, PullEvent


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def _pick_platform(index_doc: dict, what: str) -> str:
    """The linux/amd64 manifest of a manifest list / OCI index."""
    candidates = []
    for desc in index_doc.get("manifests", []):
        platform = desc.get("platform") or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            candidates.append(desc)
    if not candidates:
        platforms = [d.get("platform") or {} for d in index_doc.get("manifests", [])]
        found = sorted({f"{p.get('os')}/{p.get('architecture')}" for p in platforms})
        raise RegistryError(
            f"no matching manifest for linux/amd64 in the manifest list entries of {what}",
            hint="this image is published for: " + (", ".join(found) or "no platform"),
        )
    candidates.sort(key=lambda d: (d.get("platform") or {}).get("variant", "") not in ("", "v1"))
    return candidates[0]["digest"]


def _manifest_json(body: bytes, what: str) -> dict:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise RegistryError(f"the manifest of {what} is not valid JSON") from e
    if not isinstance(doc, dict):
        raise RegistryError(f"the manifest of {what} is not a JSON object")
    return doc


def pull(store: ImageStore, text: str, emit: Progress) -> Image:
    """Pull `text`; blobs stored by a pull that fails before its commit are removed again."""
    stored: list[str] = []
    try:
        return _pull(store, text, emit, stored)
    except BaseException:
        if stored:
            store._forget_blobs(stored)
        raise


def _pull(store: ImageStore, text: str, emit: Progress, stored: list[str]) -> Image:
    ref = Reference.parse(text)
    what = ref.familiar()
    client = RegistryClient(ref.registry, ref.repository)
    emit(PullEvent("", f"{ref.tag or ref.digest}: Pulling from {ref.repository}"))

    body, media_type, top_digest = client.get_manifest(ref.reference)
    if media_type in INDEX_TYPES:
        chosen = _pick_platform(_manifest_json(body, what), what)
        body, media_type, manifest_digest = client.get_manifest(chosen)
    else:
        manifest_digest = top_digest
    if media_type not in MANIFEST_TYPES:
        raise RegistryError(
            f"{what} uses an unsupported manifest type {media_type or '(none)'}",
            hint="hv pulls OCI and Docker v2 schema 2 images; push the image with a newer client",
        )
    manifest = _manifest_json(body, what)
    try:
        config_digest = manifest["config"]["digest"]
        layer_descs = [(d["digest"], int(d.get("size", 0))) for d in manifest["layers"]]
    except (KeyError, TypeError, ValueError) as e:
        raise RegistryError(f"the manifest of {what} lacks its config or layers") from e

    for digest, data in ((config_digest, None), (manifest_digest, body)):
        if not blobs.exists(digest):
            blobs.put_bytes(data if data is not None else client.get_blob(digest), digest)
            stored.append(digest)

    pending = []
    for digest, size in layer_descs:
        if blobs.exists(digest):
            emit(PullEvent(_short(digest), "Already exists"))
        else:
            emit(PullEvent(_short(digest), "Pulling fs layer", 0, size))
            pending.append((digest, size))
    for digest, size in pending:
        short = _short(digest)
        with blobs.temp_file() as tmp:
            client.download_blob(
                digest, tmp, lambda n, s=short, t=size: emit(PullEvent(s, "Downloading", n, t))
            )
            emit(PullEvent(short, "Verifying Checksum", size, size))
            blobs.commit(tmp, digest)
            stored.append(digest)
        emit(PullEvent(short, "Download complete", size, size))

    layers = [d for d, _ in layer_descs]
    tags = [ref.familiar()] if ref.tag and not ref.digest else []
    repo_digest = f"{ref.familiar_name}@{top_digest}"
    changed = store._commit(
        config_digest, manifest_digest, layers, sum(s for _, s in layer_descs), tags, [repo_digest]
    )
    stored.clear()  # referenced by the index now
    image = store.get(config_digest)

    fresh = {_short(d) for d, _ in pending}

    def extracted(i: int) -> None:
        short = _short(layers[i])
        if short in fresh:
            emit(PullEvent(short, "Pull complete"))

    if pending or not _has_disk(image):
        emit(PullEvent("", "Building disk"))
        store.base_disk(image, extracted)
        image = store.get(config_digest)
    emit(PullEvent("", f"Digest: {top_digest}"))
    name = ref.familiar()
    status = "Downloaded newer image" if changed or pending else "Image is up to date"
    emit(PullEvent("", f"Status: {status} for {name}"))
    return image


def _has_disk(image: Image) -> bool:
    from hv import paths

    return paths.base_disk(image.id).exists()
