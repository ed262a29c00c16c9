"""Layers -> rootfs -> ext4: whiteouts, metadata, hostile tars, the base disk (no VM, no mount)."""

from __future__ import annotations

import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from hv.images import disk, layers
from hv.images.layers import LayerError, secure_join
from tests.fixtures.images import (
    Entry,
    directory,
    file,
    hardlink,
    opaque,
    symlink,
    whiteout,
    write_layer,
)

ROOT = os.geteuid() == 0


def _extract(tmp_path: Path, *layer_entries: list[Entry], compress=False) -> Path:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    paths = [write_layer(tmp_path / f"l{i}.tar", e, compress) for i, e in enumerate(layer_entries)]
    seen = []
    layers.extract(paths, rootfs, seen.append)
    assert seen == list(range(len(paths)))
    return rootfs


def test_whiteouts_and_opaque_dirs(tmp_path, mode):
    lower = [
        directory("etc"), file("etc/a", "a"), file("etc/b", "b"),
        directory("opt"), directory("opt/x"), file("opt/x/old", "old"),
        directory("opt/x/sub"), file("opt/x/sub/deep", "deep"), file("keep", "k"),
        directory("gone"), file("gone/f", "f"),
    ]
    upper = [
        whiteout("etc/a"),
        file("opt/x/new", "new"),            # same layer, before the marker: kept
        directory("opt/x/sub"),             # same layer dir: kept, lower content hidden
        opaque("opt/x"),
        file("opt/x/later", "later"),        # same layer, after the marker: kept
        whiteout("gone"),
    ]
    root = _extract(tmp_path, lower, upper)
    assert not (root / "etc/a").exists()
    assert (root / "etc/b").read_text() == "b"
    assert sorted(os.listdir(root / "opt/x")) == ["later", "new", "sub"]
    assert os.listdir(root / "opt/x/sub") == []
    assert not (root / "gone").exists()
    assert (root / "keep").exists()
    assert not list(root.rglob(".wh.*"))


def test_replacing_entries_between_layers(tmp_path):
    lower = [directory("d"), file("d/f", "x"), file("f2", "old"), symlink("s", "f2")]
    upper = [file("d", "now a file"), directory("f2"), file("s", "plain")]
    root = _extract(tmp_path, lower, upper, compress=True)
    assert (root / "d").read_text() == "now a file"
    assert (root / "f2").is_dir()
    assert not (root / "s").is_symlink() and (root / "s").read_text() == "plain"


def test_metadata_kept(tmp_path, mode):
    entries = [
        directory("bin"), file("bin/su", b"\x7fELF", 0o4755),
        file("home", "x", 0o640, uid=1000, gid=1001),
        hardlink("bin/su-link", "bin/su"),
        symlink("bin/sh", "/bin/su"),
        directory("ro", 0o555), file("ro/inside", "y", 0o444),
        Entry("dev/null", "chr", mode=0o666, major=1, minor=3),
        Entry("fifo", "fifo", mode=0o600),
        directory("sticky", 0o1777),
    ]
    root = _extract(tmp_path, entries)
    st = os.lstat(root / "bin/su")
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert os.lstat(root / "bin/su-link").st_ino == st.st_ino
    assert os.readlink(root / "bin/sh") == "/bin/su"
    assert stat.S_IMODE(os.lstat(root / "ro").st_mode) == 0o555
    assert (root / "ro/inside").read_text() == "y"
    assert stat.S_IMODE(os.lstat(root / "sticky").st_mode) == 0o1777
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    if mode == "as-root":
        home = os.lstat(root / "home")
        assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 1001, 0o640)
        dev = os.lstat(root / "dev/null")
        assert stat.S_ISCHR(dev.st_mode) and os.major(dev.st_rdev) == 1
        assert os.minor(dev.st_rdev) == 3


@pytest.fixture(params=["as-root", "unprivileged"])
def mode(request, monkeypatch):
    """Run extraction as is, and as if hv were not root (no chroot: secure_join alone)."""
    if request.param == "unprivileged":
        monkeypatch.setattr(layers.os, "geteuid", lambda: 1000)
    elif not ROOT:
        pytest.skip("needs root")
    return request.param


def test_hostile_layer_stays_inside(tmp_path, mode):
    outside = tmp_path / "outside"
    outside.mkdir()
    entries = [
        file("../x", "dotdot"),
        file("/abs", "absolute"),
        file("a/../../../y", "deep dotdot"),
        symlink("evil", "/"),
        file("evil/pwned", "through a symlink to /"),
        symlink("up", f"../../../../../../{outside}"),
        file("up/escape", "through a relative symlink"),
        symlink("abs", str(outside)),
        file("abs/escape2", "through an absolute symlink"),
        symlink("loop", "loop"),
    ]
    root = _extract(tmp_path, entries)
    assert os.listdir(outside) == []
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert (root / "x").read_text() == "dotdot"
    assert (root / "abs").is_symlink()
    assert (root / "pwned").read_text() == "through a symlink to /"
    # the symlinks are followed, but inside the rootfs
    inside = root / str(outside).lstrip("/")
    assert sorted(os.listdir(inside)) == ["escape", "escape2"]


