"""Registry client helpers: which hosts get plain HTTP, where credentials come from."""

import base64
import json

import pytest

from hv.config import Config
from hv.images import registry


@pytest.mark.parametrize("host, insecure", [
    ("127.0.0.1:5000", True), ("127.1.2.3", True), ("localhost:5000", True), ("[::1]:5000", True),
    ("docker.io", False), ("ghcr.io", False), ("10.0.0.5:5000", False), ("lab:5000", True),
    ("reg.example", True),
])
def test_insecure_registries(host, insecure):
    listed = Config.from_environ({"HV_INSECURE_REGISTRIES": "lab:5000, reg.example"})
    assert registry.is_insecure(host, listed.insecure_registries) is insecure


def test_docker_hub_api_host():
    assert registry.registry_host("docker.io") == "registry-1.docker.io"
    assert registry.RegistryClient("docker.io", "library/x").base == (
        "https://registry-1.docker.io/v2/library/x"
    )
    assert registry.RegistryClient("127.0.0.1:5000", "x").base == "http://127.0.0.1:5000/v2/x"


def test_credentials_from_docker_config(tmp_path):
    auth = base64.b64encode(b"bob:pa:ss").decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": auth}, "ghcr.io": {"auth": auth},
    }}))
    where = Config.from_environ({"DOCKER_CONFIG": str(tmp_path)}).docker_config
    assert registry._credentials("docker.io", where) == ("bob", "pa:ss")
    assert registry._credentials("ghcr.io", where) == ("bob", "pa:ss")
    assert registry._credentials("quay.io", where) is None


def test_challenge_parsing():
    scheme, params = registry._parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                      "scope": "repository:library/busybox:pull"}
