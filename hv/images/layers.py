"""Image layers -> one root filesystem directory, the way overlayfs would show them.

Whiteouts (`.wh.NAME` removes NAME from lower layers, `.wh..wh..opq` hides the lower content
of its directory but keeps entries of the same layer), numeric owners, modes with setuid bits,
device nodes, hardlinks, symlinks and xattrs are kept.

Layers are untrusted. The extraction runs in a forked child; as root that child chroot()s
into the rootfs first, so no name, `..` or symlink in a layer can reach outside it (the kernel
resolves every path inside the chroot). On top of that every parent path is resolved with
`secure_join`, which follows symlinks while clamping them to the root, so the same guarantee
holds when hv is not root and cannot chroot. Without root, owners are not changed and device
nodes are skipped (an unprivileged user cannot mknod); everything else is extracted as usual.

Sizes are untrusted too. A sparse member (GNU's old 'S' type and the PAX sparse formats 0.0,
0.1 and 1.0, all decoded by tarfile) is written with its holes as holes: only the data
regions are written, at their offsets, and the file is then truncated to its real size; a
sparse map that is unordered, overlapping or reaches past the real size is refused. Runs of
zeroes in ordinary files become holes too (mkfs.ext4 -d copies holes as holes). Before a
member is written its declared (expanded) size is added to the image's running total, which
may not pass `hv.images.disk.allowed_size` of the layers' compressed size: a 10 KB layer that
declares a 10 GB file, sparse or compressed, is refused at its header, with nothing written.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import signal
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from hv.errors import HvError, Interrupted
from hv.images.disk import allowed_size, human_bytes, too_large_hint

try:  # imported before any chroot: nothing may be imported inside the rootfs
    import zstandard
except ImportError:  # pragma: no cover - depends on the host
    zstandard = None

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAX_SYMLINKS = 40
_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)


class LayerError(HvError):
    hint = "the image layer is damaged or unsupported; pull or load the image again"


def _copy(src: BinaryIO, out, length: int, name: str) -> None:
    """`length` bytes from src to out at their current offsets; all-zero chunks are skipped
    (left as a hole), so the caller truncates `out` to its final size afterwards."""
    while length > 0:
        want = min(length, _CHUNK)
        chunk = src.read(want)
        if len(chunk) != want:
            raise LayerError(f"{name!r} ends before its declared size (truncated layer)")
        if chunk == _ZEROS[:want]:
            out.seek(want, os.SEEK_CUR)
        else:
            out.write(chunk)
        length -= want


def _write_sparse(tar: tarfile.TarFile, out, m: tarfile.TarInfo) -> None:
    """A sparse member's data regions at their offsets, holes left unwritten. The regions'
    bytes are stored one after another (in map order) from m.offset_data; they are read
    from the tar stream itself, which tarfile's expanded view cannot seek in (stream mode)."""
    end = 0
    stored = 0
    for offset, size in m.sparse:
        if offset < 0 or size < 0 or offset + size > m.size or (size and offset < end):
            raise LayerError(f"{m.name!r} has a malformed sparse map (region {offset}+{size} "
                             f"of a {m.size}-byte file)")
        if size:
            end = offset + size
            stored += size
    raw = tar.fileobj
    if stored > tar.offset - m.offset_data:
        raise LayerError(f"{m.name!r} has a malformed sparse map ({stored} bytes of data "
                         f"in {tar.offset - m.offset_data})")
    if raw.tell() != m.offset_data:
        raw.seek(m.offset_data)
    for offset, size in m.sparse:
        if size:
            out.seek(offset)
            _copy(raw, out, size, m.name)


def compression(fileobj: BinaryIO) -> str:
    """'gzip', 'zstd' or 'none', from the first bytes (the stream is rewound)."""
    head = fileobj.read(4)
    fileobj.seek(0)
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "none"


def decompressed(fileobj: BinaryIO) -> BinaryIO:
    """A readable tar stream for a gzip, zstd or plain layer."""
    kind = compression(fileobj)
    if kind == "gzip":
        return gzip.GzipFile(fileobj=fileobj, mode="rb")
    if kind == "zstd":
        if zstandard is None:
            raise LayerError(
                "this image has zstd-compressed layers and the 'zstandard' module is missing",
                hint="install it into hv's environment: pip install zstandard",
            )
        return zstandard.ZstdDecompressor().stream_reader(fileobj)
    return fileobj


