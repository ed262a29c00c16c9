"""Starting hv's own background processes (restart watchers, the pool's refiller)."""

from __future__ import annotations

import os
import sys


def spawn_module(module: str, args: list[str], env: dict[str, str]) -> None:
    """Run `python -m MODULE ARGS` detached (double fork, own session, stdio on /dev/null),
    without waiting for it; `env`: a Config's child_environ(), from which it builds the
    same Config."""
    pid = os.fork()
    if pid:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # the API service's reaper thread took it first
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.execve(sys.executable, [sys.executable, "-m", module, *args], env)
    finally:
        os._exit(0)
