"""What a front end does before the facade is imported: start opening libvirt for the one
call a `run` is about to make (hv.runtime.connection.Libvirt.preopen), so the facade's
and the CLI's imports (~80 ms) overlap libvirt's start-up. The Engine made later takes the
same Context (`Engine(config, context=...)`), pre-opened connection and all."""

from __future__ import annotations

from hv.config import Config
from hv.context import Context


def preopened(config: Config) -> Context:
    ctx = Context.of(config)
    ctx.libvirt.preopen()
    return ctx
