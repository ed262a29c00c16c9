"""Images meet guests: configs honoured, whiteouts applied, pull on run, rmi refusal.

Images are built with umoci and served by a real docker-registry on 127.0.0.1; every
container here is a real VM.
"""

from __future__ import annotations

import pytest

from tests.fixtures import images as fx
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.vm

SCRIPT = 'echo "[$0] [$*] $GREETING $(pwd) $(id -u)"'


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    work = tmp_path_factory.mktemp("registry")
    layout = work / "layout"
    fx.busybox_image(layout, "cfg", entrypoint=["/bin/sh", "-c", SCRIPT, "ep"],
                     cmd=["default", "args"], env=["GREETING=hi", "PATH=/bin"],
                     workdir="/work", user="nobody")
    fx.busybox_image(layout, "wh", extra=[
        [fx.directory("data"), fx.file("data/keep", "k"), fx.file("data/gone", "g"),
         fx.directory("olddir"), fx.file("olddir/a", "a"),
         fx.file("etc/motd", "layer two\n")],
        [fx.whiteout("data/gone"), fx.opaque("olddir"), fx.file("olddir/new", "n"),
         fx.file("setuid", "x", mode=0o4755, uid=1000, gid=1001)],
    ])
    with Registry(work / "reg") as reg:
        reg.push(layout, "cfg", "hvtest/cfg:latest")
        reg.push(layout, "wh", "hvtest/wh:1")
        yield reg


def test_image_config_is_honoured(hv, registry):
    ref = f"{registry.host}/hvtest/cfg"
    p = hv("run", "--rm", ref)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "[ep] [default args] hi /work 65534\n"
    assert "Unable to find image" in p.stderr  # pulled on first use

    p = hv("run", "--rm", "-e", "GREETING=bye", "-w", "/tmp", "-u", "0", ref, "x", "y z")
    assert p.stdout == "[ep] [x y z] bye /tmp 0\n", p.stderr

    p = hv("run", "--rm", "--entrypoint", "echo", ref, "only", "args")
    assert p.stdout == "only args\n", p.stderr


def test_whiteouts_and_metadata_in_the_guest(hv, registry):
    ref = f"{registry.host}/hvtest/wh:1"
    hv("pull", ref, check=True)
    p = hv("run", "--rm", ref, "sh", "-c",
           "ls /data; ls /olddir; cat /etc/motd; stat -c '%a %u %g' /setuid")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "keep\nnew\nlayer two\n4755 1000 1001\n"


def test_unknown_image_and_unreachable_registry(hv, registry):
    before = sorted((hv.root / "containers").glob("*")) if (hv.root / "containers").exists() \
        else []
    for ref, words in [(f"{registry.host}/hvtest/nope", "not found"),
                       ("127.0.0.1:9/hvtest/x", "127.0.0.1:9")]:
        p = hv("run", "--rm", ref, "true")
        assert p.returncode == 125, p.stderr
        lines = [x for x in p.stderr.splitlines() if x.startswith(("Error:", "hint:"))]
        assert len(lines) == 2 and words in lines[0], p.stderr
    after = sorted((hv.root / "containers").glob("*")) if (hv.root / "containers").exists() \
        else []
    assert before == after


def test_rmi_refuses_an_image_in_use(hv, registry):
    ref = f"{registry.host}/hvtest/cfg"
    cid = hv("run", "-d", ref, check=True).stdout.strip()
    hv("wait", cid, check=True)
    p = hv("rmi", ref)
    assert p.returncode == 1
    assert "conflict: unable to remove repository reference" in p.stderr
    assert cid[:12] in p.stderr
    assert hv("images", "-q", ref).stdout.strip()
    hv("rm", cid, check=True)
    p = hv("rmi", ref, check=True)
    assert f"Untagged: {ref}:latest" in p.stdout and "Deleted: sha256:" in p.stdout
    assert hv("images", "-q", ref).stdout.strip() == ""


def test_debian_minbase_runs_bash(hv, test_images_dir):
    if not hv("images", "-q", "debian:latest").stdout.strip():
        hv("load", "-i", str(test_images_dir / "debian.oci.tar"), check=True)
    p = hv("run", "--rm", "debian", "bash", "-c",
           'echo "$BASH_VERSION"; cat /etc/debian_version; id -un; ls /var/lib/dpkg/status')
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("5.2") and lines[1].startswith("12.")
    assert lines[2:] == ["root", "/var/lib/dpkg/status"]
