"""The pool's refiller (`python -m hv.pool_refill IMAGE_ID [ASKED_AT]`): boots pooled VMs
of one image until the pool holds HV_POOL of them, then exits (at once if the pool was
drained after ASKED_AT, the time of the run that asked). Detached from the `run` that started it;
one at a time per state root fills (Pooling.fill_pool takes a flock), so a burst of runs
starts one refiller that does the work and the others exit at once.

The refiller adopts the QEMUs it boots (a child subreaper) and stays, asleep in wait(),
until the last of them has exited: a claimed VM's exit is then reaped at once, as a
foreground `run` reaps its own (init reaps orphans late in some sandboxes, and libvirt
counts a zombie as running: `run --rm` waited ~1.8 s for it).
"""

from __future__ import annotations

import os
import sys

from hv.config import Config
from hv.engine import Engine
from hv.errors import HvError


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        sys.stderr.write("usage: python -m hv.pool_refill IMAGE_ID [ASKED_AT]\n")
        return 2
    from hv.engine.lifecycle import _become_subreaper

    _become_subreaper()
    engine = Engine(Config.from_environ())
    code = 0
    try:
        engine.fill_pool(argv[0], float(argv[1]) if len(argv) == 2 else None)
    except HvError as e:
        sys.stderr.write(f"hv pool: {e.message}\n")
        code = 1
    while True:  # reap the adopted QEMUs as they exit; none left: done
        try:
            os.wait()
        except ChildProcessError:
            return code
        except InterruptedError:
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
