"""Reference parsing follows Docker's distribution/reference rules."""

import pytest

from hv.errors import UsageError
from hv.images.reference import Reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "text, registry, repository, tag, digest, canonical, familiar",
    [
        ("ubuntu", "docker.io", "library/ubuntu", "latest", None,
         "docker.io/library/ubuntu:latest", "ubuntu:latest"),
        ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None,
         "docker.io/library/ubuntu:22.04", "ubuntu:22.04"),
        ("user/app", "docker.io", "user/app", "latest", None,
         "docker.io/user/app:latest", "user/app:latest"),
        ("docker.io/library/busybox:1", "docker.io", "library/busybox", "1", None,
         "docker.io/library/busybox:1", "busybox:1"),
        ("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest", None,
         "docker.io/library/busybox:latest", "busybox:latest"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None,
         "127.0.0.1:5000/x:latest", "127.0.0.1:5000/x:latest"),
        ("localhost/a/b:t", "localhost", "a/b", "t", None,
         "localhost/a/b:t", "localhost/a/b:t"),
        ("ghcr.io/o/r@" + D, "ghcr.io", "o/r", None, D, "ghcr.io/o/r@" + D, "ghcr.io/o/r@" + D),
        ("busybox@" + D, "docker.io", "library/busybox", None, D,
         "docker.io/library/busybox@" + D, "busybox@" + D),
        ("busybox:1.36@" + D, "docker.io", "library/busybox", "1.36", D,
         "docker.io/library/busybox:1.36@" + D, "busybox:1.36@" + D),
        ("[::1]:5000/x:y", "[::1]:5000", "x", "y", None, "[::1]:5000/x:y", "[::1]:5000/x:y"),
        ("a_b-c__d/f", "docker.io", "a_b-c__d/f", "latest", None,
         "docker.io/a_b-c__d/f:latest", "a_b-c__d/f:latest"),
    ],
)
def test_parse(text, registry, repository, tag, digest, canonical, familiar):
    ref = Reference.parse(text)
    got = (ref.registry, ref.repository, ref.tag, ref.digest)
    assert got == (registry, repository, tag, digest)
    assert str(ref) == canonical
    assert ref.familiar() == familiar
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize("text, name", [
    ("ubuntu", "ubuntu"), ("user/app:1", "user/app"), ("127.0.0.1:5000/x", "127.0.0.1:5000/x"),
    ("docker.io/library/x", "x"),
])
def test_familiar_name(text, name):
    assert Reference.parse(text).familiar_name == name


@pytest.mark.parametrize("text", [
    "", " ubuntu", "Ubuntu", "a_b.c/x", "ubuntu:", "ubuntu:-tag", "a//b", "-a", "a-", "a:b:c",
    "busybox@sha256:abc", "busybox@md5:" + "0" * 32, "x" * 256, "a/b/" + "c" * 253,
    "ab" * 32, "name:" + "t" * 129, "a..b", "ubuntu@", "host:port/x",
])
def test_invalid(text):
    with pytest.raises(UsageError) as err:
        Reference.parse(text)
    assert err.value.message.startswith("invalid reference format")
    assert err.value.exit_code == 125


def test_uppercase_message():
    with pytest.raises(UsageError, match="repository name must be lowercase"):
        Reference.parse("Busybox")


def test_uppercase_registry_allowed():
    assert Reference.parse("MyHost.example:5000/x").registry == "MyHost.example:5000"
