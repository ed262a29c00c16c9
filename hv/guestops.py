"""What hv does inside or to a running container: exec, attach, signals, stop/start,
pause, top, stats, ports. The engine facade delegates here; nothing prints.
"""

from __future__ import annotations

import signal as _signal
import time

from hv.containers import Container
from hv.context import Context
from hv.errors import Conflict, HvError, RuntimeFailure, UsageError
from hv.runtime.connection import attempt, lookup

# Linux input keycodes: ctrl-alt-del, which the agent turns into SIGTERM for the main process
_CTRL_ALT_DEL = [29, 56, 111]


def not_running(ctx: Context, c: Container, action: str = "") -> Conflict:
    """Docker's "is not running", with the reason when hv itself stopped the container
    (hv.engine.Engine._stop_broken records it as an `error` line after `started`)."""
    from hv.guest.logstream import read_status

    what = f"cannot {action} container: {c.name}: " if action else ""
    st = read_status(ctx.paths.container_status(c.id))
    if st.error and st.started_ns is not None:
        return Conflict(f"{what}container {c.id} is not running: {st.error}",
                        hint=f"start it again with 'hv start {c.name}'; the files in its "
                             "volumes and bind folders are kept")
    return Conflict(f"{what}container {c.id} is not running",
                    hint=f"start it first with 'hv start {c.name}'")


def parse_signal(text: str) -> int:
    t = text.strip().upper()
    if t.isdigit():
        n = int(t)
        if 1 <= n <= 64:
            return n
    else:
        name = t if t.startswith("SIG") else "SIG" + t
        try:
            return int(_signal.Signals[name])
        except KeyError:
            pass
    raise UsageError(f"invalid signal: {text}", hint="use a name like SIGTERM, TERM or a number")


def connect_agent(ctx: Context, c: Container, timeout: float = 90.0, direct: bool = False,
                  spawn: bool = True):
    """An agent for `c`: `open(command, pty)`, `call(command, stdin, timeout)`, `close()`.

    Normally one that goes through the container's exec multiplexer (hv.guest.mux: one SSH
    transport kept per container, so no handshake and no paramiko import here), started if
    there is none (`spawn`; without, a direct connection is made instead: for one-off calls
    to a container about to go down). `direct` (or HV_MUX=0): a paramiko Agent of its own,
    for callers that need its transport or endpoint (cp).
    """
    if not c.active:
        raise not_running(ctx, c)
    if not direct:
        from hv.guest import mux

        if ctx.config.mux:
            agent = mux.connect(ctx.config, c.id, timeout=timeout, spawn=spawn)
            if agent is not None:
                return agent
    from hv.guest.agent import Agent, endpoint

    return Agent.connect(endpoint(ctx.paths, c.id), timeout=timeout)


def _send_ctrl_alt_del(conn, name: str) -> bool:
    import libvirt  # loaded already: `conn` is open

    dom = lookup(conn, name)
    return dom is not None and attempt(lambda: dom.sendKey(
        libvirt.VIR_KEYCODE_SET_LINUX, 0, _CTRL_ALT_DEL, len(_CTRL_ALT_DEL), 0) == 0, False)


def wait_powered_off(ctx: Context, c: Container, timeout: float, reap: bool = True) -> bool:
    """Wait for the guest to power off by itself (True) or the deadline (False).

    `reap`: and for its QEMU to leave the process table (init may reap it a second later;
    a `start` waits for that itself)."""
    from hv.runtime.domains import running, wait_reaped

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(ctx.libvirt, c.domain):
            if reap:
                wait_reaped(ctx.libvirt, c.domain)
            return True
        time.sleep(0.02 if not reap else 0.05)
    return False


def stop(ctx: Context, c: Container, timeout: int, stop_signal: str = "") -> None:
    """SIGTERM to the main process (ctrl-alt-del → agent; another `stop_signal` through
    the agent's `signal` verb), SIGKILL by power-off after `timeout` (-1: none)."""
    from hv.runtime.domains import destroy

    if not c.active:
        return
    wait = float("inf") if timeout < 0 else timeout
    signum = parse_signal(stop_signal) if stop_signal else _signal.SIGTERM
    if signum not in (_signal.SIGTERM, _signal.SIGKILL) and timeout != 0:
        try:
            _signal_main(ctx, c, signum)
        except HvError:
            pass
        else:
            if wait_powered_off(ctx, c, wait):
                return
    elif timeout != 0 and signum == _signal.SIGTERM and \
            ctx.libvirt.call(_send_ctrl_alt_del, c.domain):
        if wait_powered_off(ctx, c, wait):
            return
    destroy(ctx.libvirt, c.domain)
    wait_powered_off(ctx, c, 10)


