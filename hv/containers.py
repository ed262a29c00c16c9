"""Containers as users see them: a record in a libvirt domain's metadata plus a folder.

libvirt is the container table: `ps -a` lists domains that carry an hv record; a stopped
container is a defined, inactive domain. What happened inside (started, exit code) comes
from the files the guest agent writes through virtio-serial, so the state of a container
can be read without the guest running and without hv having watched it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field

from hv.paths import Paths
from hv.timefmt import rfc3339


@dataclass
class Record:
    """What `run` decided; stored as JSON in the domain's metadata, never changed after."""

    id: str
    name: str
    image: str  # as the user typed it ("busybox")
    image_id: str
    created: float
    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    workdir: str
    user: str
    hostname: str
    memory_mib: int
    vcpus: int
    nano_cpus: int = 0
    auto_remove: bool = False
    accel: str = "tcg"
    base_disk: str = ""
    ports: list[dict] = field(default_factory=list)  # requested PortSpecs
    tty: bool = False
    stdin_open: bool = False
    restart: str = "no"
    extra: dict = field(default_factory=dict)
    volumes: list[dict] = field(default_factory=list)  # resolved mounts (hv.volumes.attach)
    networks: list[str] = field(default_factory=list)  # `--network` as given; [] = none joined
    add_hosts: list[str] = field(default_factory=list)  # "NAME:IP", checked
    dns: list[str] = field(default_factory=list)  # nameservers (checked IPs); [] = 10.0.2.3
    dns_search: list[str] = field(default_factory=list)
    dns_options: list[str] = field(default_factory=list)
    domain: str = ""  # the libvirt domain's name ("" = `name`, as hv made them before rename)
    stop_signal: str = ""  # "" = SIGTERM (through ctrl-alt-del to the agent)
    stop_timeout: int | None = None  # None = 10 s
    tmpfs: list[str] = field(default_factory=list)  # "PATH[:OPTIONS]", checked
    read_only: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def domain_name(self) -> str:
        """The libvirt domain's name: what every libvirt call takes. The container's name
        until a `rename`."""
        return self.domain or self.name

    @property
    def argv(self) -> list[str]:
        return self.entrypoint + self.cmd


@dataclass
class State:
    status: str  # created | running | exited
    running: bool
    exit_code: int
    started_at: float | None
    finished_at: float | None
    error: str = ""