def normalize(name: str) -> str:
    """A member name as a clean path relative to the root ('' is the root itself)."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def secure_join(root: str, rel: str) -> str:
    """`root/rel` with symlinks in `rel` followed but never outside `root` (like securejoin)."""
    pending = [p for p in rel.split("/") if p not in ("", ".")]
    pending.reverse()
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        current = os.path.join(root, *resolved, part)
        try:
            st = os.lstat(current)
        except OSError:
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_SYMLINKS:
            raise OSError(40, "too many levels of symbolic links", rel)
        target = os.readlink(current)
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
    return os.path.join(root, *resolved)


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


class _Applier:
    """Applies tar layers in order onto `root`; runs inside the extraction child."""

    def __init__(self, root: str, privileged: bool, limit: int | None = None,
                 compressed: int = 0, fixed: str = "") -> None:
        self.root = root
        self.privileged = privileged
        self.dir_meta: dict[str, tarfile.TarInfo] = {}
        self.limit = limit  # bytes the image's files may add up to (None: no limit)
        self.compressed = compressed
        self.fixed = fixed  # HV_MAX_IMAGE_SIZE, for the hint
        self.expanded = 0  # declared sizes of the regular files so far, every layer
        self.layer = 0

    def path(self, rel: str) -> str:
        parent, _, base = rel.rpartition("/")
        if not base:
            return self.root
        return os.path.join(secure_join(self.root, parent), base)

    def apply(self, stream: BinaryIO) -> None:
        layer_paths: set[str] = set()
        opaque: list[str] = []
        with tarfile.open(fileobj=stream, mode="r|", errorlevel=1) as tar:
            for member in tar:
                rel = normalize(member.name)
                parent, _, base = rel.rpartition("/")
                if base == ".wh..wh..opq":
                    opaque.append(parent)
                    continue
                if base.startswith(".wh."):
                    _remove(self.path(f"{parent}/{base[4:]}" if parent else base[4:]))
                    continue
                parts = rel.split("/")
                for i in range(1, len(parts) + 1):
                    layer_paths.add("/".join(parts[:i]))
                if member.isreg():
                    self.account(member)
                try:
                    self.entry(tar, member, rel)
                except OSError as e:
                    raise LayerError(
                        f"cannot extract {member.name!r}: {e.strerror or e}"
                    ) from e
        for rel in opaque:
            self.prune(rel, layer_paths)

    def account(self, m: tarfile.TarInfo) -> None:
        """Add a file's declared size to the image's total; refuse it past the limit."""
        self.expanded += m.size
        if self.limit is not None and self.expanded > self.limit:
            raise LayerError(
                f"the image's files add up to more than the {human_bytes(self.limit)} allowed "
                f"for {human_bytes(self.compressed)} of layers: layer {self.layer + 1} declares "
                f"{m.name!r} of {human_bytes(m.size)}",
                hint=too_large_hint(self.compressed, self.fixed),
            )

    def prune(self, rel: str, keep: set[str]) -> None:
        """Hide lower-layer content below an opaque directory."""
        directory = self.path(rel)
        if not os.path.isdir(directory) or os.path.islink(directory):
            return
        for name in os.listdir(directory):
            child = f"{rel}/{name}" if rel else name
            full = os.path.join(directory, name)
            if child not in keep:
                _remove(full)
            elif os.path.isdir(full) and not os.path.islink(full):
                self.prune(child, keep)

    def entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo, rel: str) -> None:
        target = self.path(rel)
        if not rel:
            if m.isdir():
                self.dir_meta[target] = m
            return
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            st = None
        if st is not None and not (m.isdir() and stat.S_ISDIR(st.st_mode)):
            _remove(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if m.isdir():
            if st is None or not stat.S_ISDIR(st.st_mode):
                os.mkdir(target, 0o755)
            self.dir_meta[target] = m
            return
        if m.isreg():
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                if m.sparse is not None:
                    _write_sparse(tar, out, m)
                else:
                    src = tar.extractfile(m)
                    if src is not None:
                        _copy(src, out, m.size, m.name)
                out.truncate(m.size)
        elif m.issym():
            os.symlink(m.linkname, target)
        elif m.islnk():
            os.link(self.path(normalize(m.linkname)), target, follow_symlinks=False)
            return  # a hardlink shares the metadata of its target
        elif m.ischr() or m.isblk():
            if not self.privileged:
                return
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(target, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        elif m.isfifo():
            os.mkfifo(target, 0o600)
        else:
            return
        self.metadata(target, m)

    def metadata(self, target: str, m: tarfile.TarInfo) -> None:
        if self.privileged:
            os.lchown(target, m.uid, m.gid)
        for key, value in m.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                try:
                    raw = value.encode("utf-8", "surrogateescape")
                    os.setxattr(target, key[13:], raw, follow_symlinks=False)
                except (OSError, UnicodeError):
                    pass
        if not m.issym():
            os.chmod(target, m.mode & 0o7777)  # after chown, which clears setuid bits
        os.utime(target, (m.mtime, m.mtime), follow_symlinks=False)

    def finish(self) -> None:
        """Directory modes last, deepest first, so read-only dirs did not block extraction."""
        for target in sorted(self.dir_meta, key=lambda p: p.count("/"), reverse=True):
            try:
                if stat.S_ISDIR(os.lstat(target).st_mode):
                    self.metadata(target, self.dir_meta[target])
            except FileNotFoundError:
                continue


def _child(rootfs: str, fds: list[int], report: int, limit: int | None,
           compressed: int, fixed: str = "") -> None:
    """Body of the extraction child; never returns."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.umask(0o022)
        privileged = os.geteuid() == 0
        root = rootfs
        if privileged:
            os.chroot(rootfs)
            os.chdir("/")
            root = "/"
        applier = _Applier(root, privileged, limit, compressed, fixed)
        for i, fd in enumerate(fds):
            applier.layer = i
            with os.fdopen(fd, "rb") as raw:
                stream = decompressed(raw)
                try:
                    applier.apply(stream)
                except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as e:
                    if isinstance(e, LayerError):
                        raise
                    raise LayerError(f"layer {i + 1} is not a valid tar archive: {e}") from e
                except Exception as e:
                    if isinstance(e, LayerError):
                        raise
                    raise LayerError(f"layer {i + 1} cannot be read: {e}") from e
            os.write(report, f"L {i}\n".encode())
        applier.finish()
    except BaseException as e:  # noqa: BLE001 - reported to the parent, then exit
        message = e.message if isinstance(e, HvError) else f"{type(e).__name__}: {e}"
        hint = getattr(e, "hint", "")
        try:
            os.write(report, f"E {message}\x00{hint}\n".encode(errors="replace"))
        except OSError:
            pass
        code = 1
    os._exit(code)


