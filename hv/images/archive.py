"""`hv load` / `hv save`: docker-archive and OCI-archive tarballs.

docker-archive is what `docker save` writes: manifest.json (Config, RepoTags, Layers paths),
repositories, the config JSON and one tar per layer. Load reads whatever paths manifest.json
names, so both the old `<id>/layer.tar` layout and Docker 25's `blobs/sha256/` one work. Save
writes the old layout with layers as stored (Docker and skopeo accept compressed layer.tar).
OCI-archive is an OCI image layout in a tar: oci-layout, index.json, blobs/sha256/.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import BinaryIO

from hv.errors import HvError, UsageError, from_os_error
from hv.images import blobs
from hv.images.layers import compression
from hv.images.model import LAYER_TYPES, OCI_CONFIG, OCI_MANIFEST, Image
from hv.images.pull import pick_platform
from hv.images.records import ImageRecords
from hv.images.reference import Reference

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
INDEX_TYPES = (OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"


class ArchiveError(HvError):
    hint = "give a tarball written by 'docker save', 'hv save' or 'skopeo copy ... oci-archive:'"


# --- load -----------------------------------------------------------------------------------


class _Tar:
    """Random access to a tarball's members by normalised name."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.members = {m.name.removeprefix("./").lstrip("/"): m for m in tar.getmembers()}

    def open(self, name: str) -> BinaryIO:
        member = self.members.get(name.removeprefix("./").lstrip("/"))
        if member is None or not (member.isreg() or member.islnk()):
            raise ArchiveError(f"the archive lacks {name}")
        try:
            f = self.tar.extractfile(member)
        except KeyError:  # a hard link to a member the archive does not have
            f = None
        if f is None:
            raise ArchiveError(f"the archive lacks {name}")
        return f

    def read(self, name: str, limit: int = 64 << 20) -> bytes:
        with self.open(name) as f:
            return f.read(limit)

    def json(self, name: str):
        try:
            return json.loads(self.read(name))
        except ValueError as e:
            raise ArchiveError(f"{name} in the archive is not valid JSON") from e


def load(store: ImageRecords, source: Path | BinaryIO, label: str = "stdin") -> list[str]:
    """Load every image of the archive; a failed load leaves no new blobs behind. `label`:
    what a stream is called in errors ("stdin", "the request body")."""
    before = _blob_names(store)
    try:
        return _load(store, source, label)
    except BaseException:
        store.forget_blobs(["sha256:" + n for n in _blob_names(store) - before])
        raise


def _blob_names(store: ImageRecords) -> set[str]:
    try:
        return set(os.listdir(store.paths.blobs_dir()))
    except OSError:
        return set()


def _load(store: ImageRecords, source: Path | BinaryIO, label: str) -> list[str]:
    if isinstance(source, (str, Path)):
        try:
            return _load_file(store, Path(source), Path(source).name.partition(".")[0],
                              str(source))
        except FileNotFoundError as e:
            raise ArchiveError(f"open {source}: no such file or directory",
                               hint="check the path given to -i") from e
    with store.blobs.temp_file(prefix="load-") as tmp:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        if tmp.stat().st_size == 0:
            if label == "stdin":
                raise ArchiveError("requested load from stdin, but stdin is empty",
                                   hint="pipe a tarball into 'hv load' or give -i FILE")
            raise ArchiveError(f"{label} is empty: there is no archive to load")
        return _load_file(store, tmp, label=label)


def _load_file(store: ImageRecords, path: Path, file_stem: str = "", label: str = "") -> list[str]:
    try:
        with tarfile.open(path, "r:*") as tf:
            tar = _Tar(tf)
            if "manifest.json" in tar.members:
                loaded = _load_docker(store, tar)
            elif "index.json" in tar.members:
                loaded = _load_oci(store, tar, file_stem)
            else:
                raise ArchiveError("the archive has neither manifest.json nor index.json")
    except (tarfile.TarError, EOFError) as e:
        # tarfile's own message for "r:*" lists every method it tried, one line each
        what = "is empty" if _is_empty(path) else "is not a tarball (plain, gzip, bzip2 or xz)"
        if isinstance(e, (EOFError, tarfile.CompressionError)) or "unexpected end" in str(e):
            what = "is truncated"
        raise ArchiveError(f"{label}: the archive {what}") from e
    except ValueError as e:
        raise ArchiveError(f"the archive holds a document that is not valid JSON: {e}") from e
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise from_os_error(e, store.paths.state_root()) from e
        raise ArchiveError(f"cannot read the archive: {e.strerror or e}") from e
    lines = []
    for image_id, tags in loaded:
        lines += [f"Loaded image: {t}" for t in tags] or [f"Loaded image ID: {image_id}"]
    return lines


