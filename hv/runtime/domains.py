"""Domains as hv sees them: define, start, stop, list; libvirt errors translated here.

Each public function takes the root's `Libvirt` and is one libvirt operation run through
its `call`, so on the
embedded driver the root's lock is held only while it runs.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

from hv.errors import Conflict, RuntimeFailure, translate
from hv.runtime.connection import Libvirt, Opened, attempt, lookup, no_domain
from hv.runtime.domain import read_metadata, record_of, report_io_errors


@dataclass
class DomainInfo:
    name: str
    uuid: str
    active: bool
    persistent: bool
    record: dict
    paused: bool = False
    # why it is paused, in libvirt's words ("user", "ioerror", ...) or QEMU's run state
    # ("io-error", "internal-error", ...) when QEMU paused by itself with nobody to record it
    reason: str = ""
    dom_id: str = ""  # libvirt's id of a running domain (names its virtiofsd pid files)
    monitor: str = ""  # QEMU's QMP socket of a running domain of the embedded root
    shares: list[tuple[str, str]] = field(default_factory=list)  # virtiofs (alias, tag)


# libvirt's virDomainPausedReason values and names (those a paused container can show)
_PAUSED_REASONS = {1: "user", 2: "migration", 3: "ioerror", 4: "watchdog", 6: "dump",
                   8: "shutdown", 9: "snapshot", 10: "crashed", 11: "starting-up",
                   12: "postcopy", 13: "postcopy-failed"}


def _list(conn) -> tuple[list[DomainInfo], bool]:
    import libvirt  # loaded already: `conn` is open

    out = []
    complete = True
    for dom in conn.listAllDomains():
        try:
            xml = dom.XMLDesc(0)
            state, reason = dom.state()
            active = bool(dom.isActive())
            persistent = bool(dom.isPersistent())
        except libvirt.libvirtError as e:
            # a transient domain that just exited vanishes; anything else: look again
            complete = complete and no_domain(e)
            continue
        record = read_metadata(xml)
        if record is None:
            continue
        paused = state == libvirt.VIR_DOMAIN_PAUSED
        out.append(DomainInfo(dom.name(), dom.UUIDString(), active, persistent, record,
                              paused=paused,
                              reason=_PAUSED_REASONS.get(reason, "") if paused else ""))
    return out, complete


def list_domains(lv: Libvirt) -> list[DomainInfo]:
    """Every domain carrying an hv record; other VMs on a shared libvirt are ignored."""
    if lv.embedded:
        return _list_files(lv)
    infos, complete = lv.call(_list)
    if not complete:  # a domain changed state while we looked: look once more
        infos, _ = lv.call(_list)
    return infos


def _list_files(lv: Libvirt) -> list[DomainInfo]:
    """The embedded root's domains read from its files, without taking its lock.

    Opening an embedded root costs a fork, libvirt's start-up and a reconnect to every
    running QEMU (~40 ms, more with many containers) and serialises every hv command on
    the root's lock; `ps`, `exec` and the name check of `run` only need to read. libvirt
    keeps a persistent domain's config in etc/qemu/NAME.xml and a running domain's status
    (`<domstatus state=… pid=…>` around its XML) in run/qemu/NAME.xml, both written
    atomically. A status whose QEMU is gone is stale: the next real connection cleans it
    up (a transient domain then vanishes, as libvirt itself would report).
    """
    import xml.etree.ElementTree as ET

    root = lv.paths.libvirt_root()
    found: dict[str, DomainInfo] = {}
    for folder, status in ((root / "etc" / "qemu", False), (root / "run" / "qemu", True)):
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".xml"))
        except OSError:
            continue
        for fname in names:
            try:
                tree = ET.parse(folder / fname).getroot()
            except (OSError, ET.ParseError):
                continue
            dom = tree.find("domain") if status else tree
            if dom is None:
                continue
            record = record_of(dom)
            if record is None:
                continue  # not hv's
            name = dom.findtext("name") or fname[:-4]
            if not status:
                found[name] = DomainInfo(name, dom.findtext("uuid") or "", False, True, record)
                continue
            try:
                alive = pid_alive(int(tree.get("pid", "")))
            except ValueError:
                alive = False
            persistent = name in found
            if not alive and not persistent:
                continue  # a transient domain whose QEMU is gone: gone
            paused = alive and tree.get("state") == "paused"
            found[name] = DomainInfo(
                name, dom.findtext("uuid") or "", alive, persistent,
                found[name].record if persistent else record, paused=paused,
                reason=tree.get("reason", "") if paused else "", dom_id=dom.get("id", ""),
                monitor=(tree.find("monitor").get("path", "")
                         if alive and tree.find("monitor") is not None else ""),
                shares=_virtiofs_shares(dom) if alive else [])
    return list(found.values())


def _virtiofs_shares(dom) -> list[tuple[str, str]]:
    out = []
    for fs in dom.findall("devices/filesystem"):
        driver, alias, target = fs.find("driver"), fs.find("alias"), fs.find("target")
        if driver is not None and driver.get("type") == "virtiofs" and alias is not None \
                and target is not None:
            out.append((alias.get("name", ""), target.get("dir", "")))
    return out


# --- what the status files cannot tell -------------------------------------------------------
#
# On the embedded root no libvirt process is alive between hv commands, so nobody hears
# QEMU's events: a guest QEMU paused by itself (an I/O error under error_policy 'stop', an
# internal error) stays "running" in libvirt's status file, and a virtiofsd that died leaves
# its pid file behind. Both are read from the processes themselves.

QMP_TIMEOUT = 0.25


def probe_run_states(infos: list[DomainInfo], timeout: float = QMP_TIMEOUT) -> None:
    """Ask the QEMU of each running, unpaused embedded domain for its run state (QMP
    `query-status` on its monitor socket, all at once, ~1 ms each) and mark the ones QEMU
    paused by itself (`io-error`, `internal-error`, ...) as paused with that reason.

    A monitor held by a libvirt process (another hv command's child; it keeps the status
    file right itself) answers only after it lets go: such a domain keeps what its status
    file says once `timeout` passed.
    """
    import selectors
    import socket

    todo = [i for i in infos if i.active and not i.paused and i.monitor]
    if not todo:
        return
    sel = selectors.DefaultSelector()
    bufs: dict[socket.socket, bytearray] = {}
    try:
        for info in todo:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.setblocking(False)
                sock.connect(info.monitor)
            except OSError:
                sock.close()
                continue
            bufs[sock] = bytearray()
            sel.register(sock, selectors.EVENT_READ, info)
        sent: set[socket.socket] = set()
        deadline = time.monotonic() + timeout
        while sel.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                sock, info = key.fileobj, key.data
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    continue
                bufs[sock] += data
                if sock not in sent and b"\n" in bufs[sock]:  # QEMU's greeting
                    sent.add(sock)
                    with contextlib.suppress(OSError):
                        sock.sendall(b'{"execute":"qmp_capabilities"}\n'
                                     b'{"execute":"query-status","id":"hv"}\n')
                    continue
                status = _qmp_status(bufs[sock])
                if status is not None:
                    sel.unregister(sock)
                    if status not in ("running", "prelaunch", "finish-migrate", "inmigrate"):
                        info.paused = True
                        info.reason = status
    finally:
        for sock in bufs:
            sock.close()
        sel.close()


def _qmp_status(buf: bytearray) -> str | None:
    import json

    for line in bytes(buf).splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("id") == "hv" and isinstance(msg.get("return"), dict):
            return str(msg["return"].get("status", ""))
    return None


def dead_shares(lv: Libvirt, info: DomainInfo) -> list[str]:
    """Tags of the running domain's virtiofs shares whose virtiofsd is gone.

    libvirt starts one virtiofsd per share and records its pid in
    run/qemu/ID-NAME-ALIAS-fs.pid (the name cut at 20 characters); the process must be
    alive and be a virtiofsd (not a stranger that got the pid)."""
    if not (info.active and info.shares and info.dom_id and lv.embedded):
        return []
    folder = lv.paths.libvirt_root() / "run" / "qemu"
    dead = []
    for alias, tag in info.shares:
        pidfile = folder / f"{info.dom_id}-{info.name[:20]}-{alias}-fs.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue  # not libvirt's layout as known here: no verdict
        if not (pid_alive(pid) and b"virtiofsd" in _cmdline(pid)):
            dead.append(tag)
    return dead


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _start(conn, xml: str | None, name: str, persistent: bool, fwds: list) -> list:
    import libvirt  # loaded already: `conn` is open

    try:
        if xml is None:
            dom = conn.lookupByName(name)
            # a container defined by an older hv pauses on a disk error: not from now on
            newer = report_io_errors(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            if newer is not None:
                dom = conn.defineXML(newer)
            dom.create()
            if not persistent:  # `create --rm`, started: gone when it powers off
                dom.undefine()
        elif persistent:
            dom = conn.defineXML(xml)
            try:
                dom.create()
            except libvirt.libvirtError:
                attempt(dom.undefine)
                raise
        else:
            dom = conn.createXML(xml, 0)
    except libvirt.libvirtError as e:
        if xml is not None and "already exists" in str(e):
            raise Conflict(f'The container name "/{name}" is already in use',
                           hint="remove that container or choose another --name") from None
        raise translate(e, "cannot start the VM") from None
    if not fwds:
        return []
    from hv.runtime.forwards import add_on

    try:
        return add_on(dom, fwds, fresh=True)
    except BaseException:
        _destroy(conn, name, undefine=xml is not None)
        raise


def start(lv: Libvirt, xml: str, name: str, persistent: bool, forwards: list | None = None,
          via: Opened | None = None) -> list:
    """Define and start (persistent) or create (transient: gone when it powers off), then
    add `forwards` (hv.runtime.forwards.Forward) in the same libvirt session; the forwards
    as bound. A forward that fails takes the new domain down again. `via`: a connection
    opened ahead (hv.runtime.connection.Opened)."""
    return (via or Opened(lv)).call(_start, xml, name, persistent, list(forwards or []))


def start_defined(lv: Libvirt, name: str, forwards: list | None = None,
                  transient: bool = False) -> list:
    """Boot a defined (stopped) domain again, with its forwards (see `start`); `transient`:
    its definition goes once it runs (libvirt then forgets it at its power-off)."""
    return lv.call(_start, None, name, not transient, list(forwards or []))


def _define(conn, xml: str, name: str) -> None:
    import libvirt  # loaded already: `conn` is open

    try:
        conn.defineXML(xml)
    except libvirt.libvirtError as e:
        if "already exists" in str(e):
            raise Conflict(f'The container name "/{name}" is already in use',
                           hint="remove that container or choose another --name") from None
        raise translate(e, "cannot define the VM") from None


def define(lv: Libvirt, xml: str, name: str, via: Opened | None = None) -> None:
    """Define a domain without starting it (`create`: a container in the Created state)."""
    (via or Opened(lv)).call(_define, xml, name)


def _adopt(conn, name: str, record: dict, xml: str | None, live: bool,
           transient: bool) -> None:
    import libvirt

    from hv.runtime.domain import HV_NS, HV_PREFIX, metadata_element

    dom = lookup(conn, name)
    if dom is None:
        raise RuntimeFailure("the pooled VM is gone", hint="run the command again")
    try:
        if live:
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata_element(record),
                            HV_PREFIX, HV_NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        if xml is not None:
            conn.defineXML(xml)
        if transient and dom.isPersistent():
            dom.undefineFlags(0)  # running on, gone when it powers off
    except libvirt.libvirtError as e:
        raise translate(e, "cannot hand the pooled VM its container") from None


def adopt(lv: Libvirt, name: str, record: dict, xml: str | None, live: bool = True,
          transient: bool = False, via: Opened | None = None) -> None:
    """A running pooled VM becomes a container: its record set on the live domain (`live`:
    then listings see it running), with `xml` that definition made its persistent one (for
    the next, cold, boot; a `create`d container is listed from it, Created), `transient`:
    a persistent definition dropped (`--rm` at its start)."""
    (via or Opened(lv)).call(_adopt, name, record, xml, live, transient)


def _plug_nic(conn, name: str, xml: str, mac: str, attach: bool, timeout: float) -> None:
    import libvirt

    dom = lookup(conn, name)
    if dom is None or not attempt(lambda: bool(dom.isActive()), False):
        raise Conflict("the container stopped meanwhile", hint="connect it while it is "
                       "stopped: its NIC then comes at its next start")
    doing = "cannot hot-plug the NIC" if attach else "cannot unplug the NIC"
    try:
        if attach:
            dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            return
        dom.detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    except libvirt.libvirtError as e:
        raise translate(e, doing) from None
    # libvirt waits 5 s for the guest's eject (ACPI), then returns with the device still
    # there; nobody would see QEMU's later DEVICE_DELETED on an embedded root (no daemon)
    deadline = time.monotonic() + timeout
    while mac in (attempt(lambda: dom.XMLDesc(0), "") or "").lower():
        if time.monotonic() > deadline:
            raise RuntimeFailure(f"the guest did not release its NIC {mac} within "
                                 f"{timeout:.0f} s", hint="stop the container, then "
                                 "disconnect it")
        time.sleep(0.05)


def attach_nic(lv: Libvirt, name: str, xml: str, mac: str) -> None:
    """Hot-plug an <interface> into the running domain (live only: the persistent
    definition follows the records at the next start)."""
    lv.call(_plug_nic, name, xml, mac.lower(), True, 0.0)


def detach_nic(lv: Libvirt, name: str, xml: str, mac: str, timeout: float = 15.0) -> None:
    """Unplug an <interface> from the running domain; returns once QEMU removed it."""
    lv.call(_plug_nic, name, xml, mac.lower(), False, timeout)


def _save(conn, name: str, path: str) -> None:
    import libvirt

    dom = lookup(conn, name)
    if dom is None or not attempt(lambda: bool(dom.isActive()), False):
        raise Conflict("the container stopped meanwhile", hint="a checkpoint needs a "
                       "running container", exit_code=1)
    try:
        dom.saveFlags(path, None, 0)
    except libvirt.libvirtError as e:
        raise translate(e, "cannot save the VM's state") from None


def save(lv: Libvirt, name: str, path: str) -> None:
    """The running domain's memory and device state written to `path` (libvirt's save:
    QEMU migrates to the file, then stops); the domain is left defined and inactive."""
    lv.call(_save, name, path)


def _restore(conn, path: str, name: str, fwds: list) -> list:
    import libvirt

    # a QEMU that exited with no libvirt process watching is noticed by this connection's
    # reconnect, in a thread of its own; a restore before that finds the domain "active"
    dom = lookup(conn, name)
    deadline = time.monotonic() + 10
    while dom is not None and attempt(lambda: bool(dom.isActive()), False) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        conn.restoreFlags(path, None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
    except libvirt.libvirtError as e:
        raise translate(e, "cannot restore the VM's state") from None
    if not fwds:
        return []
    from hv.runtime.forwards import add_on

    dom = conn.lookupByName(name)
    try:
        return add_on(dom, fwds)
    except BaseException:
        _destroy(conn, name, undefine=False)
        raise


def restore(lv: Libvirt, path: str, name: str, forwards: list | None = None) -> list:
    """Run a domain again from the state `save` wrote (its persistent definition kept),
    then add `forwards` (QEMU's user networking restarts empty); the forwards as bound."""
    return lv.call(_restore, path, name, list(forwards or []))


def _is_active(conn, name: str) -> bool | None:
    dom = lookup(conn, name)
    return None if dom is None else attempt(lambda: bool(dom.isActive()))


def is_active(lv: Libvirt, name: str) -> bool | None:
    """True/False, or None when no such domain exists (any more)."""
    return lv.call(_is_active, name)


def _destroy(conn, name: str, undefine: bool) -> None:
    import libvirt  # loaded already: `conn` is open

    dom = lookup(conn, name)
    if dom is None:
        return
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as e:
        if no_domain(e):
            return  # a transient domain that powered off meanwhile
        if attempt(lambda: bool(dom.isActive()), True):
            raise translate(e, "cannot stop the VM") from None
    if undefine:
        attempt(lambda: dom.undefineFlags(0))


def destroy(lv: Libvirt, name: str, undefine: bool = False) -> None:
    """Power off at once (and forget the domain); a missing domain is not an error."""
    lv.call(_destroy, name, undefine)


def _discard_if(conn, name: str, cid: str) -> None:
    dom = lookup(conn, name)
    xml = attempt(lambda: dom.XMLDesc(0)) if dom is not None else None
    if xml is None:
        return
    record = read_metadata(xml) or {}
    if record.get("id") == cid:
        _destroy(conn, name, undefine=dom.isPersistent())


def discard_if(lv: Libvirt, name: str, cid: str) -> None:
    """Destroy and forget the domain `name` if it is container `cid`'s: undoing a start
    whose answer never came (the command was interrupted while libvirt's child worked)."""
    lv.call(_discard_if, name, cid)


def qemu_pid(lv: Libvirt, name: str) -> int | None:
    """The QEMU process of a running domain of the embedded driver (None elsewhere).

    Lets a waiter notice power-off without taking the embedded root's lock.
    """
    if not lv.embedded:
        return None
    pidfile = lv.paths.libvirt_root() / "run" / "qemu" / f"{name}.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def qemu_exit_fd(lv: Libvirt, name: str) -> int | None:
    """A pidfd of the domain's QEMU (readable once it exited), or None where there is none."""
    pid = qemu_pid(lv, name)
    if pid is None:
        return None
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def running(lv: Libvirt, name: str) -> bool:
    """Is the VM still up? Cheap on the embedded driver (its QEMU pid), else one lookup."""
    if lv.embedded:
        return qemu_pid(lv, name) is not None
    return bool(is_active(lv, name))


def wait_reaped(lv: Libvirt, name: str, timeout: float = 5.0) -> None:
    """Wait until an exited QEMU is gone from the process table.

    libvirt counts a zombie as running; where init reaps orphans lazily (seen: ~1 s in
    sandboxes), the next libvirt operation would still see the domain active.
    """
    if not lv.embedded:
        return
    pidfile = lv.paths.libvirt_root() / "run" / "qemu" / f"{name}.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # ours when a foreground run adopted it
        except ChildProcessError:
            pass
        time.sleep(0.005)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
