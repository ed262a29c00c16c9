"""`hv cp`: Docker's path rules over a tar stream to and from the guest agent.

Container paths are resolved by the agent inside the container's root (it chroots first),
so `..` and symlinks can never reach the agent's root or the host. What comes back from the
guest is untrusted too: members are renamed and checked before anything is written here.

Docker's rules (docs/reference/commandline/cp): a file to a missing path creates that file;
to a path ending in `/` that does not exist is an error; to a directory lands inside it. A
directory to a missing path creates it with the source's content; into an existing directory
it lands inside, or only its content when the source ends in `/.`. Without `-a` files copied
into a container belong to root; with `-a` owners are kept.
"""

from __future__ import annotations

import os
import posixpath
import stat as st
import tarfile
from pathlib import Path
from typing import BinaryIO

from hv.errors import HvError, NotFound, UsageError
from hv.guest import bulk

BUF = 1 << 20


class CopyError(HvError):
    hint = "check both paths; 'hv exec CONTAINER ls -la DIR' shows what is there"


def guest_stat(agent, path: str, follow: bool = False):
    """The agent's `stat` of PATH inside the container root, or None when missing."""
    from hv.guest.attach import StatResult, session_command

    args = ("-L", path) if follow else (path,)
    code, out, err = agent.call(session_command("stat", *args))
    if code == 2:
        return None
    if code != 0:
        raise CopyError(f"cannot stat {path} in the container: {err.decode().strip()}")
    return StatResult.parse(out.strip())


def _content_only(path: str) -> bool:
    return path.endswith("/.") or path == "."


# --- container -> host -----------------------------------------------------------------------


def copy_out(agent, cname: str, src: str, dest: str | BinaryIO, follow: bool,
             archive: bool) -> None:
    from hv.guest.attach import session_command

    s = guest_stat(agent, src, follow=follow)
    if s is None:
        where = posixpath.dirname(src) or "/"
        raise NotFound(f"Could not find the file {src} in container {cname}",
                       hint=f"check the path with 'hv exec {cname} ls -la {where}'")
    cmd = session_command("tar-out", "1" if follow else "0", src)
    size = None if s.type == "d" else s.size
    with bulk.open_stream(agent, cname, cmd, write=False, size=size) as ch:
        try:
            if not isinstance(dest, str):  # `-`: the raw tar on stdout
                while chunk := ch.stdout.read(BUF):
                    dest.write(chunk)
            else:
                _extract_out(ch.stdout, s, src, Path(dest), archive)
        except tarfile.TarError as e:
            _check(ch, "tar-out")  # a session that failed explains the broken archive
            raise CopyError(f"the guest sent a broken archive for {src}: {e}") from None
        _check(ch, "tar-out")


def _check(ch, what: str) -> None:
    code, err = ch.finish()
    if code != 0:
        raise CopyError(f"{what} failed in the guest: {err.decode(errors='replace').strip()}")


def _extract_out(stream, s, src: str, dest: Path, archive: bool) -> None:
    top = None if not _content_only(src) else "."  # else: the archive's first member
    if dest.is_dir():
        if s.type == "d" and _content_only(src):
            target_dir, new_top = dest, "."
        else:
            target_dir, new_top = dest, None  # keep the source's own name
    else:
        if str(dest).endswith("/"):
            raise CopyError(f"destination directory {dest} must exist",
                            hint="create it first, or drop the trailing /")
        if dest.exists() and s.type == "d":
            raise CopyError(f"cannot copy a directory to a file: {dest}",
                            hint="give a directory as the destination")
        if not dest.parent.is_dir():
            raise CopyError(f"destination directory {dest.parent} does not exist",
                            hint="create it first")
        target_dir, new_top = dest.parent, dest.name
    _safe_extract(stream, target_dir, top, new_top, archive)