@dataclass
class Container:
    record: Record
    active: bool
    paused: bool = False
    paths: Paths = field(kw_only=True, repr=False, compare=False)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def domain(self) -> str:
        return self.record.domain_name

    @property
    def short_id(self) -> str:
        return self.record.id[:12]

    def labels(self) -> dict[str, str]:
        """Docker's Config.Labels (`-l`, the API's Labels; hv.labels)."""
        from hv.labels import labels

        return labels(self.paths, self.id)

    def state(self) -> State:
        from hv.guest.logstream import read_status

        cid = self.id
        started_at = _read_float(self.paths.container_started(cid))
        if self.active:
            return State("paused" if self.paused else "running", True, 0, started_at, None)
        status = read_status(self.paths.container_status(cid))
        if started_at is None:
            return State("created", False, 0, None, None)
        finished_at = _mtime(self.paths.container_status(cid)) or started_at
        if self.paths.container_dir(cid).joinpath("checkpointed").exists():
            # stopped by `checkpoint create` (hv.engine.checkpoints), as Docker shows it
            return State("exited", False, 0, started_at, finished_at)
        if status.exit_code is not None:
            return State("exited", False, status.exit_code, started_at, finished_at,
                         status.error or "")
        # powered off without the agent saying how: the VM was killed
        return State("exited", False, 137, started_at, finished_at,
                     "the VM stopped without reporting an exit code")

    def bound_ports(self) -> list[dict]:
        """The host ports published for a running container (written at its start)."""
        if not self.active:
            return []
        try:
            ports = json.loads(self.paths.container_ports(self.id).read_text())
        except (OSError, ValueError):
            return []
        return ports if isinstance(ports, list) else []

    def inspect(self) -> dict:
        r = self.record
        st = self.state()
        argv = r.argv
        return {
            "Id": r.id,
            "Created": rfc3339(r.created),
            "Path": argv[0] if argv else "",
            "Args": argv[1:],
            "State": {
                "Status": st.status,
                "Running": st.running,
                "Paused": self.paused,
                "Restarting": False,
                "OOMKilled": False,
                "Dead": False,
                "Pid": 0,
                "ExitCode": st.exit_code,
                "Error": st.error,
                "StartedAt": rfc3339(st.started_at),
                "FinishedAt": rfc3339(st.finished_at),
            },
            "Image": r.image_id,
            "LogPath": str(self.paths.container_log(r.id)),
            "Name": "/" + r.name,
            "Mounts": _mounts(r.volumes),
            "RestartCount": _restarts(self.paths, r.id),
            "Driver": "qcow2",
            "Platform": "linux",
            "HostConfig": {
                "Memory": r.memory_mib * 1024 * 1024,
                "NanoCpus": r.nano_cpus,
                "AutoRemove": r.auto_remove,
                "NetworkMode": r.networks[0] if r.networks else "default",
                "ExtraHosts": list(r.add_hosts) or None,
                "ReadonlyRootfs": r.read_only,
                "Tmpfs": {t.partition(":")[0]: t.partition(":")[2] for t in r.tmpfs} or None,
                "Dns": list(r.dns),
                "DnsSearch": list(r.dns_search),
                "DnsOptions": list(r.dns_options),
                "PortBindings": _port_bindings(r.ports),
                "RestartPolicy": {"Name": r.restart.partition(":")[0],
                                  "MaximumRetryCount": int(r.restart.partition(":")[2] or 0)},
            },
            "Config": {
                "Hostname": r.hostname,
                "User": r.user,
                "Env": r.env,
                "Cmd": r.cmd,
                "Image": r.image,
                "WorkingDir": r.workdir,
                "Entrypoint": r.entrypoint or None,
                "Tty": r.tty,
                "OpenStdin": r.stdin_open,
                "Labels": self.labels(),
                **({"StopSignal": r.stop_signal} if r.stop_signal else {}),
                **({"StopTimeout": r.stop_timeout} if r.stop_timeout is not None else {}),
            },
            "NetworkSettings": _network_settings(self.paths, r.id),
            "VM": {
                "Domain": r.domain or r.name,
                "Accelerator": r.accel,
                "Vcpus": r.vcpus,
                "MemoryMiB": r.memory_mib,
                "BaseDisk": r.base_disk,
                "Disk": str(self.paths.container_disk(r.id)),
                "Seed": str(self.paths.container_seed(r.id)),
                "Console": str(self.paths.container_console(r.id)),
                # this boot was a pooled VM's (hv.engine.pool); a restart boots cold
                "Warm": self.paths.container_dir(r.id).joinpath("warm").exists(),
            },
        }


def _mounts(volumes: list[dict]) -> list[dict]:
    from hv.volumes import inspect_mounts

    return inspect_mounts(volumes)


def _network_settings(paths: Paths, cid: str) -> dict:
    """Docker's NetworkSettings from the network records (the source of truth: connect and
    disconnect change them, not this record). IPAddress/Gateway/MacAddress: `bridge`'s."""
    from hv.network import ops

    pairs = ops.endpoints_of(paths.state_root(), cid)
    nets = {n.name: ep.to_container_inspect(n) for n, ep in pairs}
    bridge = nets.get("bridge", {})
    return {"Networks": nets, "IPAddress": bridge.get("IPAddress", ""),
            "IPPrefixLen": bridge.get("IPPrefixLen", 0), "Gateway": bridge.get("Gateway", ""),
            "MacAddress": bridge.get("MacAddress", ""), "Ports": {}}


def _restarts(paths: Paths, cid: str) -> int:
    from hv.restart import restart_count

    return restart_count(paths, cid)


def _port_bindings(ports: list[dict]) -> dict:
    out: dict = {}
    for p in ports:
        out.setdefault(f"{p['container_port']}/{p['proto']}", []).append(
            {"HostIp": p["host_ip"], "HostPort": str(p["host_port"] or "")})
    return out


def _read_float(path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _mtime(path) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def now() -> float:
    return time.time()
