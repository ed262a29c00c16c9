"""The engine facade (podman's libpod for hv): `Engine` and its typed results.

Both front ends (cli/, the Engine API service) use only this package; it never prints.
The names load on first use (PEP 562), so `hv.engine.early` can start opening libvirt for
a `run` before the facade's modules are imported.
"""

from __future__ import annotations

__all__ = ["Created", "Engine", "LogLine", "RunResult", "WaitResult"]


def __getattr__(name: str):
    if name == "Engine":
        from hv.engine.facade import Engine

        return Engine
    if name in ("Created", "LogLine", "RunResult", "WaitResult"):
        from hv.engine import results

        return getattr(results, name)
    raise AttributeError(f"module 'hv.engine' has no attribute {name!r}")
