"""/_ping, /version, /info, /events: what clients ask before anything else.

Clients negotiate from `/_ping`'s `API-Version` header (HEAD first, then GET); docker-py's
`from_env()` reads `/version`'s `ApiVersion`. `/info` says what runs the containers: the
`hv` runtime, VMs (`Isolation: vm`), and the accelerator (KVM or TCG).
"""

from __future__ import annotations

import platform
import time

from api import events
from api.http import HttpError, Request, Response, json_response
from hv import __version__

PING_HEADERS = [("Builder-Version", "1"),  # API-Version: on every answer (api.http)
                ("Cache-Control", "no-cache, no-store, must-revalidate"), ("Pragma", "no-cache")]


def routes(svc) -> list:
    def ping(req: Request) -> Response:
        return Response(200, b"OK", "text/plain; charset=utf-8", list(PING_HEADERS))

    def version(req: Request) -> Response:
        f = svc.engine.host_facts()
        details = {"Accelerator": f.accelerator, "GuestKernel": f.guest_kernel}
        return json_response({
            "Platform": {"Name": "hv (Docker Engine API, containers are VMs)"},
            "Components": [
                {"Name": "Engine", "Version": __version__,
                 "Details": {"ApiVersion": "1.50", "MinAPIVersion": "1.24",
                             "Os": "linux", "Arch": _arch(), "KernelVersion": f.host_kernel,
                             "Experimental": "false", "GitCommit": "", "GoVersion": "",
                             "BuildTime": ""}},
                {"Name": "hv-guest", "Version": f.guest_kernel or "not built",
                 "Details": details},
            ],
            "Version": __version__, "ApiVersion": "1.50", "MinAPIVersion": "1.24",
            "GitCommit": "", "GoVersion": "python" + platform.python_version(),
            "Os": "linux", "Arch": _arch(), "KernelVersion": f.host_kernel,
            "Experimental": False, "BuildTime": "",
        })

    def info(req: Request) -> Response:
        engine = svc.engine
        f = engine.host_facts()
        cs = engine.containers(all=True)
        states = [c.state().status for c in cs]
        accel = "KVM" if f.accelerator == "kvm" else "TCG"
        return json_response({
            "ID": "", "Name": f.hostname, "Containers": len(cs),
            "ContainersRunning": states.count("running"),
            "ContainersPaused": states.count("paused"),
            "ContainersStopped": len(cs) - states.count("running") - states.count("paused"),
            "Images": len(engine.images.list()),
            "Driver": "qcow2", "DriverStatus": [["Backing", "ext4 base disk per image"],
                                                ["Accelerator", accel]],
            "Plugins": {"Volume": ["local"], "Network": ["bridge", "null"], "Authorization": None,
                        "Log": ["json-file"]},
            "MemoryLimit": True, "SwapLimit": False, "CpuCfsPeriod": False,
            "CpuCfsQuota": False, "CPUShares": False, "CPUSet": False, "PidsLimit": False,
            "IPv4Forwarding": False, "Debug": False, "NFd": 0, "OomKillDisable": False,
            "NGoroutines": 0, "SystemTime": _now(), "LoggingDriver": "json-file",
            "CgroupDriver": "none", "CgroupVersion": "", "NEventsListener": 0,
            "KernelVersion": f.guest_kernel or f.host_kernel,
            "OperatingSystem": f"{f.operating_system} (containers are {accel} VMs)",
            "OSVersion": "", "OSType": "linux", "Architecture": platform.machine(),
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {"IndexConfigs": {}, "InsecureRegistryCIDRs": ["127.0.0.0/8"],
                               "Mirrors": []},
            "NCPU": f.ncpu, "MemTotal": f.mem_total, "DockerRootDir": f.state_root,
            "HttpProxy": "", "HttpsProxy": "", "NoProxy": "", "Labels": [],
            "ExperimentalBuild": False, "ServerVersion": __version__,
            "Runtimes": {"hv": {"path": "hv", "runtimeArgs": [f.accelerator]}},
            "DefaultRuntime": "hv", "Swarm": {"LocalNodeState": "inactive",
                                              "ControlAvailable": False, "NodeID": "",
                                              "NodeAddr": "", "Error": "",
                                              "RemoteManagers": None},
            "LiveRestoreEnabled": True, "Isolation": "vm", "InitBinary": "hv-init",
            "WarmPool": engine.pool_status(),  # hv's: HV_POOL / --pool (docs/warm-pool.md)
            "ContainerdCommit": {"ID": ""}, "RuncCommit": {"ID": ""},
            "InitCommit": {"ID": ""}, "SecurityOptions": ["name=vm"],
            "Warnings": ([f"KVM is not usable here ({f.accelerator_reason}): guests run "
                          "under TCG software emulation"] if accel == "TCG" else []),
            "Accelerator": accel, "GuestKernel": f.guest_kernel,
        })

    def event_stream(req: Request) -> Response:
        since, until = _seconds(req.arg("since")), _seconds(req.arg("until"))
        body = events.stream(svc.engine, req.filters(), since, until, req.client_gone)
        return Response(200, content_type="application/json", stream=body)

    return [
        ("GET", "/_ping", ping),
        ("GET", "/version", version),
        ("GET", "/info", info),
        ("GET", "/events", event_stream),
    ]


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _now() -> str:
    from hv.timefmt import rfc3339

    return rfc3339(time.time())


def _seconds(text: str | None) -> float:
    """Docker's since/until: Unix seconds, possibly with a fraction ("1700000000.5")."""
    if not text:
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise HttpError(400, f"invalid time value {text!r}: want Unix seconds") from None