def _record(store: ImageRecords, image_id: str, manifest: str, layers: list[str], size: int,
            tags: list[str]) -> None:
    """Build the base disk, then record the image: listed only once it can run."""
    _disk, built = store.build_disk(image_id, layers)
    try:
        store.commit(image_id, manifest, layers, size if built is None else built, tags, [])
    except BaseException:
        if built is not None:
            store.forget_disk(image_id)
        raise


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _familiar_tags(names: list[str]) -> list[str]:
    out = []
    for name in names:
        ref = Reference.parse(name)
        if ref.digest is None:
            out.append(ref.familiar())
    return out


def _store_layer(store: ImageRecords,
                 tar: _Tar, name: str, digest: str | None = None) -> tuple[str, int, str]:
    with tar.open(name) as f:
        digest, size = store.blobs.put_stream(f, digest)
    with open(store.blobs.path(digest), "rb") as f:
        kind = compression(f)
    return digest, size, kind


def _synth_manifest(store: ImageRecords,
                    config_digest: str, config: bytes, layers: list[tuple[str, int, str]]) -> str:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [
            {"mediaType": LAYER_TYPES[kind], "digest": d, "size": s} for d, s, kind in layers
        ],
    }
    return store.blobs.put_bytes(json.dumps(doc, separators=(",", ":")).encode())


def _load_docker(store: ImageRecords, tar: _Tar) -> list[tuple[str, list[str]]]:
    entries = tar.json("manifest.json")
    if not isinstance(entries, list):
        raise ArchiveError("manifest.json in the archive is not a list")
    loaded = []
    for entry in entries:
        try:
            config_name, layer_names = entry["Config"], list(entry["Layers"])
            tags = _familiar_tags(entry.get("RepoTags") or [])
        except (KeyError, TypeError) as e:
            raise ArchiveError("manifest.json in the archive lacks Config or Layers") from e
        config = tar.read(config_name)
        config_digest = store.blobs.put_bytes(config)
        try:
            diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError) as e:
            raise ArchiveError(f"{config_name} in the archive is not an image config") from e
        if len(diff_ids) != len(layer_names):
            raise ArchiveError(
                f"{config_name} lists {len(diff_ids)} layers but manifest.json {len(layer_names)}"
            )
        layers = []
        for name, diff_id in zip(layer_names, diff_ids, strict=True):
            digest, size, kind = _store_layer(store, tar, name)
            if kind == "none" and digest != diff_id:
                raise ArchiveError(f"layer {name} does not match {diff_id} in the image config")
            layers.append((digest, size, kind))
        manifest = _synth_manifest(store, config_digest, config, layers)
        size = sum(s for _, s, _ in layers)
        _record(store, config_digest, manifest, [d for d, _, _ in layers], size, tags)
        loaded.append((config_digest, tags))
    return loaded


def _blob_name(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


def _oci_tags(annotations: dict, file_stem: str) -> list[str]:
    """Full names from containerd's annotation or a full ref.name; a bare tag ('latest', as
    umoci and skopeo write) is joined to the archive's file name (busybox.oci.tar)."""
    name = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME, "")
    if not name:
        return []
    if any(c in name for c in ":/@"):
        return _familiar_tags([name])
    try:
        return _familiar_tags([f"{file_stem}:{name}"]) if file_stem else []
    except UsageError:
        return []


def _object(tar: _Tar, name: str) -> dict:
    doc = tar.json(name)
    if not isinstance(doc, dict):
        raise ArchiveError(f"{name} in the archive is not a JSON object")
    return doc


