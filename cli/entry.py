"""The `hv` console script: for `run`, libvirt starts opening before the CLI is imported.

Importing typer and the engine takes ~80 ms; a `run` spends it with the second core idle.
Opening the embedded libvirt driver then (in a forked child, see hv.engine.early) takes
that work off the path to the VM's start.
"""

from __future__ import annotations

import sys

from cli.args import command_name

# Commands that make exactly one libvirt call right after preparing their files.
PREOPEN = {"run"}


def main() -> None:
    args = sys.argv[1:]
    session = None
    if command_name(args) in PREOPEN and not {"-H", "--host", "--help"} & set(args):
        from cli.session import Session

        session = Session()
        session.preopen()
    from cli.main import main as cli_main

    cli_main(session=session)
