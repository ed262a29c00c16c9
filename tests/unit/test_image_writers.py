"""The image writers' journals: a prune spares exactly what live pulls and loads count on.

A killed load's blobs were left behind when some other process held the one shared
writers' lock that every writer took (a CI flake); each writer now has its own journal.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal

from hv.config import Config
from hv.images.records import ImageRecords


def _store(tmp_path) -> ImageRecords:
    config = Config.from_environ({"HV_ROOT": str(tmp_path / "root"), "HOME": str(tmp_path)})
    return ImageRecords(config)


def _put(store: ImageRecords, data: bytes) -> str:
    return store.blobs.put_bytes(data, "sha256:" + hashlib.sha256(data).hexdigest())


def _writer(root: str, home: str, ready, data: bytes) -> None:
    store = ImageRecords(Config.from_environ({"HV_ROOT": root, "HOME": home}))
    with store.writing():
        _put(store, data)
        ready.set()
        signal.pause()  # killed here, as `hv load` is killed mid-way


def test_a_live_writers_blobs_are_spared_and_a_killed_ones_go(tmp_path):
    store = _store(tmp_path)
    with store.writing():
        pass  # the store's folders
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_writer, args=(str(store.paths.state_root()), str(tmp_path),
                                             ready, b"a layer of a load at work"))
    proc.start()
    try:
        assert ready.wait(20)
        digest = "sha256:" + hashlib.sha256(b"a layer of a load at work").hexdigest()
        assert store.prune_orphans() == []  # journaled by a live writer: kept
        assert store.blobs.path(digest).exists()
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert store.prune_orphans() == [digest]
        assert not store.blobs.path(digest).exists()
        assert os.listdir(store.paths.image_writers_dir()) == []  # its journal went too
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


def test_a_nested_writing_journals_into_the_outer_one(tmp_path):
    store = _store(tmp_path)
    with store.writing():
        outer = store.blobs.journal
        with store.writing():
            assert store.blobs.journal is outer
            digest = _put(store, b"pulled by a run")
        assert store.blobs.journal is outer
        assert digest in store._in_flight()
    assert store.blobs.journal is None
