"""Network records under `<state root>/networks/`: one JSON file per network, holding its
endpoints, so one atomic rename changes a network and its members together.

Writers hold `networks/.lock` (flock) for the whole read-modify-write; readers read without
it (every write is a rename, so a reader sees a whole old or a whole new file). The
predefined `bridge` and `none` are written the first time anything looks (lazily: a state
root nobody used for networks gets no files).

Takes the state root as a parameter (no hv.paths, no environment): the engine owns paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from hv.errors import Conflict, NetworkNotFound, UsageError
from hv.network.ipam import DEFAULT_BRIDGE_GATEWAY, DEFAULT_BRIDGE_SUBNET
from hv.network.model import BRIDGE, HOST, NONE, SCHEMA_VERSION, Network, bridge_name

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
ID_RE = re.compile(r"^[0-9a-f]{64}$")


class HostNetworkRefused(UsageError):
    def __init__(self, message: str = "network mode \"host\" is not supported: a VM has no "
                 "host network namespace to share", hint: str | None = None,
                 exit_code: int | None = None):
        super().__init__(message, hint or "use a user-defined network ('hv network create "
                         "NAME', then --network NAME) and publish ports with -p", exit_code)


def networks_dir(root: Path) -> Path:
    return Path(root) / "networks"


def record_path(root: Path, network_id: str) -> Path:
    return networks_dir(root) / f"{network_id}.json"


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """The networks lock, exclusive: held by every writer for its whole read-modify-write."""
    d = networks_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def new_id(taken: set[str]) -> str:
    """64 hex, and a bridge name (its first 8) no other network has."""
    prefixes = {t[:8] for t in taken}
    while True:
        nid = os.urandom(32).hex()
        if nid[:8] not in prefixes:
            return nid


def save(root: Path, net: Network) -> None:
    """Write a record atomically (temporary file, fsync, rename). Call under `locked`."""
    d = networks_dir(root)
    d.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".net.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(net.to_dict(), f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, record_path(root, net.id))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def delete(root: Path, network_id: str) -> None:
    record_path(root, network_id).unlink(missing_ok=True)


def _read(path: Path) -> Network | None:
    try:
        data = json.loads(path.read_text())
        if int(data.get("version", 0)) > SCHEMA_VERSION:
            return None  # written by a newer hv: leave it alone
        net = Network.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return net if ID_RE.match(net.id) and path.stem == net.id else None


def _read_all(root: Path) -> list[Network]:
    d = networks_dir(root)
    if not d.is_dir():
        return []
    out = [n for n in (_read(p) for p in d.glob("*.json")) if n is not None]
    return sorted(out, key=lambda n: (n.created, n.name))


def _predefined(name: str, taken: set[str]) -> Network:
    nid = new_id(taken)
    if name == BRIDGE:
        return Network(id=nid, name=BRIDGE, driver="bridge", subnet=DEFAULT_BRIDGE_SUBNET,
                       gateway=DEFAULT_BRIDGE_GATEWAY, created=time.time(), options={
                           "com.docker.network.bridge.default_bridge": "true",
                           "com.docker.network.bridge.enable_icc": "true",
                           "com.docker.network.bridge.enable_ip_masquerade": "false",
                           "com.docker.network.bridge.name": bridge_name(nid),
                           "com.docker.network.driver.mtu": "1500"})
    return Network(id=nid, name=NONE, driver="null", created=time.time())


def all_networks(root: Path) -> list[Network]:
    """Every network, the predefined ones first made if missing (under the lock)."""
    nets = _read_all(root)
    if {BRIDGE, NONE} <= {n.name for n in nets}:
        return nets
    with locked(root):
        return read_locked(root)


def find(nets: list[Network], ref: str) -> Network:
    """Docker's look-up order: full id, then name, then a unique id prefix."""
    if ref == HOST:
        raise HostNetworkRefused()
    if not ref:
        raise NetworkNotFound("network  not found")
    for n in nets:
        if n.id == ref:
            return n
    for n in nets:
        if n.name == ref:
            return n
    matches = [n for n in nets if n.id.startswith(ref.lower())] if re.fullmatch(
        r"[0-9a-fA-F]+", ref) else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UsageError(f"network {ref} is ambiguous ({len(matches)} matches found based on "
                         "ID prefix)", hint="give more characters of the id, or the name",
                         exit_code=1)
    raise NetworkNotFound(f"network {ref} not found")


def get(root: Path, ref: str) -> Network:
    return find(all_networks(root), ref)


def check_name(name: str) -> None:
    if name == HOST:
        raise HostNetworkRefused()
    if not NAME_RE.match(name or ""):
        raise UsageError(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] "
                         "are allowed", hint="pick a name such as 'backend' or 'app_net'",
                         exit_code=1)


def add(root: Path, net: Network) -> None:
    """Store a new network (call under `locked`): names are unique, as in Docker."""
    nets = _read_all(root)
    if any(n.name == net.name for n in nets) or net.name in (BRIDGE, NONE):
        raise Conflict(f"network with name {net.name} already exists",
                       hint="pick another name, or use the existing network", exit_code=1)
    save(root, net)


def remove_checked(root: Path, net: Network) -> None:
    """Delete a record (call under `locked`): not a predefined one, not one in use."""
    if net.predefined:
        raise Conflict(f"{net.name} is a pre-defined network and cannot be removed",
                       hint="only networks made with 'hv network create' can be removed",
                       exit_code=1)
    if net.endpoints:
        who = " ".join(f'(name:"{ep.container_name}" id:"{cid[:12]}")'
                       for cid, ep in sorted(net.endpoints.items()))
        raise Conflict(f"error while removing network: network {net.name} has active "
                       f"endpoints {who}",
                       hint=f"disconnect or remove its containers first ('hv network "
                            f"disconnect {net.name} CONTAINER')", exit_code=1)
    delete(root, net.id)


def read_locked(root: Path) -> list[Network]:
    """All records as they are now (call under `locked`, predefined ones included)."""
    nets = _read_all(root)
    names = {n.name for n in nets}
    for name in (BRIDGE, NONE):
        if name not in names:
            net = _predefined(name, {n.id for n in nets})
            save(root, net)
            nets.append(net)
    return sorted(nets, key=lambda n: (n.created, n.name))
