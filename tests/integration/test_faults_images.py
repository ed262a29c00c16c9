"""Hostile and broken image input: crafted digests, broken archives, full disks, killed loads.

Each case is one of issue 11's reproductions; every one asserts that host files outside the
store are untouched and that the store is left consistent (no record, blob or scratch file
that nothing owns). None of these boots a guest: load and pull build base disks on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.server
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Hv, drain_pool

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _config(diff_ids: list[str]) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["true"]},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()


def _oci_archive(path: Path, blobs: dict[str, bytes], index: object,
                 links: dict[str, str] | None = None) -> Path:
    """An OCI archive with `blobs` (digest -> bytes) and `index` as index.json."""
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        for digest, data in blobs.items():
            add("blobs/sha256/" + digest.removeprefix("sha256:"), data)
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.LNKTYPE
            info.linkname = target
            tar.addfile(info)
        add("index.json", json.dumps(index).encode())
    return path


def _manifest(config_digest: str, config_size: int, layers: list[str]) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                    "size": 10} for d in layers],
    }).encode()


def _index(manifest: bytes, digest: str | None = None, name: str = "evil:latest") -> dict:
    return {"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": digest or _sha(manifest), "size": len(manifest),
        "annotations": {"io.containerd.image.name": name}}]}


def _traversal(target: Path) -> str:
    return "sha256:" + "../" * 16 + str(target).lstrip("/")


def _victim(tmp_path: Path) -> tuple[Path, bytes]:
    """A host file outside the store, shaped like a layer (a tar), so a store that trusted the
    path could read it into a container or hand it out in `hv save`."""
    victim = tmp_path / "host-secret.tar"
    data = _layer({"etc/host-secret": b"only the host may read this\n"})
    victim.write_bytes(data)
    victim.chmod(0o600)
    return victim, data


def _image_ids(hv: Hv) -> set[str]:
    return set(hv("images", "-q", "--no-trunc", check=True).stdout.split())


def _blob_names(root: Path) -> set[str]:
    d = root / "images" / "blobs" / "sha256"
    return set(os.listdir(d)) if d.is_dir() else set()


def _journals(root: Path) -> dict[str, list[str]]:
    """The image writers' journals (hv.images.records.writing) and who has each open."""
    d = root / "images" / "writers"
    found: dict[str, list[str]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir(d):
            found[name] = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                with contextlib.suppress(OSError):
                    if any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(d / name)
                           for fd in os.listdir(f"/proc/{pid}/fd")):
                        found[name].append(pid)
    return found


def _store_consistent(root: Path, held: object = None) -> None:
    """Every blob is named by a record, every record's blobs exist, no scratch is left."""
    path = root / "images" / "index.json"
    index = json.loads(path.read_text())["images"] if path.exists() else {}
    named = set()
    for image_id, rec in index.items():
        named |= {image_id, rec["manifest"], *rec["layers"]}
    names = {n.removeprefix("sha256:") for n in named}
    assert _blob_names(root) == names, (
        f"blobs and records disagree; {held}, journals now: {_journals(root)}")
    scratch = root / "tmp"
    assert not (scratch.is_dir() and os.listdir(scratch)), os.listdir(scratch)


def _assert_untouched(victim: Path, data: bytes) -> None:
    assert victim.exists(), "a host file outside the store was deleted"
    assert victim.read_bytes() == data


# --- 1. crafted digests ------------------------------------------------------------------


