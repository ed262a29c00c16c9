"""`hv pull`: manifest (list) -> config and layer blobs, verified -> index record -> base disk.

The index entry is written only after every blob is stored and verified, so an interrupted
pull leaves either nothing or a whole image (temp files are removed on the way out).
"""

from __future__ import annotations

import json

from hv.errors import HvError, RegistryError
from hv.images import blobs
from hv.images.model import Image, Progress, PullEvent
from hv.images.records import ImageRecords
from hv.images.reference import Reference
from hv.images.registry import INDEX_TYPES, MANIFEST_TYPES, RegistryClient


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def pick_platform(index_doc: dict, what: str, error: type[HvError] = RegistryError) -> str:
    """The linux/amd64 manifest of a manifest list / OCI index (its digest, checked)."""
    manifests = index_doc.get("manifests")
    if not isinstance(manifests, list) or not all(isinstance(d, dict) for d in manifests):
        raise error(f"the manifest list of {what} has no list of manifests")
    candidates = []
    for desc in manifests:
        platform = desc.get("platform") if isinstance(desc.get("platform"), dict) else {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            candidates.append(desc)
    if not candidates:
        platforms = [d["platform"] for d in manifests if isinstance(d.get("platform"), dict)]
        found = sorted({f"{p.get('os')}/{p.get('architecture')}" for p in platforms})
        raise RegistryError(
            f"no matching manifest for linux/amd64 in the manifest list entries of {what}",
            hint="this image is published for: " + (", ".join(found) or "no platform"),
        )
    candidates.sort(key=lambda d: (d.get("platform") or {}).get("variant", "") not in ("", "v1"))
    return blobs.check(candidates[0].get("digest"), f"the manifest list of {what}", error)


def _manifest_json(body: bytes, what: str) -> dict:
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise RegistryError(f"the manifest of {what} is not valid JSON") from e
    if not isinstance(doc, dict):
        raise RegistryError(f"the manifest of {what} is not a JSON object")
    return doc


def pull(store: ImageRecords, text: str, emit: Progress) -> Image:
    """Pull `text`; blobs stored by a pull that fails before its commit are removed again."""
    stored: list[str] = []
    try:
        return _pull(store, text, emit, stored)
    except BaseException:
        if stored:
            store.forget_blobs(stored)
        raise


def _pull(store: ImageRecords, text: str, emit: Progress, stored: list[str]) -> Image:
    ref = Reference.parse(text)
    what = ref.familiar()
    client = RegistryClient(ref.registry, ref.repository, store.config.insecure_registries,
                            store.config.docker_config)
    emit(PullEvent("", f"{ref.tag or ref.digest}: Pulling from {ref.repository}"))

    body, media_type, top_digest = client.get_manifest(ref.reference)
    if media_type in INDEX_TYPES:
        chosen = pick_platform(_manifest_json(body, what), what)
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
    # before any digest names a file ("Already exists") or a URL
    blobs.check(config_digest, f"the config of {what}", RegistryError)
    for digest, _size in layer_descs:
        blobs.check(digest, f"a layer of {what}", RegistryError)

    for digest, data in ((config_digest, None), (manifest_digest, body)):
        if not store.blobs.exists(digest):
            store.blobs.put_bytes(data if data is not None else client.get_blob(digest), digest)
            stored.append(digest)

    pending = []
    for digest, size in layer_descs:
        if store.blobs.exists(digest):
            emit(PullEvent(_short(digest), "Already exists"))
        else:
            emit(PullEvent(_short(digest), "Pulling fs layer", 0, size))
            pending.append((digest, size))
    for digest, size in pending:
        short = _short(digest)
        with store.blobs.temp_file() as tmp:
            client.download_blob(
                digest, tmp, lambda n, s=short, t=size: emit(PullEvent(s, "Downloading", n, t))
            )
            emit(PullEvent(short, "Verifying Checksum", size, size))
            store.blobs.commit(tmp, digest)
            stored.append(digest)
        emit(PullEvent(short, "Download complete", size, size))

    layers = [d for d, _ in layer_descs]
    fresh = {_short(d) for d, _ in pending}

    def extracted(i: int) -> None:
        short = _short(layers[i])
        if short in fresh:
            emit(PullEvent(short, "Pull complete"))

    # the disk first, then the record: an image is listed only once it can run
    built = None
    if pending or not store.paths.base_disk(config_digest).exists():
        emit(PullEvent("", "Building disk"))
        _disk, built = store.build_disk(config_digest, layers, extracted)
    tags = [ref.familiar()] if ref.tag and not ref.digest else []
    repo_digest = f"{ref.familiar_name}@{top_digest}"
    size = built if built is not None else sum(s for _, s in layer_descs)
    try:
        changed = store.commit(config_digest, manifest_digest, layers, size, tags, [repo_digest])
    except BaseException:
        if built is not None:
            store.forget_disk(config_digest)
        raise
    stored.clear()  # referenced by the index now
    image = store.get(config_digest)
    emit(PullEvent("", f"Digest: {top_digest}"))
    name = ref.familiar()
    status = "Downloaded newer image" if changed or pending else "Image is up to date"
    emit(PullEvent("", f"Status: {status} for {name}"))
    return image
