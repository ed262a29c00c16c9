"""The Engine API's networks, driven by real clients: the docker CLI, docker-py and
docker-compose 1.29 (issues 13 and 14). Few boots: each test shares its containers.

The service fixture is test_api's (one service for this module). Every network and
container made here is removed by name at the end of its test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time

import pytest

from tests.integration import test_api

# test_api's fixtures: one service for this module, its log in a failing test's report
service = test_api.service
_service_log_on_failure = test_api._service_log_on_failure

pytestmark = pytest.mark.vm

HTTPD = "mkdir -p /www && echo hi-from-{0} > /www/index.html && exec httpd -f -p 80 -h /www"


def _json(data: bytes | str):
    return json.loads(data)


def test_docker_cli_networks_names_none_and_errors(service):
    d = service.docker
    try:
        p = d("network", "create", "--label", "hvtest=1", "--subnet", "10.123.0.0/24",
              "hvn-cli", check=True)
        net_id = p.stdout.strip()
        assert len(net_id) == 64
        names = d("network", "ls", "--format", "{{.Name}}", check=True).stdout.split()
        assert {"bridge", "none", "hvn-cli"} <= set(names) and "host" not in names
        assert d("network", "ls", "-q", "-f", "label=hvtest=1", check=True).stdout.split() == \
            [net_id[:12]]
        assert d("network", "ls", "-q", "-f", "type=custom", "-f", "name=hvn-cli",
                 check=True).stdout.split() == [net_id[:12]]
        doc = _json(d("network", "inspect", "hvn-cli", check=True).stdout)[0]
        assert doc["Id"] == net_id and doc["Labels"] == {"hvtest": "1"}
        assert doc["IPAM"]["Config"][0]["Subnet"] == "10.123.0.0/24"
        # errors: Docker's statuses
        status, body, _ = service.request("POST", "/v1.50/networks/create",
                                          {"Name": "hvn-cli", "CheckDuplicate": True})
        assert status == 409 and b"already exists" in body, body
        assert service.request("GET", "/v1.50/networks/hvn-nope")[0] == 404
        assert service.request("DELETE", "/v1.50/networks/hvn-nope")[0] == 404
        assert service.request("DELETE", "/v1.50/networks/bridge")[0] == 403
        p = d("network", "create", "hvn-cli")
        assert p.returncode == 1 and "already exists" in p.stderr
        p = d("run", "--rm", "--network", "host", "busybox", "true")
        assert p.returncode == 125 and "not supported" in p.stderr, p.stderr

        # a server on the network, a client reaching it by name
        d("run", "-d", "--network", "hvn-cli", "--network-alias", "web-alias", "--name",
          "hvn-a", "busybox", "sh", "-c", HTTPD.format("a"), check=True)
        p = d("run", "--rm", "--network", "hvn-cli", "busybox", "sh", "-c",
              "for i in $(seq 60); do wget -qO- http://hvn-a/ && wget -qO- http://web-alias/"
              " && exit 0; sleep 0.5; done; cat /etc/hosts; exit 1", check=True)
        assert p.stdout == "hi-from-a\nhi-from-a\n", p.stdout
        doc = _json(d("inspect", "hvn-a", check=True).stdout)[0]
        assert doc["HostConfig"]["NetworkMode"] == "hvn-cli"
        ep = doc["NetworkSettings"]["Networks"]["hvn-cli"]
        assert ep["IPAddress"].startswith("10.123.0.") and ep["NetworkID"] == net_id
        assert "web-alias" in ep["Aliases"] and "bridge" not in doc["NetworkSettings"]["Networks"]
        fmt = '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}'
        assert d("ps", "--filter", "name=hvn-a", "--format", "{{.Networks}}",
                 check=True).stdout.strip() == "hvn-cli"
        assert d("inspect", "-f", fmt, "hvn-a", check=True).stdout.split() == ["hvn-cli"]
        inspect = _json(d("network", "inspect", "hvn-cli", check=True).stdout)[0]
        assert [c["Name"] for c in inspect["Containers"].values()] == ["hvn-a"]
        # in use: dockerd's 403, the CLI's exit 1
        status, body, _ = service.request("DELETE", "/v1.50/networks/hvn-cli")
        assert status == 403 and b"active endpoints" in body, body
        assert d("network", "rm", "hvn-cli").returncode == 1
        # connect and disconnect a running container: its NIC is hot-plugged, then unplugged
        d("network", "connect", "bridge", "hvn-a", check=True)
        doc = _json(d("inspect", "hvn-a", check=True).stdout)[0]
        assert sorted(doc["NetworkSettings"]["Networks"]) == ["bridge", "hvn-cli"]
        bridge_ip = doc["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        assert bridge_ip.startswith("172.17.") and doc["NetworkSettings"]["IPAddress"] == bridge_ip
        addrs = d("exec", "hvn-a", "ip", "-4", "-o", "addr", check=True).stdout
        assert f"inet {bridge_ip}/" in addrs, addrs
        d("network", "disconnect", "bridge", "hvn-a", check=True)
        assert f"inet {bridge_ip}/" not in d("exec", "hvn-a", "ip", "-4", "-o", "addr",
                                             check=True).stdout
        assert d("inspect", "-f", fmt, "hvn-a", check=True).stdout.split() == ["hvn-cli"]

        # --network none: no NIC but loopback and the user-mode one, nothing in inspect
        p = d("run", "--rm", "--network", "none", "busybox", "cat", "/etc/hosts", check=True)
        assert "hvn-a" not in p.stdout
        d("rm", "-f", "hvn-a", check=True)
        assert d("network", "rm", "hvn-cli", check=True).stdout.strip() == "hvn-cli"
        d("network", "create", "hvn-prune", check=True)
        p = d("network", "prune", "-f", check=True)
        assert "hvn-prune" in p.stdout
        assert "hvn-prune" not in d("network", "ls", "--format", "{{.Name}}").stdout
    finally:
        d("rm", "-f", "hvn-a", timeout=60)
        d("network", "rm", "hvn-cli", "hvn-prune", timeout=60)


def test_docker_py_networks_connect_before_start(service):
    import docker

    client = docker.DockerClient(base_url=service.url, timeout=240)
    try:
        net = client.networks.create("hvn-py", labels={"by": "docker-py"})
        assert client.networks.get(net.id).name == "hvn-py"
        assert [n.name for n in client.networks.list(names=["hvn-py"])] == ["hvn-py"]
        with pytest.raises(docker.errors.APIError) as err:
            client.networks.create("hvn-py", check_duplicate=True)
        assert err.value.status_code == 409
        # created, connected, then started: the connect applies at start
        srv = client.containers.create("busybox", ["sh", "-c", HTTPD.format("py")],
                                       name="hvn-py-srv")
        net.connect(srv, aliases=["pysrv"])
        srv.start()
        srv.reload()
        assert srv.status == "running"
        assert "hvn-py" in srv.attrs["NetworkSettings"]["Networks"]
        net.reload()
        assert [c.name for c in net.containers] == ["hvn-py-srv"]
        out = client.containers.run(
            "busybox", ["sh", "-c", "for i in $(seq 60); do wget -qO- http://pysrv/ && exit 0;"
                        " sleep 0.5; done; cat /etc/hosts; exit 1"],
            network="hvn-py", remove=True)
        assert out == b"hi-from-py\n"
        with pytest.raises(docker.errors.APIError) as err:
            net.remove()
        assert err.value.status_code == 403
        # a stopped container: disconnect, then it starts on the default network
        srv.stop(timeout=1)
        net.disconnect(srv)
        net.reload()
        assert net.containers == []
        srv.remove(force=True)
        net.remove()
        with pytest.raises(docker.errors.NotFound):
            client.networks.get("hvn-py")
    finally:
        with contextlib.suppress(docker.errors.APIError):
            client.containers.get("hvn-py-srv").remove(force=True)
        with contextlib.suppress(docker.errors.APIError):
            client.networks.get("hvn-py").remove()
        client.close()


def test_compose_two_services_resolve_each_other_by_name(service, tmp_path):
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose is not installed (make setup installs Debian's)")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "docker-compose.yml").write_text(
        'version: "3"\nservices:\n'
        "  web:\n    image: busybox\n"
        f"    command: sh -c '{HTTPD.format('web')}'\n"
        "  client:\n    image: busybox\n    depends_on: [web]\n"
        "    command: sh -c 'until wget -qO- http://web/; do sleep 0.5; done; "
        "exec sleep 600'\n")
    env = dict(os.environ, DOCKER_HOST=service.url, DOCKER_CONFIG=str(service.config),
               COMPOSE_PROJECT_NAME="hvnet")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([compose, *args], cwd=project, env=env, capture_output=True,
                              text=True, timeout=240)

    try:
        p = run("up", "-d")
        assert p.returncode == 0, p.stderr + service.tail()
        names = service.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        assert "hvnet_default" in names
        deadline = time.monotonic() + 90
        while "hi-from-web" not in (p := run("logs", "client")).stdout and \
                time.monotonic() < deadline:
            time.sleep(0.5)
        assert "hi-from-web" in p.stdout, p.stdout + p.stderr
        doc = _json(service.docker("inspect", "hvnet_client_1", check=True).stdout)[0]
        assert list(doc["NetworkSettings"]["Networks"]) == ["hvnet_default"]
        assert "client" in doc["NetworkSettings"]["Networks"]["hvnet_default"]["Aliases"]
    finally:
        p = run("down")
    assert p.returncode == 0, p.stderr
    assert "hvnet_default" not in service.docker("network", "ls").stdout
