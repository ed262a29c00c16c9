"""The engine facade (podman's libpod for hv): `Engine` and its typed results.

Both front ends (cli/, the Engine API service) use only this package; it never prints.
"""

from hv.engine.facade import Engine
from hv.engine.results import Created, LogLine, RunResult, WaitResult

__all__ = ["Created", "Engine", "LogLine", "RunResult", "WaitResult"]
