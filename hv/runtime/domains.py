"""Domains as hv sees them: define, start, stop, list; libvirt errors translated here."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from hv import paths
from hv.errors import Conflict, RuntimeFailure
from hv.runtime.connection import connect, first_line, is_embedded, libvirt_module, uri
from hv.runtime.domain import read_metadata


@dataclass
class DomainInfo:
    name: str
    uuid: str
    active: bool
    persistent: bool
    record: dict


def list_domains() -> list[DomainInfo]:
    """Every domain carrying an hv record; other VMs on a shared libvirt are ignored."""
    libvirt = libvirt_module()
    out = []
    with connect() as conn:
        for dom in conn.listAllDomains():
            try:
                xml = dom.XMLDesc(0)
                active = bool(dom.isActive())
                persistent = bool(dom.isPersistent())
            except libvirt.libvirtError:
                continue  # vanished while we looked (a transient domain that just exited)
            record = read_metadata(xml)
            if record is None:
                continue
            out.append(DomainInfo(dom.name(), dom.UUIDString(), active, persistent, record))
    return out


def start(xml: str, name: str, persistent: bool) -> None:
    """Define and start (persistent) or create (transient: gone when it powers off)."""
    libvirt = libvirt_module()
    with connect() as conn:
        try:
            if persistent:
                dom = conn.defineXML(xml)
                try:
                    dom.create()
                except libvirt.libvirtError:
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefine()
                    raise
            else:
                conn.createXML(xml, 0)
        except libvirt.libvirtError as e:
            code = e.get_error_code()
            if code in (libvirt.VIR_ERR_DOM_EXIST, libvirt.VIR_ERR_OPERATION_FAILED) and (
                "already exists" in str(e)
            ):
                raise Conflict(f'The container name "/{name}" is already in use',
                               hint="remove that container or choose another --name") from None
            raise RuntimeFailure(f"cannot start the VM: {first_line(str(e))}") from None


def start_defined(name: str) -> None:
    libvirt = libvirt_module()
    with connect() as conn:
        try:
            conn.lookupByName(name).create()
        except libvirt.libvirtError as e:
            raise RuntimeFailure(f"cannot start the VM: {first_line(str(e))}") from None


def is_active(name: str) -> bool | None:
    """True/False, or None when no such domain exists (any more)."""
    libvirt = libvirt_module()
    with connect() as conn:
        try:
            return bool(conn.lookupByName(name).isActive())
        except libvirt.libvirtError:
            return None


def destroy(name: str, undefine: bool = False) -> None:
    """Power off at once (and forget the domain); a missing domain is not an error."""
    libvirt = libvirt_module()
    with connect() as conn:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            return
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError as e:
            if dom.isActive():
                raise RuntimeFailure(f"cannot stop the VM: {first_line(str(e))}") from None
        if undefine:
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefineFlags(0)


def qemu_pid(name: str) -> int | None:
    """The QEMU process of a running domain of the embedded driver (None elsewhere).

    Lets a waiter notice power-off without holding the embedded root's lock.
    """
    if not is_embedded(uri()):
        return None
    pidfile = paths.libvirt_root() / "run" / "qemu" / f"{name}.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def pid_alive(pid: int) -> bool:
    return _alive(pid) and os.path.exists(f"/proc/{pid}")
