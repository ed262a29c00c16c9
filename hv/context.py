"""What every part of the engine needs of one Config: its settings, its files, its libvirt.

Built once by the facade (hv.engine.Engine) and passed down as the first argument; a
value, not a module global, so two engines (two state roots, a test and the service) never
share state.
"""

from __future__ import annotations

from dataclasses import dataclass

from hv.config import Config
from hv.paths import Paths
from hv.runtime.connection import Libvirt


@dataclass(frozen=True)
class Context:
    config: Config
    paths: Paths
    libvirt: Libvirt

    @classmethod
    def of(cls, config: Config) -> Context:
        paths = config.paths
        return cls(config, paths, Libvirt(paths, config.host))