@pytest.mark.parametrize("where", ["layer", "config", "index"])
def test_load_refuses_a_path_as_digest(hv, tmp_path, where):
    victim, data = _victim(tmp_path)
    evil = _traversal(victim)
    layer = _layer({"hello": b"hi\n"})
    config = _config([_sha(layer)])
    blobs = {_sha(layer): layer, _sha(config): config}
    if where == "layer":
        manifest = _manifest(_sha(config), len(config), [evil])
    elif where == "config":
        manifest = _manifest(evil, len(config), [_sha(layer)])
    else:
        manifest = _manifest(_sha(config), len(config), [_sha(layer)])
    blobs[_sha(manifest)] = manifest
    index = _index(manifest, evil if where == "index" else None)
    archive = _oci_archive(tmp_path / "evil.tar", blobs, index)
    before = _image_ids(hv)

    proc = hv("load", "-i", str(archive))
    loaded = _image_ids(hv) - before
    for image_id in loaded:  # the old hv listed it: its rmi deleted the host file
        hv("rmi", "-f", image_id)
    _assert_untouched(victim, data)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert not loaded
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and "invalid digest" in lines[0] and lines[1].startswith("hint:")
    _store_consistent(hv.root)


class _EvilRegistry(http.server.ThreadingHTTPServer):
    """A loopback registry that serves one crafted manifest (and any honest blob)."""

    def __init__(self, manifest: bytes, blobs: dict[str, bytes], truncate: str = "") -> None:
        self.manifest, self.blobs, self.truncate = manifest, blobs, truncate
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _EvilRegistry

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/v2/":
            return self._send(200, b"{}", "application/json")
        if self.path.startswith("/v2/evil/manifests/"):
            return self._send(200, self.server.manifest, OCI_MANIFEST)
        digest = self.path.rpartition("/")[2]
        data = self.server.blobs.get(digest)
        if data is None:
            return self._send(404, json.dumps({"errors": [{"code": "BLOB_UNKNOWN"}]}).encode(),
                              "application/json")
        if digest == self.server.truncate:  # promise the whole blob, send a third, hang up
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 3])
            self.wfile.flush()
            self.close_connection = True
            return None
        return self._send(200, data, "application/octet-stream")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("where", ["layer", "config"])
def test_pull_refuses_a_path_as_digest(hv, tmp_path, where):
    victim, data = _victim(tmp_path)
    evil = _traversal(victim)
    layer = _layer({"hello": b"hi\n"})
    config = _config([_sha(layer)])
    if where == "layer":
        manifest = _manifest(_sha(config), len(config), [evil])
    else:
        manifest = _manifest(evil, len(config), [_sha(layer)])
    before = _image_ids(hv)
    with _EvilRegistry(manifest, {_sha(layer): layer, _sha(config): config}) as reg:
        proc = hv("pull", f"{reg.host}/evil:latest", timeout=60)
    loaded = _image_ids(hv) - before
    for image_id in loaded:
        hv("rmi", "-f", image_id)
    _assert_untouched(victim, data)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Already exists" not in proc.stdout
    assert not loaded
    assert "invalid digest" in proc.stderr.splitlines()[0]
    _store_consistent(hv.root)


def test_store_is_the_owners_alone(hv, busybox):
    images = hv.root / "images"
    assert images.stat().st_mode & 0o777 == 0o700
    for blob in (images / "blobs" / "sha256").iterdir():
        assert blob.stat().st_mode & 0o077 == 0, blob


# --- broken archives and downloads: one line and a hint -----------------------------------


def _one_error(proc: subprocess.CompletedProcess, *words: str, code: int = 1) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith("Error: ") and lines[1].startswith("hint: "), proc.stderr
    assert "internal error" not in lines[0]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("content, words", [
    (b"", ["is empty"]),
    (os.urandom(4096), ["is not a tarball"]),
])
def test_load_of_a_file_that_is_no_archive(hv, tmp_path, content, words):
    f = tmp_path / "junk.tar"
    f.write_bytes(content)
    _one_error(hv("load", "-i", str(f)), *words)


@pytest.mark.parametrize("index", [[1, 2], {"manifests": "x"}, {"manifests": [7]}])
def test_load_of_a_malformed_index(hv, tmp_path, index):
    archive = _oci_archive(tmp_path / "bad.tar", {}, index)
    _one_error(hv("load", "-i", str(archive)), "index.json")


