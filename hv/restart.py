"""Restart policies (`--restart no|on-failure[:N]|always|unless-stopped`) without a daemon.

A container with a policy gets a small watcher process of its own (double-forked, detached
from the terminal) that waits for the guest to power off and starts it again when the
policy says so, with Docker's doubling back-off. `hv stop`/`kill`/`rm` leave a marker so a
stop the user asked for is never undone. One watcher per container (an flock proves it).
"""

from __future__ import annotations

from dataclasses import dataclass

from hv.errors import UsageError
from hv.paths import Paths


@dataclass(frozen=True)
class Policy:
    name: str = "no"  # no | on-failure | always | unless-stopped
    max_retries: int = 0

    def wants_restart(self, exit_code: int, restarts: int) -> bool:
        if self.name in ("always", "unless-stopped"):
            return True
        if self.name == "on-failure" and exit_code != 0:
            return self.max_retries == 0 or restarts < self.max_retries
        return False

    def to_text(self) -> str:
        return f"{self.name}:{self.max_retries}" if self.max_retries else self.name


def parse(text: str | None) -> Policy:
    if not text:
        return Policy()
    name, _, count = text.partition(":")
    if name not in ("no", "on-failure", "always", "unless-stopped"):
        raise UsageError(f"invalid restart policy '{text}'",
                         hint="use no, on-failure[:N], always or unless-stopped")
    if count and (name != "on-failure" or not count.isdigit()):
        raise UsageError(f"invalid restart policy '{text}': only on-failure takes a count",
                         hint="use on-failure:N")
    return Policy(name, int(count or 0))


def mark_user_stop(paths: Paths, cid: str) -> None:
    try:
        paths.container_dir(cid).joinpath("user-stopped").write_text("1")
    except OSError:
        pass


def clear_user_stop(paths: Paths, cid: str) -> None:
    paths.container_dir(cid).joinpath("user-stopped").unlink(missing_ok=True)


def restart_count(paths: Paths, cid: str) -> int:
    try:
        return int(paths.container_dir(cid).joinpath("restarts").read_text())
    except (OSError, ValueError):
        return 0


def spawn_watcher(cid: str, env: dict[str, str]) -> None:
    """Start the watcher for `cid` in the background (it exits at once if one runs); `env`:
    the Config's child_environ(), from which it builds the same Config."""
    from hv.detached import spawn_module

    spawn_module("hv.restart_watcher", [cid], env)