def _die_with(parent: int) -> None:
    """A child whose hv is killed must not go on writing into (and keeping the scratch lock
    of) a folder nobody will use: SIGKILL it when the parent dies."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # died before prctl took effect
        os._exit(1)


def _close_all_but(keep: set[int]) -> None:
    """The untrusted-layer child holds nothing of its parent's but its layers and report
    pipe: not the store's locks (a dying child kept the image writers' lock, so the next
    load skipped collecting a killed load's blobs), no other open file."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def extract(
    layers: list[Path], rootfs: Path, on_layer: Callable[[int], None] | None = None,
    limit: int | None = -1, max_image_size: str = "",
) -> None:
    """Apply `layers` (oldest first) onto the empty directory `rootfs`.

    `on_layer(i)` is called after layer i is applied. Ctrl-C kills the child and raises
    Interrupted; the caller removes `rootfs`. `limit`: the bytes the image's files may
    declare in all (default: `hv.images.disk.allowed_size` of the layer files' size; None:
    no limit).
    """
    fds: list[int] = []
    try:
        for layer in layers:
            fds.append(os.open(layer, os.O_RDONLY))
    except OSError as e:
        for fd in fds:
            os.close(fd)
        raise LayerError(f"layer file {e.filename} cannot be opened: {e.strerror}") from e
    compressed = sum(os.fstat(fd).st_size for fd in fds)
    if limit == -1:
        limit = allowed_size(compressed, max_image_size)
    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        _die_with(parent)
        _close_all_but({*fds, write_end})
        _child(str(rootfs), fds, write_end, limit, compressed, max_image_size)
    os.close(write_end)
    for fd in fds:
        os.close(fd)
    error: tuple[str, str] | None = None
    try:
        with os.fdopen(read_end, "rb") as reports:
            for line in reports:
                text = line.decode(errors="replace").rstrip("\n")
                if text.startswith("L ") and on_layer:
                    on_layer(int(text[2:]))
                elif text.startswith("E "):
                    message, _, hint = text[2:].partition("\x00")
                    error = (message, hint)
        _, status = os.waitpid(pid, 0)
    except KeyboardInterrupt:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise Interrupted("interrupted while unpacking the image layers") from None
    if error:
        raise LayerError(error[0], hint=error[1] or None)
    if os.waitstatus_to_exitcode(status) == -signal.SIGINT:
        raise Interrupted("interrupted while unpacking the image layers")
    if status != 0:
        raise LayerError(f"unpacking the image layers failed (status {status})")


def tree_size(rootfs: Path) -> int:
    """Bytes of file content and symlinks in the tree (Docker's image SIZE)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_size
    return total