def _rename(name: str, top: str, new_top: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    if top in (".", "/"):
        rest = name
    elif name == top or name.startswith(top + "/"):
        rest = name[len(top):].lstrip("/")
    else:
        raise CopyError(f"the guest sent an unexpected archive member {name!r}")
    if new_top == ".":
        return rest or "."
    return posixpath.join(new_top, rest) if rest else new_top


def _safe_extract(stream, target_dir: Path, top: str | None, new_top: str | None,
                  archive: bool) -> None:
    """Extract the guest's archive, renaming its top entry; `None` = the first member's."""
    uid, gid = os.getuid(), os.getgid()
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for m in tar:
            if top is None:
                top = m.name.removeprefix("./").split("/", 1)[0]
            m.name = _rename(m.name, top, new_top or top)
            if m.name == ".":
                continue
            if m.islnk():
                m.linkname = _rename(m.linkname, top, new_top or top)
            mode = m.mode
            m = tarfile.tar_filter(m, str(target_dir))  # no absolute, no .., no escaping links
            m.mode = mode & (0o7777 if archive else 0o777)
            if not archive:
                m.uid, m.gid, m.uname, m.gname = uid, gid, "", ""
            dest = target_dir / m.name
            if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
                dest.unlink()
            tar.extract(m, target_dir, set_attrs=True, numeric_owner=True,
                        filter="fully_trusted")


# --- host -> container -----------------------------------------------------------------------


def copy_in(agent, cname: str, src: str | BinaryIO, dest: str, follow: bool,
            archive: bool) -> None:
    from hv.guest.attach import session_command

    d = guest_stat(agent, dest, follow=True)
    if isinstance(src, str):
        srcp = Path(src)
        try:
            info = os.stat(srcp) if follow else os.lstat(srcp)
        except OSError:
            raise NotFound(f"no such file or directory: {src}",
                           hint="check the source path on this machine") from None
        is_dir = st.S_ISDIR(info.st_mode)
    else:
        is_dir = True
    if isinstance(src, str):
        if d is not None and d.type == "d":
            target_dir = dest
            arc = "." if (is_dir and _content_only(src)) else \
                os.path.basename(os.path.normpath(src))
        else:
            if dest.endswith("/"):
                raise CopyError(f"destination directory {dest} must exist in container {cname}",
                                hint=f"create it with 'hv exec {cname} mkdir -p {dest}'")
            if d is not None and is_dir:
                raise CopyError(f"cannot copy a directory to a file: {dest}",
                                hint="give a directory as the destination")
            parent = posixpath.dirname(dest.rstrip("/")) or "/"
            pd = guest_stat(agent, parent, follow=True)
            if pd is None or pd.type != "d":
                raise NotFound(f"Could not find the file {parent} in container {cname}",
                               hint=f"create it with 'hv exec {cname} mkdir -p {parent}'")
            target_dir, arc = parent, posixpath.basename(dest.rstrip("/"))
    else:
        if d is None or d.type != "d":
            raise CopyError(f"destination {dest} must be a directory to extract a tar stream",
                            hint="give an existing directory in the container")
        target_dir, arc = dest, ""
    err: list[BaseException] = []
    size = _tree_size(Path(src), follow) if isinstance(src, str) else None
    cmd = session_command("tar-in", target_dir)
    with bulk.open_stream(agent, cname, cmd, write=True, size=size) as ch:
        try:
            if isinstance(src, str):
                _write_tar(ch.stdin, Path(src), arc, follow, archive)
            else:
                while chunk := src.read(BUF):
                    ch.stdin.write(chunk)
        except BrokenPipeError as e:  # the session ended early: its status and stderr say why
            err.append(e)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            err.append(e)
            ch.abort()  # a half-sent archive is not extracted to the end
        code, out = ch.finish()
    if code == 0 and err and isinstance(err[0], BrokenPipeError):
        err.clear()  # the guest's tar read the archive's end and stopped before the padding
    if err and not isinstance(err[0], OSError):
        raise err[0]
    if code != 0 or err:
        why = out.decode(errors="replace").strip() or str(err[0] if err else "")
        raise CopyError(f"copying into {cname}:{dest} failed: {why}")


def _tree_size(src: Path, follow: bool, limit: int = bulk.SSH_FROM) -> int:
    """About how many bytes the tar of SRC takes, counted up to LIMIT: enough to choose the
    bulk path (what cannot be read is for the copy itself to report)."""
    stat = os.stat if follow else os.lstat
    try:
        top = stat(src)
    except OSError:
        return 0
    if not st.S_ISDIR(top.st_mode):
        return 1024 + top.st_size
    total = 0
    for dirpath, dirnames, filenames in os.walk(src, followlinks=follow):
        total += 512 * len(dirnames)
        for n in filenames:
            try:
                total += 512 + stat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
        if total >= limit:
            break
    return total


def _write_tar(w, src: Path, arc: str, follow: bool, archive: bool) -> None:
    def fix(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        if not archive:
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
        return ti

    with tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT,
                      dereference=follow) as tar:
        if arc == ".":
            for child in sorted(os.listdir(src)):
                tar.add(src / child, arcname=child, filter=fix)
        else:
            tar.add(src, arcname=arc, filter=fix)


def parse_target(text: str) -> tuple[str | None, str]:
    """`CONTAINER:PATH` -> (container, path); a host path -> (None, path)."""
    if text == "-":
        return None, "-"
    head, sep, tail = text.partition(":")
    if sep and head and "/" not in head and not text.startswith((".", "/")):
        if not tail:
            raise UsageError(f"no path given in {text!r}", hint="use CONTAINER:/path")
        return head, tail
    return None, text

