"""One CLI invocation's state: the global flags, the Config built once from them and the
environment, and the engine over it. Handed to click as the root context's `obj`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class Session:
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    host: str | None = None  # -H
    debug: bool = False  # -D
    command: str = ""
    _config: object = None
    _engine: object = None
    _context: object = None  # made early for `run` (hv.engine.early)

    @property
    def config(self):
        if self._config is None:
            from hv.config import Config

            self._config = Config.from_environ(self.environ, host=self.host)
            self._context = None
        return self._config

    @property
    def engine(self):
        """The facade (hv.engine.Engine), made on first use."""
        if self._engine is None:
            from hv.engine import Engine

            self._engine = Engine(self.config, self._context)
        return self._engine

    def preopen(self) -> None:
        """Start opening libvirt now, before the facade and the CLI are imported."""
        from hv.engine.early import preopened

        self._context = preopened(self.config)


def current() -> Session:
    """The Session of the command being run (click's root context carries it)."""
    try:  # typer >= 0.25 vendors click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover
        from click import get_current_context

    return get_current_context().find_root().obj


def engine():
    return current().engine
