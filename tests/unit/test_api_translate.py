"""The Engine API's create body → RunOptions, and the shapes it answers with (no VM)."""

from __future__ import annotations

import json

from api.http import Request
from api.images import pull_event
from api.streams import content_type, frame
from api.translate import human_duration, run_options

# what docker/cli 28.2 sends for `docker run --rm busybox echo hi` (captured)
CLI_RUN_RM = json.loads("""{"Hostname":"","Domainname":"","User":"","AttachStdin":false,
"AttachStdout":true,"AttachStderr":true,"Tty":false,"OpenStdin":false,"StdinOnce":false,
"Env":null,"Cmd":["echo","hi"],"Image":"busybox","Volumes":{},"WorkingDir":"",
"Entrypoint":null,"OnBuild":null,"Labels":{},"HostConfig":{"Binds":null,"ContainerIDFile":"",
"LogConfig":{"Type":"","Config":{}},"NetworkMode":"default","PortBindings":{},
"RestartPolicy":{"Name":"no","MaximumRetryCount":0},"AutoRemove":true,"VolumeDriver":"",
"VolumesFrom":null,"ConsoleSize":[0,0],"CapAdd":null,"CapDrop":null,"CgroupnsMode":"",
"Dns":[],"DnsOptions":[],"DnsSearch":[],"ExtraHosts":null,"GroupAdd":null,"IpcMode":"",
"Cgroup":"","Links":null,"OomScoreAdj":0,"PidMode":"","Privileged":false,
"PublishAllPorts":false,"ReadonlyRootfs":false,"SecurityOpt":null,"UTSMode":"",
"UsernsMode":"","ShmSize":0,"Isolation":"","CpuShares":0,"Memory":0,"NanoCpus":0,
"CgroupParent":"","BlkioWeight":0,"BlkioWeightDevice":[],"BlkioDeviceReadBps":[],
"BlkioDeviceWriteBps":[],"BlkioDeviceReadIOps":[],"BlkioDeviceWriteIOps":[],"CpuPeriod":0,
"CpuQuota":0,"CpuRealtimePeriod":0,"CpuRealtimeRuntime":0,"CpusetCpus":"","CpusetMems":"",
"Devices":[],"DeviceCgroupRules":null,"DeviceRequests":null,"MemoryReservation":0,
"MemorySwap":0,"MemorySwappiness":-1,"OomKillDisable":false,"PidsLimit":0,"Ulimits":[],
"CpuCount":0,"CpuPercent":0,"IOMaximumIOps":0,"IOMaximumBandwidth":0,"MaskedPaths":null,
"ReadonlyPaths":null},"NetworkingConfig":{"EndpointsConfig":{"default":{"IPAMConfig":null,
"Links":null,"Aliases":null,"MacAddress":"","DriverOpts":null,"GwPriority":0,"NetworkID":"",
"EndpointID":"","Gateway":"","IPAddress":"","IPPrefixLen":0,"IPv6Gateway":"",
"GlobalIPv6Address":"","GlobalIPv6PrefixLen":0,"DNSNames":null}}}}""")


def test_the_clis_plain_run_needs_no_warning():
    opts, warnings = run_options(CLI_RUN_RM, None, {})
    assert warnings == []
    assert (opts.image, opts.args, opts.auto_remove, opts.detach) == \
        ("busybox", ["echo", "hi"], True, True)
    assert opts.entrypoint is None and opts.restart is None and opts.memory is None


