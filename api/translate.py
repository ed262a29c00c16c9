"""Docker's JSON ↔ hv's objects: the create body into RunOptions, containers into Docker's
list and inspect shapes. Pure functions, no I/O beyond what a Container reads of itself.

A create body carries every field of Docker's Config and HostConfig, most at their zero
value. A field hv acts on is translated; a field left at Docker's default is ignored; any
other field is named in the response's `Warnings` — never applied half-way or dropped
without a word.
"""

from __future__ import annotations

import csv
import io
import shlex
import time

from hv.containers import Container
from hv.spec import RunOptions
from hv.timefmt import rfc3339

# Config fields that are translated, or metadata with no effect on what runs.
_CONFIG_DONE = {
    "Image", "Cmd", "Entrypoint", "Env", "WorkingDir", "User", "Hostname", "Tty",
    "OpenStdin", "AttachStdin", "AttachStdout", "AttachStderr", "StdinOnce", "ExposedPorts",
    "Volumes", "ArgsEscaped", "Labels",
}
_HOST_DONE = {
    "Binds", "Mounts", "PortBindings", "PublishAllPorts", "AutoRemove", "RestartPolicy",
    "Memory", "NanoCpus", "ConsoleSize",
}
# Values of fields hv does not do that mean "as usual" (what docker/cli and docker-py send
# for a plain `run`).
_DEFAULTS = {
    "NetworkMode": {"", "default", "bridge"},
    "IpcMode": {"", "private", "shareable"},
    "CgroupnsMode": {"", "private", "host"},
    "Isolation": {"", "default"},
    "StopSignal": {"", "SIGTERM", "15"},
    "PidMode": {""}, "UTSMode": {""}, "UsernsMode": {""}, "Cgroup": {""},
}


def _empty(value: object) -> bool:
    return value in (None, "", 0, False, [], {}) or (
        isinstance(value, dict | list) and not any(not _empty(v) for v in
                                                   (value.values() if isinstance(value, dict)
                                                    else value)))


def _ignored(section: str, key: str, value: object) -> bool:
    if _empty(value):
        return True
    if key in _DEFAULTS and isinstance(value, str) and value in _DEFAULTS[key]:
        return True
    if section == "HostConfig" and key == "LogConfig" and isinstance(value, dict):
        return (value.get("Type") or "json-file") in ("json-file", "local") \
            and _empty(value.get("Config"))
    if section == "HostConfig" and key in ("MemorySwappiness", "MemorySwap") and \
            value in (-1, None):
        return True
    if section == "Config" and key == "StopTimeout" and value == 10:
        return True
    return False


def _strings(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        from hv.errors import UsageError

        raise UsageError(f"invalid {what}: want a list of strings")
    return list(value)


def _typed(value, types, what: str, default=None):
    """`value` when it is of `types` (None: `default`), else Docker's 400."""
    if value is None:
        return default
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in
                                        (types if isinstance(types, tuple) else (types,))):
        from hv.errors import UsageError

        raise UsageError(f"invalid {what}: wrong type {type(value).__name__}")
    return value


def _mount_text(m: dict) -> tuple[str | None, str | None]:
    """One HostConfig.Mounts entry as a `--mount` value, or a warning."""
    kind = (m.get("Type") or "volume").lower()
    if kind not in ("bind", "volume"):
        return None, f"mount type {kind!r} ({m.get('Target')}) is not supported by hv: ignored"
    fields = [f"type={kind}"]
    if m.get("Source"):
        fields.append(f"source={m['Source']}")
    fields.append(f"target={m.get('Target') or ''}")
    if m.get("ReadOnly"):
        fields.append("readonly")
    if (m.get("VolumeOptions") or {}).get("NoCopy"):
        fields.append("volume-nocopy")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(fields)
    return buf.getvalue(), None


def _restart(policy: object) -> str | None:
    if not isinstance(policy, dict):
        return None
    name = policy.get("Name") or ""
    if name in ("", "no"):
        return None
    count = int(policy.get("MaximumRetryCount") or 0)
    return f"{name}:{count}" if name == "on-failure" and count else name


