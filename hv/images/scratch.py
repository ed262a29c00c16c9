"""Scratch files and folders under paths.tmp_dir(), each flock'ed by the process using it.

A `hv pull` or `hv load` killed with SIGKILL cannot remove its temporaries; the lock tells
the next command which ones are dead: `sweep()` removes every entry whose lock it can take
(the owner is gone) and that is older than a few seconds (the moment between creating an
entry and locking it). A lock is never inherited: Python opens descriptors non-inheritable,
so mkfs or tar children cannot keep a dead owner's entry alive.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from hv.paths import Paths

_GRACE_S = 10.0


def rmtree(path: Path) -> None:
    """rmtree that also gets through read-only directories (non-root extraction)."""

    def retry(func, name, _exc):
        try:
            os.chmod(os.path.dirname(name), stat.S_IRWXU)
            func(name)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


class Scratch:
    """Scratch space under one state root's tmp folder (same filesystem: renames are atomic)."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    @contextlib.contextmanager
    def file(self, prefix: str) -> Iterator[Path]:
        """A scratch file, removed on the way out unless the caller renamed it away."""
        self.paths.tmp_dir().mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=prefix, dir=self.paths.tmp_dir())
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            os.close(fd)

    @contextlib.contextmanager
    def folder(self, prefix: str) -> Iterator[Path]:
        """A scratch folder (0700), removed with everything in it on the way out."""
        self.paths.tmp_dir().mkdir(parents=True, exist_ok=True)
        name = tempfile.mkdtemp(prefix=prefix, dir=self.paths.tmp_dir())
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield Path(name)
        finally:
            rmtree(Path(name))
            os.close(fd)

    def sweep(self) -> list[str]:
        """Remove the scratch entries of processes that are gone; their names."""
        try:
            names = os.listdir(self.paths.tmp_dir())
        except OSError:
            return []
        removed = []
        now = time.time()
        for name in names:
            path = self.paths.tmp_dir() / name
            try:
                st = path.lstat()
                if now - st.st_mtime < _GRACE_S or stat.S_ISLNK(st.st_mode):
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # its owner is alive
            try:
                if stat.S_ISDIR(st.st_mode):
                    rmtree(path)
                else:
                    path.unlink(missing_ok=True)
                removed.append(name)
            finally:
                os.close(fd)
        return removed