def test_fields_hv_acts_on():
    body = {
        "Image": "busybox", "Cmd": ["-c", "echo"], "Entrypoint": ["sh"], "Env": ["A=1"],
        "WorkingDir": "/w", "User": "nobody", "Hostname": "h1", "Tty": True,
        "OpenStdin": True, "AttachStdin": True, "Volumes": {"/anon": {}},
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        "HostConfig": {"Binds": ["/tmp:/x:ro"], "PortBindings": {
            "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]},
            "Mounts": [{"Type": "volume", "Source": "data", "Target": "/data", "ReadOnly": True}],
            "PublishAllPorts": True, "Memory": 268435456, "NanoCpus": 1500000000,
            "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3}},
    }
    opts, warnings = run_options(body, "web", {})
    assert warnings == []
    assert opts.entrypoint == "sh" and opts.args == ["-c", "echo"]
    assert opts.name == "web" and opts.env == ["A=1"] and opts.workdir == "/w"
    assert opts.user == "nobody" and opts.hostname == "h1" and opts.tty and opts.interactive
    assert not opts.detach  # stdin attached: the guest waits for the attach
    assert opts.volumes == ["/tmp:/x:ro", "/anon"]
    assert opts.mounts == ["type=volume,source=data,target=/data,readonly"]
    assert opts.publish == ["127.0.0.1:8080:80/tcp", "53/udp"] and opts.publish_all
    assert opts.memory == "268435456" and opts.cpus == "1.5" and opts.restart == "on-failure:3"


def test_what_hv_does_not_do_is_a_warning():
    body = {"Image": "busybox", "Domainname": "example.com",
            "Healthcheck": {"Test": ["CMD", "true"]},
            "HostConfig": {"Privileged": True, "CapAdd": ["NET_ADMIN"],
                           "Mounts": [{"Type": "tmpfs", "Target": "/t"}]},
            "NetworkingConfig": {"EndpointsConfig": {"a": {}, "mynet": {"Aliases": ["x"]}}}}
    _opts, warnings = run_options(body, None, {})
    text = "\n".join(warnings)
    for word in ("Config.Domainname", "Config.Healthcheck", "HostConfig.Privileged",
                 "HostConfig.CapAdd", "tmpfs", "'mynet'"):
        assert word in text, (word, warnings)


def test_networks_mode_endpoints_and_extra_hosts():
    def nets(host, endpoints=None):
        body = {"Image": "x", "HostConfig": host}
        if endpoints is not None:
            body["NetworkingConfig"] = {"EndpointsConfig": endpoints}
        opts, warnings = run_options(body, None, {})
        return opts.networks, opts.network_aliases, opts.ip, warnings

    assert nets({"NetworkMode": "default"}, CLI_RUN_RM["NetworkingConfig"]["EndpointsConfig"]) \
        == ([], [], None, [])
    assert nets({"NetworkMode": "bridge"}) == ([], [], None, [])
    assert nets({"NetworkMode": "none"}, {"none": {}}) == (["none"], [], None, [])
    assert nets({"NetworkMode": "host"})[0] == ["host"]  # the facade refuses it (400)
    # docker-compose 1.29: the project's network, the service name as an alias
    assert nets({"NetworkMode": "p_default"}, {"p_default": {"Aliases": ["web"]}}) == \
        (["p_default"], ["web"], None, [])
    # docker-py's containers.create(networking_config=...) without a mode
    assert nets({}, {"n1": {"Aliases": ["a"], "IPAMConfig": {"IPv4Address": "10.9.0.5"}}}) \
        == (["n1"], ["a"], "10.9.0.5", [])
    got = nets({"NetworkMode": "n1"}, {"n1": {}, "n2": {"Aliases": ["z"]}, "bridge": {}})
    assert got[:3] == (["n1", "n2", "bridge"], [], None) and "'n2'" in got[3][0]
    opts, warnings = run_options({"Image": "x", "HostConfig": {
        "ExtraHosts": ["db:10.1.2.3"], "NetworkMode": "default"}}, None, {})
    assert opts.add_hosts == ["db:10.1.2.3"] and warnings == []
    import pytest

    from hv.errors import UsageError

    with pytest.raises(UsageError, match="container:"):
        run_options({"Image": "x", "HostConfig": {"NetworkMode": "container:abc"}}, None, {})


def test_entrypoint_cleared_and_string_cmd():
    opts, _ = run_options({"Image": "x", "Entrypoint": [], "Cmd": "ls"}, None, {})
    assert opts.entrypoint == "" and opts.args == ["ls"]


def test_query_flags_and_filters():
    r = Request.make("GET", '/containers/json?all=1&filters={"status":{"exited":true}}&x=',
                     {}, b"", None)  # type: ignore[arg-type]
    assert r.flag("all") and not r.flag("x") and r.filters() == {"status": ["exited"]}


def test_frames_pull_lines_and_media_types():
    assert frame(2, b"err") == b"\x02\x00\x00\x00\x00\x00\x00\x03err"
    assert content_type(True, (1, 50)) == "application/vnd.docker.raw-stream"
    assert content_type(False, (1, 41)) == "application/vnd.docker.raw-stream"
    assert content_type(False, (1, 42)) == "application/vnd.docker.multiplexed-stream"

    class Ev:
        def __init__(self, layer, status, current=0, total=0):
            self.layer, self.status, self.current, self.total = layer, status, current, total

    assert pull_event(Ev("", "latest: Pulling from library/busybox")) == \
        {"status": "Pulling from library/busybox", "id": "latest"}
    msg = pull_event(Ev("abc", "Downloading", 50, 100))
    assert msg["progressDetail"] == {"current": 50, "total": 100} and "progress" in msg
    assert human_duration(0.5) == "Less than a second" and human_duration(90) == "About a minute"


def test_wrong_types_are_usage_errors():
    import pytest

    from hv.errors import UsageError

    for body in ({"Image": "x", "Cmd": 5}, {"Image": "x", "HostConfig": "big"},
                 {"Image": "x", "HostConfig": {"Memory": "lots"}},
                 {"Image": "x", "HostConfig": {"Memory": True}},
                 {"Image": "x", "WorkingDir": ["/"]}, {"Image": "x", "Env": [1]}):
        with pytest.raises(UsageError):
            run_options(body, None, {})


def test_network_list_filters():
    import pytest

    from api.networks import _filters
    from hv.errors import UsageError

    class Net:
        def __init__(self, name, id, driver="bridge", labels=None, user_defined=True,
                     endpoints=None):
            self.name, self.id, self.driver, self.labels = name, id, driver, labels or {}
            self.user_defined, self.endpoints = user_defined, endpoints or {}

    nets = [Net("bridge", "aa1", user_defined=False, endpoints={"c": 1}),
            Net("none", "bb2", driver="null", user_defined=False),
            Net("app_default", "cc3", labels={"p": "app"}), Net("used", "dd4", endpoints={"c": 1})]

    def names(filters):
        checks = _filters(filters)
        return [n.name for n in nets if all(c(n) for c in checks)]

    assert names({}) == ["bridge", "none", "app_default", "used"]
    assert names({"name": ["def", "non"]}) == ["none", "app_default"]
    assert names({"id": ["cc"]}) == ["app_default"]
    assert names({"driver": ["null"]}) == ["none"]
    assert names({"label": ["p=app"]}) == names({"label": ["p"]}) == ["app_default"]
    assert names({"type": ["builtin"]}) == ["bridge", "none"]
    assert names({"type": ["custom"], "dangling": ["true"]}) == ["app_default"]
    assert names({"dangling": ["false"]}) == ["bridge", "none", "used"]
    for bad in ({"type": ["x"]}, {"dangling": ["maybe"]}, {"scope": ["local"]}):
        with pytest.raises(UsageError):
            _filters(bad)