def test_hardlink_to_a_host_file_is_refused(tmp_path, mode):
    secret = tmp_path / "secret"
    secret.write_text("host")
    with pytest.raises(LayerError):
        _extract(tmp_path, [hardlink("stolen", str(secret))])
    assert secret.stat().st_nlink == 1


def test_corrupt_and_zstd_layers(tmp_path):
    rootfs = tmp_path / "r"
    rootfs.mkdir()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(LayerError, match="layer 1"):
        layers.extract([bad], rootfs)
    zst = tmp_path / "layer.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 16)
    if layers.zstandard is None:
        with pytest.raises(LayerError, match="zstandard"):
            layers.extract([zst], rootfs)


def test_secure_join_clamps_to_root(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    os.symlink("/etc", root / "d/etc")
    os.symlink("../../..", root / "d/up")
    os.symlink("self", root / "self")
    assert secure_join(str(root), "d/etc/passwd") == f"{root}/etc/passwd"
    assert secure_join(str(root), "d/up/d/up/x") == f"{root}/x"
    assert secure_join(str(root), "../../x") == f"{root}/x"
    with pytest.raises(OSError):
        secure_join(str(root), "self/x")


@pytest.mark.parametrize("text, n", [
    ("8589934592", 8 << 30), ("8G", 8 << 30), ("512M", 512 << 20), ("1.5g", 3 << 29),
    ("64MiB", 64 << 20), ("100K", 100 << 10),
])
def test_parse_size(text, n):
    assert disk.parse_size(text) == n


def test_parse_size_invalid():
    with pytest.raises(Exception, match="invalid disk size"):
        disk.parse_size("lots")


def _debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True,
                          text=True, check=True).stdout


def test_base_disk_is_sparse_ext4_with_metadata(tmp_path, monkeypatch):
    entries = [
        directory("bin"), file("bin/su", b"x" * 5000, 0o4755, uid=0, gid=0),
        file("data", "d", 0o640, uid=1000, gid=1001), hardlink("data2", "data"),
        symlink("link", "data"), Entry("dev/null", "chr", mode=0o666, major=1, minor=3),
    ]
    root = _extract(tmp_path, entries)
    image = tmp_path / "disk.ext4"
    monkeypatch.delenv("HV_DISK_SIZE", raising=False)
    disk.build(root, image, layers.tree_size(root), "sha256:" + "0" * 64)
    st = image.stat()
    assert st.st_size == 8 << 30
    assert st.st_blocks * 512 < 32 << 20, "base disk must stay sparse"
    su = _debugfs(image, "stat /bin/su")
    assert "Mode:  04755" in su and "Size: 5000" in su
    data = _debugfs(image, "stat /data")
    if ROOT:
        assert "User:  1000   Group:  1001" in data
        assert "Type: character special" in _debugfs(image, "stat /dev/null")
    assert "Links: 2" in data
    assert "data" in _debugfs(image, "stat /link")
    dumped = tmp_path / "su.out"
    _debugfs(image, f"dump /bin/su {dumped}")
    assert dumped.read_bytes() == b"x" * 5000


def test_disk_size_from_env(tmp_path, monkeypatch):
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_text("x")
    from hv.config import Config

    size = Config.from_environ({"HV_DISK_SIZE": "512M"}).disk_size
    image = tmp_path / "d.ext4"
    disk.build(root, image, 1, "sha256:" + "1" * 64, disk_size=size)
    assert image.stat().st_size == 512 << 20
    assert tarfile  # keep the import used for readers grepping how layers are made


def test_the_extraction_child_holds_none_of_the_parents_locks(tmp_path):
    """A load killed mid-unpack must not leave its child holding the image writers' lock
    (the next load then skipped collecting the killed one's blobs: a CI flake). The child
    closes every descriptor but its layers and report pipe."""
    import fcntl
    import gzip
    import io
    import threading
    import time

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        for i in range(3):
            info = tarfile.TarInfo(f"zeros{i}")
            info.size = 100 * 1024 * 1024
            tf.addfile(info, io.BytesIO(bytes(info.size)))
    layer = tmp_path / "layer.tar.gz"
    layer.write_bytes(gzip.compress(raw.getvalue(), compresslevel=1))
    lockfile = tmp_path / "writers.lock"
    held = open(lockfile, "a")  # noqa: SIM115 - closed below, while the child runs
    fcntl.flock(held, fcntl.LOCK_SH)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    worker = threading.Thread(target=layers.extract, args=([layer], rootfs))
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not any(open(f"/proc/self/task/{t}/children").read().split()
                      for t in os.listdir("/proc/self/task")):
            assert time.monotonic() < deadline, "the extraction child never started"
            time.sleep(0.001)
        held.close()  # our hold goes; only an inherited copy could keep the lock now
        with open(lockfile, "a") as probe:
            while True:  # the child closes what it inherited first thing after the fork
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.001)
            # got it while the child still unpacks: it held no copy of the lock
            assert worker.is_alive(), "the child finished first: make the layer bigger"
    finally:
        worker.join()