def test_load_of_a_config_that_is_a_dangling_hard_link(hv, tmp_path):
    layer = _layer({"hello": b"hi\n"})
    config = _config([_sha(layer)])
    manifest = _manifest(_sha(config), len(config), [_sha(layer)])
    archive = _oci_archive(
        tmp_path / "link.tar", {_sha(layer): layer, _sha(manifest): manifest}, _index(manifest),
        links={"blobs/sha256/" + _sha(config).removeprefix("sha256:"): "nowhere/at/all"})
    _one_error(hv("load", "-i", str(archive)), "lacks")
    _store_consistent(hv.root)


def test_a_layer_that_cannot_be_unpacked_leaves_no_image(hv, tmp_path):
    """The base disk is built before the image is recorded: a failed build lists nothing."""
    layer = b"\x1f\x8b" + os.urandom(2000)  # a gzip magic, then garbage
    config = _config([_sha(b"whatever")])
    manifest = _manifest(_sha(config), len(config), [_sha(layer)])
    archive = _oci_archive(tmp_path / "broken.tar",
                           {_sha(layer): layer, _sha(config): config, _sha(manifest): manifest},
                           _index(manifest, name="broken:latest"))
    before = _image_ids(hv)
    proc = hv("load", "-i", str(archive))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert _image_ids(hv) == before
    assert "broken" not in hv("images", check=True).stdout
    assert not (hv.root / "images" / "disks" / (_sha(config)[7:] + ".ext4")).exists()
    _store_consistent(hv.root)


def test_pull_of_a_truncated_or_missing_blob(hv):
    layer = _layer({"big": os.urandom(300_000)})
    config = _config([_sha(layer)])
    manifest = _manifest(_sha(config), len(config), [_sha(layer)])
    with _EvilRegistry(manifest, {_sha(layer): layer, _sha(config): config},
                       truncate=_sha(layer)) as reg:
        line = _one_error(hv("pull", f"{reg.host}/evil:latest", timeout=60), "truncated")
        assert _sha(layer) in line and "IncompleteRead" not in line
    with _EvilRegistry(manifest, {_sha(config): config}) as reg:
        line = _one_error(hv("pull", f"{reg.host}/evil:latest", timeout=60), "unknown")
        assert f"blob {_sha(layer)}" in line and "manifest unknown" not in line
    _store_consistent(hv.root)


# --- a full disk: what to free, and hv works again -----------------------------------------


@pytest.fixture
def small_root(tmp_path):
    """A state root on a 40 MB tmpfs (as root), with busybox loaded."""
    if os.geteuid() != 0:
        pytest.fail("the full-disk tests mount a tmpfs: run the suite as root (make test does)")
    root = tmp_path / "small"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def _fill(root: Path) -> None:
    for name, chunk in (("filler", 1 << 20), ("filler2", 4096), ("filler3", 1)):
        try:
            with open(root / name, "wb", buffering=0) as f:
                while True:
                    f.write(b"\0" * chunk)
        except OSError:
            pass


def test_full_state_root_says_what_to_free(small_root, test_images_dir):
    hv = Hv(small_root)
    hv("load", "-i", str(test_images_dir / "busybox.oci.tar"), check=True)
    _fill(small_root)
    for args in (["tag", "busybox", "busybox:again"], ["volume", "create", "v1"],
                 ["load", "-i", str(test_images_dir / "busybox.oci.tar")],
                 ["run", "--rm", "busybox", "true"]):
        proc = hv(*args)
        line = _one_error(proc, "no space left on device under", str(small_root),
                          code=125 if args[0] == "run" else 1)
        assert "internal error" not in line and "Errno" not in line
        assert "hv system prune" in proc.stderr
    for name in ("filler", "filler2", "filler3"):
        (small_root / name).unlink(missing_ok=True)
    containers = small_root / "containers"  # the failed run left no container folder
    assert not containers.exists() or not os.listdir(containers)
    assert hv("ps", "-aq", check=True).stdout == ""
    hv("tag", "busybox", "busybox:again", check=True)
    assert "again" in hv("images", check=True).stdout
    _store_consistent(small_root)


