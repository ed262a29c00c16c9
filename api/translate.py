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
from hv.timefmt import human_duration, rfc3339

# Config fields that are translated, or metadata with no effect on what runs.
_CONFIG_DONE = {
    "Image", "Cmd", "Entrypoint", "Env", "WorkingDir", "User", "Hostname", "Tty",
    "OpenStdin", "AttachStdin", "AttachStdout", "AttachStderr", "StdinOnce", "ExposedPorts",
    "Volumes", "ArgsEscaped", "Labels", "StopSignal", "StopTimeout",
}
_HOST_DONE = {
    "Binds", "Mounts", "PortBindings", "PublishAllPorts", "AutoRemove", "RestartPolicy",
    "Memory", "NanoCpus", "ConsoleSize", "NetworkMode", "ExtraHosts", "Dns", "DnsSearch",
    "DnsOptions", "Tmpfs", "ReadonlyRootfs",
}
# Values of fields hv does not do that mean "as usual" (what docker/cli and docker-py send
# for a plain `run`).
_DEFAULTS = {
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
    networks, aliases, ip, more = _networks(host, body)
    warnings += more

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
        networks=networks,
        network_aliases=aliases,
        ip=ip,
        add_hosts=_strings(host.get("ExtraHosts"), "HostConfig.ExtraHosts"),
        dns=_strings(host.get("Dns"), "HostConfig.Dns"),
        dns_search=_strings(host.get("DnsSearch"), "HostConfig.DnsSearch"),
        dns_options=_strings(host.get("DnsOptions"), "HostConfig.DnsOptions"),
        tmpfs=[f"{k}:{v}" if v else k for k, v in
               (_typed(host.get("Tmpfs"), dict, "HostConfig.Tmpfs", {}) or {}).items()],
        read_only=bool(_typed(host.get("ReadonlyRootfs"), bool, "HostConfig.ReadonlyRootfs")),
        stop_signal=_typed(body.get("StopSignal"), str, "StopSignal", "") or None,
        stop_timeout=_typed(body.get("StopTimeout"), int, "StopTimeout", None),
    )
    return opts, warnings


def _networks(host: dict, body: dict) -> tuple[list[str], list[str], str | None, list[str]]:
    """HostConfig.NetworkMode and NetworkingConfig.EndpointsConfig → (networks, aliases and
    IP on the first, warnings). The mode is the first network ("default": the facade's
    default, `bridge`); the other endpoints are joined at create too (hv cannot add a NIC
    to a running VM), their aliases and IPs not: the facade takes those on the first."""
    from hv.errors import UsageError

    mode = _typed(host.get("NetworkMode"), str, "HostConfig.NetworkMode", "") or "default"
    if mode.startswith("container:"):
        raise UsageError(f"network mode {mode!r} is not supported: a VM has no network "
                         "namespace to share")
    net_cfg = _typed(body.get("NetworkingConfig"), dict, "NetworkingConfig", {})
    endpoints = _typed(net_cfg.get("EndpointsConfig"), dict, "EndpointsConfig", {}) or {}
    if mode != "default":
        first = mode
    else:  # the mode says the default: an endpoint may still name the network
        named = [n for n in endpoints if n != "default"]
        first = named[0] if named else None
    names = [first, *[n for n in endpoints if n not in (first, "default")]] if first else []
    if names == ["bridge"]:
        names = []  # the facade's default (without CAP_NET_ADMIN: the user-mode NIC only)
    aliases: list[str] = []
    ip = None
    warnings: list[str] = []
    for net, cfg in endpoints.items():
        cfg = _typed(cfg, dict, f"EndpointsConfig.{net}", {}) or {}
        got = _strings(cfg.get("Aliases"), f"EndpointsConfig.{net}.Aliases")
        want_ip = (_typed(cfg.get("IPAMConfig"), dict, f"EndpointsConfig.{net}.IPAMConfig",
                          {}) or {}).get("IPv4Address") or None
        if net == first or (first is None and net == "default"):
            aliases, ip = got, want_ip
        elif got or want_ip:
            warnings.append(f"NetworkingConfig: aliases and IPv4Address on network {net!r} "
                            "are not supported by hv (only on the first network, "
                            f"{first or 'bridge'!r}): ignored")
    return names, aliases, ip, warnings


# --- containers out ---------------------------------------------------------------------------


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


# An hv network's gateway address is reserved and held by nobody (the host has no address
# on a segment; docs/networks.md), so nothing answers there. Clients read an endpoint's
# Gateway as "where the host is" (testcontainers inside a container, DinD-style, connects to
# it for the published ports): in hv that is the loopback the ports are bound on.
# `GET /networks/{id}` keeps the network's own IPAM gateway.
HOST_GATEWAY = "127.0.0.1"


def _endpoints(doc: dict, c: Container, version: tuple[int, int] | None) -> dict:
    """NetworkSettings.Networks from the real endpoints (Container.inspect reads the network
    records), Gateway as HOST_GATEWAY says. Before API 1.44 dockerd listed the container's
    short id among its Aliases on user-defined networks (since, in DNSNames): docker-compose
    1.29 looks for it there to know a container is already connected."""
    nets = (doc.get("NetworkSettings") or {}).get("Networks") or {}
    for ep in nets.values():
        if ep.get("Gateway"):
            ep["Gateway"] = HOST_GATEWAY
    if version is not None and version < (1, 44):
        for ep in nets.values():
            if ep.get("DNSNames") is not None:  # user-defined
                aliases = list(ep.get("Aliases") or [])
                if c.id[:12] not in aliases:
                    ep["Aliases"] = aliases + [c.id[:12]]
    return nets


def summary(c: Container, doc: dict, labels: dict[str, str],
            version: tuple[int, int] | None = None) -> dict:
    """One entry of GET /containers/json (`doc`: the container's `inspect()`)."""
    r = c.record
    mounts = doc.get("Mounts") or []
    return {
        "Id": r.id, "Names": ["/" + r.name], "Image": r.image, "ImageID": r.image_id,
        "Command": shlex.join(r.argv), "Created": int(r.created), "Ports": _ports_list(c),
        "Labels": labels, "State": c.state().status, "Status": status_text(c),
        "HostConfig": {"NetworkMode": doc["HostConfig"].get("NetworkMode") or "default"},
        "NetworkSettings": {"Networks": _endpoints(doc, c, version)},
        "Mounts": [{k: m.get(k) for k in ("Type", "Name", "Source", "Destination", "Driver",
                                           "Mode", "RW", "Propagation") if k in m}
                   for m in mounts],
    }


def inspect(c: Container, labels: dict[str, str],
            version: tuple[int, int] | None = None) -> dict:
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
    # published ports stay on the user-mode NIC, bound on the host (127.0.0.1 unless -p said
    # otherwise): Ports' HostIp is where the host reaches them, not the networks' gateway
    net = doc.get("NetworkSettings") or {}
    doc["NetworkSettings"] = {
        "Bridge": "", "SandboxID": "", "SandboxKey": "", "HairpinMode": False,
        "Ports": _ports_map(c), "IPAddress": net.get("IPAddress", ""),
        "IPPrefixLen": net.get("IPPrefixLen", 0),
        "Gateway": HOST_GATEWAY if net.get("Gateway") else "",
        "MacAddress": net.get("MacAddress", ""), "Networks": _endpoints(doc, c, version),
    }
    doc["Created"] = rfc3339(r.created)
    return doc
