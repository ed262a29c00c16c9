"""The restart watcher process of one container (`python -m hv.restart_watcher ID`).

It sits above the engine (it starts the container again through the facade), so the policy
rules in hv.restart stay below it and import no facade.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from dataclasses import replace

from hv.config import Config
from hv.engine import Engine
from hv.restart import parse, restart_count
from hv.runtime.domains import running


def watch(config: Config, cid: str) -> None:
    paths = config.paths
    lock = paths.container_dir(cid) / "watcher.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another watcher has it
    engine = Engine(config)
    delay = 0.1
    while True:
        try:
            c = engine.container(cid)
        except Exception:  # noqa: BLE001 - removed: nothing left to watch
            return
        policy = parse(c.record.restart)
        while running(engine.libvirt, c.domain):
            time.sleep(0.2)
        if paths.container_dir(cid).joinpath("user-stopped").exists():
            return
        code = replace(c, active=False, paused=False).state().exit_code
        n = restart_count(paths, cid)
        if not policy.wants_restart(code, n):
            return
        time.sleep(delay)
        delay = min(delay * 2, 60)
        try:
            engine.start(cid, watch=False)
        except Exception:  # noqa: BLE001 - try again after the back-off
            continue
        finally:
            # counted once the restart began, never before: an `inspect` in between must
            # not pair the new count with the previous run's exit code
            paths.container_dir(cid).joinpath("restarts").write_text(str(n + 1))


if __name__ == "__main__":
    watch(Config.from_environ(), sys.argv[1])