# --- killed loads and pulls: the next one cleans up ----------------------------------------


def test_killed_loads_leave_nothing_the_next_command_keeps(hv, test_images_dir):
    """On a state root of its own: the session's root has other tests' processes and
    images around it, and this one counts every blob."""
    root = Path(tempfile.mkdtemp(prefix="hvk-", dir="/tmp"))
    env = {"HV_ROOT": str(root)}
    started = time.time()
    try:
        hv("load", "-i", str(test_images_dir / "busybox.oci.tar"), env=env, check=True)
        _killed_loads(hv, env, root, test_images_dir, started)
    finally:
        drain_pool(root)
        shutil.rmtree(root, ignore_errors=True)


def _killed_loads(hv, env: dict, root: Path, test_images_dir: Path, started: float) -> None:
    scratch = root / "tmp"
    scratch.mkdir(exist_ok=True)
    # an entry of a live process is kept; one of a dead process (no lock) is removed
    live = scratch / "blob-live"
    live.write_bytes(b"x")
    holder = subprocess.Popen(["flock", str(live), "sleep", "60"])
    dead = scratch / "rootfs-dead"
    dead.mkdir()
    (dead / "junk").write_bytes(b"y" * 1000)
    orphan = b"a blob no image names"
    (root / "images" / "blobs" / "sha256" / _sha(orphan)[7:]).write_bytes(orphan)
    old = time.time() - 60
    for p in (live, dead):
        os.utime(p, (old, old))
    try:
        for delay in (0.8, 1.6):
            proc = hv.popen("load", "-i", str(test_images_dir / "debian.oci.tar"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        time.sleep(0.2)
        for p in scratch.iterdir():  # age what the killed loads left past the grace time
            os.utime(p, (old, old))
        held = _journals(root)
        hv("load", "-i", str(test_images_dir / "busybox.oci.tar"), env=env, check=True)
        assert live.exists() and not dead.exists()
        assert _sha(orphan)[7:] not in _blob_names(root)
        assert sorted(os.listdir(scratch)) == ["blob-live"]
    finally:
        holder.kill()
        holder.wait()
        live.unlink(missing_ok=True)
    ids = hv("images", "-q", "--no-trunc", "debian", env=env, check=True).stdout.split()
    # a load killed after its record was written leaves a whole image: it has its disk
    assert all((root / "images" / "disks" / (i[7:] + ".ext4")).exists() for i in ids)
    blobs = root / "images" / "blobs" / "sha256"
    ages = {n: (os.stat(blobs / n).st_size, round(os.stat(blobs / n).st_mtime - started, 2))
            for n in _blob_names(root)}
    _store_consistent(root, {"journals before the last load": held, "blobs (size, s)": ages})


def test_index_with_a_crafted_record_is_ignored(hv, busybox, tmp_path):
    """A store written by an older hv that accepted '../' digests: the record is dropped and
    nothing is read or deleted through it."""
    victim, data = _victim(tmp_path)
    index_path = hv.root / "images" / "index.json"
    with open(hv.root / "images" / "index.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        doc = json.loads(index_path.read_text())
        doc["images"][_traversal(victim)] = {"repo_tags": ["evil:latest"], "repo_digests": [],
                                             "manifest": "", "layers": [_traversal(victim)]}
        index_path.write_text(json.dumps(doc))
    assert "evil" not in hv("images", check=True).stdout
    hv("rmi", "-f", "evil:latest")
    hv("tag", "busybox", "busybox:kept", check=True)  # a write drops the record for good
    hv("rmi", "busybox:kept", check=True)
    assert _traversal(victim) not in index_path.read_text()
    _assert_untouched(victim, data)