def run_options(body: dict, name: str | None, image_exposed: dict | None
                ) -> tuple[RunOptions, list[str]]:
    """(RunOptions, warnings) for a create body. `image_exposed`: the image's ExposedPorts
    (PublishAllPorts publishes those itself; the body's others are added)."""
    host = _typed(body.get("HostConfig"), dict, "HostConfig", {})
    warnings: list[str] = []
    for section, data, done in (("Config", body, _CONFIG_DONE), ("HostConfig", host, _HOST_DONE)):
        for key, value in data.items():
            if key in done or key in ("HostConfig", "NetworkingConfig"):
                continue
            if not _ignored(section, key, value):
                warnings.append(f"{section}.{key} is not supported by hv: ignored")
    net_cfg = _typed(body.get("NetworkingConfig"), dict, "NetworkingConfig", {})
    endpoints = _typed(net_cfg.get("EndpointsConfig"), dict, "EndpointsConfig", {})
    for net, cfg in endpoints.items():
        if net not in ("bridge", "default") or not _empty(
                {k: v for k, v in (cfg or {}).items() if k not in ("NetworkID", "EndpointID")}):
            warnings.append(f"network {net!r} is not supported by hv (every VM has its own "
                            "user-mode network): ignored")

    entry = body.get("Entrypoint")
    cmd = _strings(body.get("Cmd"), "Cmd")
    entrypoint = None
    if entry is not None:
        parts = _strings(entry, "Entrypoint")
        # hv's entrypoint is one word, as `--entrypoint`; the rest goes before Cmd
        entrypoint = parts[0] if parts else ""
        cmd = parts[1:] + cmd

    volumes = _strings(host.get("Binds"), "HostConfig.Binds")
    volumes += [v for v in _typed(body.get("Volumes"), dict, "Volumes", {}) if v not in
                {b.split(":")[1] if b.count(":") else b for b in volumes}]
    mounts = []
    for m in _typed(host.get("Mounts"), list, "HostConfig.Mounts", []):
        text, warning = _mount_text(m if isinstance(m, dict) else {})
        if text:
            mounts.append(text)
        if warning:
            warnings.append(warning)

    publish = []
    for key, bindings in _typed(host.get("PortBindings"), dict, "HostConfig.PortBindings",
                                {}).items():
        port, _, proto = key.partition("/")
        for b in bindings or [{}]:
            hp, ip = (b or {}).get("HostPort") or "", (b or {}).get("HostIp") or ""
            publish.append(f"{ip}:{hp}:{port}/{proto or 'tcp'}" if ip else
                           f"{hp}:{port}/{proto or 'tcp'}" if hp else f"{port}/{proto or 'tcp'}")
    publish_all = bool(host.get("PublishAllPorts"))
    if publish_all:
        bound = set(host.get("PortBindings") or {})
        for key in _typed(body.get("ExposedPorts"), dict, "ExposedPorts", {}):
            if key not in (image_exposed or {}) and key not in bound:
                publish.append(key if "/" in key else f"{key}/tcp")

    memory = _typed(host.get("Memory"), int, "HostConfig.Memory", 0)
    nano = _typed(host.get("NanoCpus"), int, "HostConfig.NanoCpus", 0)
    for key in ("WorkingDir", "User", "Hostname"):
        _typed(body.get(key), str, key)
    stdin_attached = bool(body.get("OpenStdin") and body.get("AttachStdin"))
    opts = RunOptions(
        image=str(body.get("Image") or ""),
        args=cmd,
        name=name or None,
        # not detached: a client will attach stdin, so the guest waits for it before the
        # main process starts (nothing it prints is lost); everything else runs at once
        detach=not stdin_attached,
        auto_remove=bool(host.get("AutoRemove")),
        env=_strings(body.get("Env"), "Env"),
        workdir=body.get("WorkingDir") or None,
        user=body.get("User") or None,
        entrypoint=entrypoint,
        hostname=body.get("Hostname") or None,
        memory=str(int(memory)) if memory else None,
        cpus=f"{nano / 1e9:g}" if nano else None,
        publish=publish,
        publish_all=publish_all,
        tty=bool(body.get("Tty")),
        interactive=bool(body.get("OpenStdin")),
        restart=_restart(host.get("RestartPolicy")),
        volumes=volumes,
        mounts=mounts,
    )
    return opts, warnings


# --- containers out ---------------------------------------------------------------------------