def _load_oci(store: ImageRecords, tar: _Tar, file_stem: str) -> list[tuple[str, list[str]]]:
    loaded = []
    manifests = _object(tar, "index.json").get("manifests", [])
    if not isinstance(manifests, list) or not all(isinstance(d, dict) for d in manifests):
        raise ArchiveError("index.json in the archive has no list of manifests")
    for desc in manifests:
        annotations = desc.get("annotations")
        tags = _oci_tags(annotations if isinstance(annotations, dict) else {}, file_stem)
        digest = blobs.check(desc.get("digest"), "index.json in the archive", ArchiveError)
        body = tar.read(_blob_name(digest))
        doc = _object(tar, _blob_name(digest))
        if desc.get("mediaType") in INDEX_TYPES or doc.get("mediaType") in INDEX_TYPES:
            digest = pick_platform(doc, "the archive", ArchiveError)
            body = tar.read(_blob_name(digest))
            doc = _object(tar, _blob_name(digest))
        manifest_digest = store.blobs.put_bytes(body, digest)
        try:
            config_digest = doc["config"]["digest"]
            layer_digests = [d["digest"] for d in doc["layers"]]
        except (KeyError, TypeError) as e:
            raise ArchiveError(f"manifest {digest} in the archive lacks config or layers") from e
        # checked before any of them names a file: an existing blob is trusted as verified
        blobs.check(config_digest, f"manifest {digest} in the archive", ArchiveError)
        for layer in layer_digests:
            blobs.check(layer, f"manifest {digest} in the archive", ArchiveError)
        config = tar.read(_blob_name(config_digest))
        store.blobs.put_bytes(config, config_digest)
        size = 0
        for layer in layer_digests:
            if not store.blobs.exists(layer):
                _store_layer(store, tar, _blob_name(layer), layer)
            size += store.blobs.path(layer).stat().st_size
        _record(store, config_digest, manifest_digest, layer_digests, size, tags)
        loaded.append((config_digest, tags))
    if not loaded:
        raise ArchiveError("index.json in the archive lists no images")
    return loaded


# --- save -----------------------------------------------------------------------------------


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_blob(store: ImageRecords, tar: tarfile.TarFile, name: str, digest: str) -> None:
    path = store.blobs.path(digest)
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mode = 0o644
    with open(path, "rb") as f:
        tar.addfile(info, f)


def _tags_for(image: Image, name: str) -> list[str]:
    """The tags a saved image carries: the one named, or all of them when saved by id."""
    try:
        ref = Reference.parse(name)
    except UsageError:
        return list(image.repo_tags)
    if ref.familiar() in image.repo_tags:
        return [ref.familiar()]
    return list(image.repo_tags)


def save(store: ImageRecords,
         images: list[Image], names: list[str], dest: Path | BinaryIO, fmt: str) -> None:
    if isinstance(dest, (str, Path)):
        tmp = Path(str(dest) + ".hv-tmp")
        try:
            with open(tmp, "wb") as out:
                _write(store, images, names, out, fmt)
            tmp.replace(dest)
        except OSError as e:
            raise ArchiveError(f"cannot write {dest}: {e.strerror}",
                               hint="check the -o path") from e
        finally:
            tmp.unlink(missing_ok=True)
    else:
        _write(store, images, names, dest, fmt)


def _write(store: ImageRecords,
           images: list[Image], names: list[str], out: BinaryIO, fmt: str) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if fmt == "oci":
            _write_oci(store, tar, images, names)
        else:
            _write_docker(store, tar, images, names)


def _write_docker(store: ImageRecords,
                  tar: tarfile.TarFile, images: list[Image], names: list[str]) -> None:
    manifest, repositories, written = [], {}, set()
    for image, name in zip(images, names, strict=True):
        config_name = image.id.removeprefix("sha256:") + ".json"
        if config_name not in written:
            _add_blob(store, tar, config_name, image.id)
            written.add(config_name)
        layer_names = []
        for digest in image.layers:
            layer_name = digest.removeprefix("sha256:") + "/layer.tar"
            if layer_name not in written:
                _add_blob(store, tar, layer_name, digest)
                written.add(layer_name)
            layer_names.append(layer_name)
        tags = _tags_for(image, name)
        manifest.append({"Config": config_name, "RepoTags": tags or None, "Layers": layer_names})
        top = image.layers[-1].removeprefix("sha256:") if image.layers else ""
        for tag in tags:
            repo, _, t = tag.rpartition(":")
            repositories.setdefault(repo, {})[t] = top
    _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
    if repositories:
        _add_bytes(tar, "repositories", json.dumps(repositories).encode())


def _write_oci(store: ImageRecords,
               tar: tarfile.TarFile, images: list[Image], names: list[str]) -> None:
    _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    written, descriptors = set(), []
    for image, name in zip(images, names, strict=True):
        for digest in [image.id, *image.layers, image.manifest_digest]:
            if digest not in written:
                _add_blob(store, tar, _blob_name(digest), digest)
                written.add(digest)
        body = store.blobs.read(image.manifest_digest)
        media_type = json.loads(body).get("mediaType") or OCI_MANIFEST
        base = {"mediaType": media_type, "digest": image.manifest_digest, "size": len(body)}
        tags = _tags_for(image, name)
        for tag in tags:
            ref = Reference.parse(tag)
            descriptors.append(
                {**base, "annotations": {CONTAINERD_NAME: str(ref), REF_NAME: ref.tag}}
            )
        if not tags:
            descriptors.append(base)
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
    _add_bytes(tar, "index.json", json.dumps(doc).encode())
