"""The seed ISO: the container spec, carried into the guest on a read-only virtio disk.

An ISO 9660 image with Rock Ridge names (the guest agent mounts it and reads the real names),
one value per file: `argv` and `env` hold NUL-terminated items, the rest plain text without a
trailing newline (the two SSH key files end in a newline, as OpenSSH writes them). Values may
hold any byte except NUL. Linux's argv and environment are bytes, not text: an item may be
`bytes`, or a `str` as Python decodes such bytes (undecodable ones as surrogates, PEP 383),
written back as the original bytes (`os.fsencode`). `mounts` (absent: none) holds six
NUL-terminated fields per mount (see `_mounts`), `nics` two per NIC (see `_nics`), `hosts`
the container's whole /etc/hosts (absent: the agent's default). Flags (`tty`, `stdin_open`,
`wait_attach`, `maintenance`) are "1" or "0"; a file the agent does not find means its
default (older seeds).
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pycdlib

VOLUME_ID = "HVSEED"


@dataclass
class GuestMount:
    """A share the agent mounts before the main process starts (seed file `mounts`)."""

    tag: str  # the virtiofs/9p tag of the domain's <filesystem>
    fstype: str  # "virtiofs" | "9p" | "tmpfs" (`--tmpfs`: then `tag` holds its options)
    sub: str  # "" = the whole share at target; else a file name in it (a file bind mount)
    target: str  # absolute path in the container
    readonly: bool = False
    copy: bool = False  # when the share is empty, copy the image's content at target first


@dataclass
class GuestNic:
    """A NIC on an hv network (seed file `nics`): the agent finds it by MAC and gives it a
    static address; no default route (outbound stays on the user-mode NIC)."""

    mac: str  # "02:42:ac:12:00:02"
    address: str  # "172.18.0.2"
    prefix: int  # 16


@dataclass
class GuestSpec:
    container_id: str
    argv: list[str | bytes]  # ENTRYPOINT + CMD, already merged by the host; non-empty
    env: list[str | bytes]  # "KEY=VALUE", final list (image Env + -e, HOSTNAME, PATH)
    workdir: str = "/"
    user: str = ""  # "", "name", "uid", "name:group", "uid:gid"
    hostname: str = ""
    tty: bool = False
    stdin_open: bool = False
    wait_attach: bool = False  # start the main process once the first attach client is in
    maintenance: bool = False  # boot with sshd only, no main process (cp into a stopped one)
    authorized_keys: str = ""  # OpenSSH public key line(s) of the container's client key
    ssh_host_key: str = ""  # OpenSSH-format private host key, made (and pinned) by the host
    mounts: list[GuestMount] | None = None  # volumes and bind mounts
    nics: list[GuestNic] | None = None  # NICs on hv networks (besides the user-mode one)
    hosts: str | None = None  # the whole /etc/hosts; None: the agent writes its default
    resolv: str | None = None  # the whole /etc/resolv.conf; None: the user-mode resolver
    dns: str | None = None  # the agent's resolver at 127.0.0.11 forwards to this (IPv4)
    read_only: bool = False  # `--read-only`: the container's root mounted read-only
    pool: bool = False  # a pooled VM: NICs and sshd up, then wait for a claim (hv.engine.pool)


def _mounts(mounts: list[GuestMount]) -> bytes:
    """Six NUL-terminated fields per mount: tag, fstype, sub, target, ro (0/1), copy (0/1).
    No field may hold a newline: the agent turns NULs into newlines to read them."""
    items = []
    for m in mounts:
        fields = [m.tag, m.fstype, m.sub, m.target, "1" if m.readonly else "0",
                  "1" if m.copy else "0"]
        if any("\n" in f for f in fields):
            raise ValueError(f"mount field of {m!r} contains a newline")
        items += fields
    return _nul_list(items, "mounts")


MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def nics_file(nics: list[GuestNic]) -> bytes:
    """Two NUL-terminated fields per NIC: MAC (lowercase), ADDRESS/PREFIX."""
    items: list[str | bytes] = []
    for n in nics:
        addr = ipaddress.ip_interface(f"{n.address}/{n.prefix}")  # raises on a bad one
        if not MAC_RE.match(n.mac) or addr.version != 4:
            raise ValueError(f"bad NIC {n!r}")
        items += [n.mac, str(addr)]
    return _nul_list(items, "nics")


def as_bytes(value: str | bytes) -> bytes:
    """The bytes a command-line or environment string stands for: UTF-8, with the
    surrogates Python decodes undecodable argv bytes to turned back into those bytes. Other
    lone surrogates (only a crafted image config holds them) become U+FFFD, as Go's JSON
    decoder makes them."""
    if isinstance(value, bytes):
        return value
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        fixed = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" and not "\udc80" <= ch <= "\udcff"
                        else ch for ch in value)
        return fixed.encode("utf-8", "surrogateescape")


def _nul_list(items: list[str | bytes], what: str) -> bytes:
    out = bytearray()
    for item in items:
        b = as_bytes(item)
        if b"\0" in b:
            raise ValueError(f"{what} item {item!r} contains a NUL byte")
        out += b + b"\0"
    return bytes(out)


def _text(value: str | bytes, what: str) -> bytes:
    b = as_bytes(value)
    if b"\0" in b:
        raise ValueError(f"{what} {value!r} contains a NUL byte")
    return b


def seed_files(spec: GuestSpec) -> dict[str, bytes]:
    """The seed's files by name (what the guest agent reads)."""
    if not spec.argv:
        raise ValueError("argv must not be empty")
    files = {
        "argv": _nul_list(spec.argv, "argv"),
        "env": _nul_list(spec.env, "env"),
        "workdir": _text(spec.workdir or "/", "workdir"),
        "user": _text(spec.user, "user"),
        "hostname": _text(spec.hostname, "hostname"),
        "id": _text(spec.container_id, "container id"),
        "tty": b"1" if spec.tty else b"0",
        "stdin_open": b"1" if spec.stdin_open else b"0",
        "wait_attach": b"1" if spec.wait_attach else b"0",
        "maintenance": b"1" if spec.maintenance else b"0",
    }
    if spec.read_only:
        files["read_only"] = b"1"
    if spec.pool:
        files["pool"] = b"1"
    if spec.mounts:
        files["mounts"] = _mounts(spec.mounts)
    if spec.nics:
        files["nics"] = nics_file(spec.nics)
    if spec.hosts is not None:
        files["hosts"] = _text(spec.hosts, "hosts")
    if spec.resolv is not None:
        files["resolv"] = _text(spec.resolv, "resolv")
    if spec.dns is not None:
        files["dns"] = str(ipaddress.IPv4Address(spec.dns)).encode()  # raises on a bad one
    # sshd runs only when both keys are there; an absent file means "no sshd".
    if spec.authorized_keys or spec.ssh_host_key:
        if not (spec.authorized_keys and spec.ssh_host_key):
            raise ValueError("authorized_keys and ssh_host_key go together")
        files["authorized_keys"] = _text(_line_end(spec.authorized_keys), "authorized_keys")
        files["ssh_host_ed25519_key"] = _text(_line_end(spec.ssh_host_key), "ssh_host_key")
    return files


def claim_message(spec: GuestSpec) -> bytes:
    """The seed's files as a pooled VM's claim port takes them (PROTOCOL.md, "The warm
    pool"): "LEN\n", then per file NAME NUL, SIZE (decimal) NUL and its bytes."""
    body = b"".join(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data
                    for name, data in seed_files(spec).items())
    return str(len(body)).encode() + b"\n" + body


def _line_end(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def write_seed(path: Path, spec: GuestSpec) -> None:
    """Write the seed ISO for `spec` at `path` atomically (temporary file + rename)."""
    path = Path(path)
    files = seed_files(spec)
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", vol_ident=VOLUME_ID)
    try:
        for i, (name, data) in enumerate(files.items()):
            iso.add_fp(io.BytesIO(data), len(data), f"/F{i}.;1", rr_name=name)
        fd, tmp = tempfile.mkstemp(prefix=".seed.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                iso.write_fp(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        iso.close()