def kill(ctx: Context, c: Container, signum: int) -> None:
    if not c.active:
        raise not_running(ctx, c, "kill")
    if signum == _signal.SIGKILL:
        from hv.runtime.domains import destroy

        # the agent syncs the disk before powering off; power off hard only if it cannot.
        # As Docker's, `kill` returns once the container is down (a `start` right after it
        # must not find the dying guest still "running").
        try:
            _signal_main(ctx, c, signum)
        except HvError:
            destroy(ctx.libvirt, c.domain)
        if not wait_powered_off(ctx, c, 10, reap=False):
            destroy(ctx.libvirt, c.domain)
            wait_powered_off(ctx, c, 10)
        return
    _signal_main(ctx, c, signum)


def _signal_main(ctx: Context, c: Container, signum: int) -> None:
    from hv.guest.attach import session_command

    # the multiplexer if one runs; none is started for a container that may be going down
    agent = connect_agent(ctx, c, timeout=30, spawn=False)
    try:
        code, _out, err = agent.call(session_command("signal", str(signum)), timeout=30)
    finally:
        agent.close()
    if code == -1:
        return  # the guest powered off as the main process died
    if code != 0:
        raise RuntimeFailure(f"cannot signal the main process: {err.decode().strip()}")


def _set_paused(conn, name: str, paused: bool) -> None:
    doing = f"cannot {'pause' if paused else 'unpause'} the VM"
    dom = lookup(conn, name)
    if dom is None:
        raise RuntimeFailure(f"{doing}: it is gone", hint="see 'hv ps -a'")
    attempt(dom.suspend if paused else dom.resume, doing=doing)


def pause(ctx: Context, c: Container, paused: bool) -> None:
    if not c.active:
        raise not_running(ctx, c, "pause" if paused else "unpause")
    if c.paused == paused:
        raise Conflict(f"Container {c.id} is {'already' if paused else 'not'} paused",
                       hint="see 'hv ps'")
    ctx.libvirt.call(_set_paused, c.domain, paused)



def top(ctx: Context, c: Container, args: list[str]) -> str:
    from hv.guest.attach import session_command

    agent = connect_agent(ctx, c, timeout=30)
    try:
        code, out, err = agent.call(session_command("top", args or None))
    finally:
        agent.close()
    if code != 0:
        raise RuntimeFailure(f"top failed: {err.decode(errors='replace').strip()}",
                             hint="'hv top CONTAINER' takes ps options, e.g. -o pid,args")
    return out.decode(errors="replace")


def _sample(conn, names: list[str]) -> dict[str, dict]:
    """CPU time (dom.info: no cgroups needed), QEMU RSS and disk bytes of each domain."""
    import libvirt  # loaded already: `conn` is open

    out = {}
    for name in names:
        dom = lookup(conn, name)
        info = attempt(dom.info) if dom is not None else None
        if info is None:
            continue
        if info[0] in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTDOWN,
                       libvirt.VIR_DOMAIN_CRASHED):
            continue  # powered off meanwhile: its CPU time reads 0, no sample
        cpu_ns = info[4]
        rss = attempt(lambda d=dom: d.memoryStats().get("rss", 0) * 1024, 0)
        rd = attempt(lambda d=dom: d.blockStats("vda"))
        blk = (rd[1], rd[3]) if rd else (0, 0)
        boot = attempt(dom.ID, -1)  # a new one at each start
        out[name] = {"cpu": cpu_ns, "rss": rss, "blk": blk, "t": time.monotonic(),
                     "boot": boot}
    return out


def stats(ctx: Context, cs: list[Container], interval: float = 1.0) -> list[dict]:
    running = [c for c in cs if c.active]
    names = [c.domain for c in running]
    first = ctx.libvirt.call(_sample, names) if names else {}
    time.sleep(interval if names else 0)
    second = ctx.libvirt.call(_sample, names) if names else {}
    rows = []
    for c in cs:
        a, b = first.get(c.domain), second.get(c.domain)
        limit = c.record.memory_mib * 1024 * 1024
        if not b:
            rows.append({"id": c.id, "name": c.name, "cpu": 0.0, "mem": 0, "limit": limit,
                         "blk": (0, 0)})
            continue
        cpu = 0.0  # no first sample of this boot (started or restarted meanwhile): no rate
        if a and a["boot"] == b["boot"]:
            dt = max(1e-6, b["t"] - a["t"])
            # CPU time only grows while one QEMU runs: never a negative rate
            cpu = max(0.0, (b["cpu"] - a["cpu"]) / 1e9 / dt * 100)
        rows.append({"id": c.id, "name": c.name, "cpu": cpu, "mem": b["rss"], "limit": limit,
                     "blk": b["blk"]})
    return rows
