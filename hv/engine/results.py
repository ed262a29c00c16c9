"""The facade's typed results (what the Engine API's answers carry)."""

from __future__ import annotations

from dataclasses import dataclass

from hv.containers import Container


@dataclass
class LogLine:
    stream: int  # 1 stdout, 2 stderr
    ts_ns: int
    data: bytes


@dataclass
class Created:
    """What create returns (Docker's ContainerCreate: the container and its warnings)."""

    container: Container
    warnings: list[str]


@dataclass
class WaitResult:
    """Docker's ContainerWait answer: the exit code, and why hv stopped it (if it did)."""

    status_code: int
    error: str | None = None


@dataclass
class RunResult:
    """The end of a `run`: the container, its exit code (None for a detached run, which
    returns once the main process started; 130 when interrupted, the VM stopped)."""

    container: Container
    exit_code: int | None
    interrupted: bool = False  # ^C stopped it (exit code 130)