def human_duration(seconds: float) -> str:
    """Go's units.HumanDuration, which `docker ps` shows."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = round(s / 3600)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{h // 24 // 365} years"


def status_text(c: Container, now: float | None = None) -> str:
    now = time.time() if now is None else now
    st = c.state()
    if st.status in ("running", "paused"):
        up = "Up " + human_duration(max(0.0, now - (st.started_at or now)))
        return up + (" (Paused)" if st.status == "paused" else "")
    if st.status == "exited":
        ago = human_duration(max(0.0, now - (st.finished_at or now)))
        return f"Exited ({st.exit_code}) {ago} ago"
    return "Created"


def _ports_list(c: Container) -> list[dict]:
    bound = c.bound_ports()
    if bound:
        return [{"IP": p["host_ip"], "PrivatePort": p["container_port"],
                 "PublicPort": p["host_port"], "Type": p["proto"]} for p in bound]
    return [{"PrivatePort": p["container_port"], "Type": p["proto"]} for p in c.record.ports]


def _ports_map(c: Container) -> dict:
    out: dict = {}
    for p in c.bound_ports():
        out.setdefault(f"{p['container_port']}/{p['proto']}", []).append(
            {"HostIp": p["host_ip"], "HostPort": str(p["host_port"])})
    for p in c.record.ports:
        out.setdefault(f"{p['container_port']}/{p['proto']}", None)
    return out


# Every VM has a user-mode network of its own; from the host a container is reached through
# its published ports on the host's loopback, so that is the "gateway" clients may use
# (testcontainers' get_container_host_ip reads it). The name is Docker's default network's.
BRIDGE_ENDPOINT = {
    "IPAMConfig": None, "Links": None, "Aliases": None, "MacAddress": "", "NetworkID": "bridge",
    "EndpointID": "", "Gateway": "127.0.0.1", "IPAddress": "", "IPPrefixLen": 0,
    "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0, "DriverOpts": None,
    "DNSNames": None,
}
BRIDGE_NETWORK = {
    "Name": "bridge", "Id": "bridge", "Created": "0001-01-01T00:00:00Z", "Scope": "local",
    "Driver": "hv-user", "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": None,
                                                       "Config": []},
    "Internal": False, "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
    "ConfigOnly": False, "Containers": {}, "Options": {}, "Labels": {},
}


def summary(c: Container, mounts: list[dict], labels: dict[str, str]) -> dict:
    """One entry of GET /containers/json."""
    r = c.record
    return {
        "Id": r.id, "Names": ["/" + r.name], "Image": r.image, "ImageID": r.image_id,
        "Command": shlex.join(r.argv), "Created": int(r.created), "Ports": _ports_list(c),
        "Labels": labels, "State": c.state().status, "Status": status_text(c),
        "HostConfig": {"NetworkMode": "default"},
        "NetworkSettings": {"Networks": {"bridge": BRIDGE_ENDPOINT} if c.active else {}},
        "Mounts": [{k: m.get(k) for k in ("Type", "Name", "Source", "Destination", "Driver",
                                           "Mode", "RW", "Propagation") if k in m}
                   for m in mounts],
    }


def inspect(c: Container, labels: dict[str, str]) -> dict:
    """GET /containers/{id}/json: hv's inspect with Docker's types and the fields clients
    read (docker-py's ports, testcontainers' NetworkSettings.Ports)."""
    doc = c.inspect()
    r = c.record
    doc.update({
        "ResolvConfPath": "", "HostnamePath": "", "HostsPath": "", "ProcessLabel": "",
        "MountLabel": "", "AppArmorProfile": "", "ExecIDs": None,
        "GraphDriver": {"Name": "qcow2", "Data": None},
    })
    doc["State"].setdefault("Pid", 0)
    exposed = {f"{p['container_port']}/{p['proto']}": {} for p in r.ports}
    doc["Config"].update({
        "Domainname": "", "AttachStdin": False, "AttachStdout": False, "AttachStderr": False,
        "ExposedPorts": exposed or None, "StdinOnce": False, "Volumes": None,
        "OnBuild": None, "Labels": labels, "Cmd": r.cmd or None, "Env": list(r.env),
    })
    binds = [f"{m['Source']}:{m['Destination']}" + ("" if m.get("RW", True) else ":ro")
             for m in doc.get("Mounts") or [] if m.get("Type") == "bind"]
    doc["HostConfig"].update({
        "Binds": binds or None, "PublishAllPorts": False, "Privileged": False,
        "LogConfig": {"Type": "json-file", "Config": {}},
        "ConsoleSize": [0, 0], "Isolation": "", "Runtime": "hv",
    })
    doc["NetworkSettings"] = {
        "Bridge": "", "SandboxID": "", "SandboxKey": "", "HairpinMode": False,
        "Ports": _ports_map(c), "IPAddress": "", "IPPrefixLen": 0, "Gateway": "",
        "MacAddress": "", "Networks": {"bridge": BRIDGE_ENDPOINT} if c.active else {},
    }
    doc["Created"] = rfc3339(r.created)
    return doc
