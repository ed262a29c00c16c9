"""The image subsystem against a real registry (docker-registry) through the real CLI.

No VM is booted here. Every test gets its own HV_ROOT; the registry and the pushed test
images are shared by the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hv.config import Config
from hv.errors import Conflict, DigestMismatch, HvError, ImageNotFound, RegistryError
from tests.fixtures import images as fx
from tests.fixtures.registry import Registry, free_port

REPO = Path(__file__).resolve().parents[2]


def _paths():
    """The state root's files (HV_ROOT as the `root` fixture set it)."""
    return Config.from_environ().paths


@pytest.fixture(autouse=True)
def root(tmp_path, monkeypatch) -> Path:
    """An isolated state root per test."""
    state = tmp_path / "hv"
    monkeypatch.setenv("HV_ROOT", str(state))
    monkeypatch.delenv("HV_INSECURE_REGISTRIES", raising=False)
    return state


def hv(*args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "cli", *args], input=input,
                          capture_output=True, timeout=timeout, env=env, cwd=REPO)
    proc.out = proc.stdout.decode(errors="replace")
    proc.err = proc.stderr.decode(errors="replace")
    return proc


def ok(*args: str, **kw) -> str:
    proc = hv(*args, **kw)
    assert proc.returncode == 0, f"hv {' '.join(args)}: {proc.returncode}\n{proc.out}{proc.err}"
    return proc.out


def store():
    from hv.engine import Engine

    return Engine(Config.from_environ()).images


def leftovers(state: Path) -> dict:
    """What an aborted command must not leave: temp files, blobs, index entries."""
    tmp = sorted(os.listdir(state / "tmp")) if (state / "tmp").exists() else []
    blob_dir = state / "images/blobs/sha256"
    blob_list = sorted(os.listdir(blob_dir)) if blob_dir.exists() else []
    index = state / "images/index.json"
    images = json.loads(index.read_text())["images"] if index.exists() else {}
    return {"tmp": tmp, "blobs": blob_list, "images": images}


NOTHING = {"tmp": [], "blobs": [], "images": {}}


# --- the shared registry ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    work = tmp_path_factory.mktemp("images")
    layout = work / "layout"
    fx.busybox_image(layout, "latest", env=["PATH=/bin", "HELLO=1"], workdir="/tmp",
                     entrypoint=["/bin/sh", "-c"], cmd=["echo hi"])
    fx.busybox_image(layout, "v2", extra=[
        [fx.directory("opt"), fx.directory("opt/d"), fx.file("opt/d/lower", "x"),
         fx.file("etc/motd", "hello")],
        [fx.whiteout("etc/group"), fx.opaque("opt/d"), fx.file("opt/d/upper", "y")],
    ])
    fx.busybox_image(layout, "arm", architecture="arm64", extra=[[fx.file("arch", "arm64")]])
    fx.busybox_image(layout, "amd", extra=[[fx.file("arch", "amd64")]])
    index_digest = fx.add_index(layout, "multi", {"arm": "linux/arm64", "amd": "linux/amd64"})
    with Registry(work / "registry") as registry:
        registry.push(layout, "latest", "busybox:latest")
        registry.push(layout, "v2", "busybox:v2")
        registry.push(layout, "v2", "dockerfmt:latest", fmt="v2s2")
        registry.push(layout, "multi", "multi:latest", all_images=True)
        registry.push(layout, "latest", "corrupt:latest")
        registry.layout = layout
        registry.index_digest = index_digest
        yield registry


def busybox(reg, tag="latest") -> str:
    return f"{reg.host}/busybox:{tag}"


# --- pull --------------------------------------------------------------------------------------


def test_pull_by_tag_prints_docker_lines_and_lists(reg, root):
    out = ok("pull", f"{reg.host}/busybox")
    lines = out.splitlines()
    assert lines[:2] == ["Using default tag: latest", "latest: Pulling from busybox"]
    assert re.search(r"^[0-9a-f]{12}: Pull complete$", out, re.M)
    assert re.search(r"^Digest: sha256:[0-9a-f]{64}$", out, re.M)
    assert f"Status: Downloaded newer image for {reg.host}/busybox:latest" in lines
    assert lines[-1] == f"{reg.host}/busybox:latest"

    image = store().get(busybox(reg))
    assert image.run_config["Entrypoint"] == ["/bin/sh", "-c"]
    assert image.run_config["Env"] == ["PATH=/bin", "HELLO=1"]
    assert image.run_config["WorkingDir"] == "/tmp"
    assert _paths().base_disk(image.id).exists(), "the base disk is built at the end of pull"
    assert 1_900_000 < image.size < 2_200_000  # busybox binary: the uncompressed rootfs

    again = ok("pull", busybox(reg))
    assert f"Status: Image is up to date for {reg.host}/busybox:latest" in again
    assert "Already exists" in again

    table = ok("images").splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert table[1].split()[:3] == [f"{reg.host}/busybox", "latest", image.short_id]
    assert ok("images", "-q") == image.short_id + "\n"
    assert ok("images", "-q", "--no-trunc") == image.id + "\n"
    assert image.id in ok("images", "--no-trunc").splitlines()[1].split()
    fmt = ok("images", "--format", "{{.Repository}}:{{.Tag}}\\t{{.ID}}")
    assert fmt == f"{reg.host}/busybox:latest\t{image.short_id}\n"
    row = json.loads(ok("images", "--format", "json"))
    assert row["ID"] == image.short_id and row["Size"].endswith("MB")
    assert ok("images", "-q", f"{reg.host}/busybox:latest") == image.short_id + "\n"
    assert ok("images", "-q", f"{reg.host}/busybox:nope") == ""
    assert ok("pull", "-q", busybox(reg)) == f"{reg.host}/busybox:latest\n"

    _paths().base_disk(image.id).unlink()  # built again, lazily, when run needs it
    assert store().base_disk(image) == _paths().base_disk(image.id)
    assert _paths().base_disk(image.id).stat().st_size >= 8 << 30


def test_pull_by_digest(reg):
    digest = fx.manifest_of(reg.layout, "latest")["digest"]
    out = ok("pull", f"{reg.host}/busybox@{digest}")
    assert out.splitlines()[-1] == f"{reg.host}/busybox@{digest}"
    image = store().get(f"{reg.host}/busybox@{digest}")
    assert image.repo_tags == []
    assert image.repo_digests == [f"{reg.host}/busybox@{digest}"]
    assert ok("images").splitlines()[1].split()[:2] == [f"{reg.host}/busybox", "<none>"]
    # tag + digest: the digest wins, and must match
    ok("pull", f"{reg.host}/busybox:latest@{digest}")


def test_manifest_list_picks_linux_amd64(reg, root):
    out = ok("pull", f"{reg.host}/multi")
    assert f"Digest: {reg.index_digest}" in out
    image = store().get(f"{reg.host}/multi")
    assert image.config["architecture"] == "amd64"
    assert image.id == fx.config_digest(reg.layout, "amd")
    assert image.repo_digests == [f"{reg.host}/multi@{reg.index_digest}"]
    arch = subprocess.run(["debugfs", "-R", "cat /arch", str(_paths().base_disk(image.id))],
                          capture_output=True, text=True).stdout
    assert arch == "amd64"


def test_shared_layers_stored_once_and_whiteouts_applied(reg, root):
    ok("pull", busybox(reg))
    out = ok("pull", busybox(reg, "v2"))
    base = fx.manifest_of(reg.layout, "latest")
    assert re.search(r"^[0-9a-f]{12}: Already exists$", out, re.M)
    docker = ok("pull", f"{reg.host}/dockerfmt")  # same content, Docker v2s2 manifest
    assert "Downloaded newer image" in docker
    images = store().list()
    assert len({im.id for im in images}) == 2  # dockerfmt is the same config as v2
    wanted = set()
    for im in images:
        wanted |= {im.id, im.manifest_digest, *im.layers}
    blobs = {"sha256:" + n for n in os.listdir(_paths().blobs_dir())}
    assert blobs == wanted | {d.partition("@")[2] for im in images for d in im.repo_digests}
    assert base["digest"]
    disk = str(_paths().base_disk(store().get(busybox(reg, "v2")).id))
    listing = subprocess.run(["debugfs", "-R", "ls -p /etc", disk], capture_output=True,
                             text=True).stdout
    assert "motd" in listing and "passwd" in listing and "group" not in listing
    opt = subprocess.run(["debugfs", "-R", "ls -p /opt/d", disk], capture_output=True,
                         text=True).stdout
    assert "upper" in opt and "lower" not in opt


# --- tag / rmi ---------------------------------------------------------------------------------


def test_tag_and_rmi(reg, root, tmp_path):
    from hv.engine.create import _make_overlay

    ok("pull", busybox(reg))
    ok("pull", busybox(reg, "v2"))
    image = store().get(busybox(reg))
    # what a run makes
    _make_overlay(_paths(), _paths().base_disk(image.id), tmp_path / "disk.qcow2")
    assert _paths().base_overlay(_paths().base_disk(image.id)).exists()
    ok("tag", busybox(reg), "mine:1")
    ok("tag", image.short_id[:6], "other")
    assert store().get("mine:1").id == image.id == store().get("other:latest").id

    # by name: only the tag goes while other tags remain
    assert ok("rmi", "mine:1") == "Untagged: mine:1\n"
    # by id with several tags: refused without -f
    refused = hv("rmi", image.short_id)
    assert refused.returncode == 1
    assert f"unable to delete {image.short_id} (must be forced)" in refused.err
    assert "hint:" in refused.err

    v2 = store().get(busybox(reg, "v2"))
    proc = hv("rmi", "other", "nosuch", v2.id[7:12], busybox(reg))
    assert proc.returncode == 1
    assert proc.err.splitlines()[0] == "Error: No such image: nosuch"
    assert proc.out.splitlines() == [
        "Untagged: other:latest",
        f"Untagged: {reg.host}/busybox:v2",
        f"Untagged: {v2.repo_digests[0]}",
        f"Deleted: {v2.id}",
        f"Untagged: {reg.host}/busybox:latest",
        f"Untagged: {image.repo_digests[0]}",
        f"Deleted: {image.id}",
    ]
    assert ok("images", "-q") == ""
    assert leftovers(root)["blobs"] == [], "unreferenced blobs are deleted"
    assert not list(_paths().base_disks_dir().glob("*.ext4"))
    assert not list(_paths().base_disks_dir().glob("*.qcow2")), "the overlay template goes too"


def test_rmi_refused_while_a_container_uses_the_image(reg, root, monkeypatch):
    from hv.engine import Engine

    ok("pull", busybox(reg))
    image = store().get(busybox(reg))
    monkeypatch.setattr(Engine, "image_users", lambda self, image_id: ["0123456789abcdef"])
    engine = Engine(Config.from_environ())
    with pytest.raises(Conflict) as err:
        engine.remove_image(busybox(reg))
    assert err.value.message == (
        f'conflict: unable to remove repository reference "{busybox(reg)}" (must force) - '
        f"container 0123456789ab is using its referenced image {image.short_id}"
    )
    with pytest.raises(Conflict, match="must be forced"):
        engine.remove_image(image.short_id)
    assert engine.images.exists(busybox(reg))
    out = engine.remove_image(busybox(reg), force=True)
    assert out[0] == ("Untagged", f"{reg.host}/busybox:latest")
    assert out[-1] == ("Deleted", image.id)
    assert not engine.images.exists(image.id)
    assert _paths().base_disk(image.id).exists(), "a container's overlay is backed by it"


# --- load / save -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["docker", "oci"])
def test_save_rmi_load_roundtrip(reg, root, tmp_path, fmt):
    ok("pull", busybox(reg, "v2"))
    ok("tag", busybox(reg, "v2"), "saved:v2")
    image = store().get("saved:v2")
    archive = tmp_path / f"out.{fmt}.tar"
    ok("save", "--format", fmt, "-o", str(archive), "saved:v2")
    ok("rmi", "-f", image.id)
    assert ok("images", "-q") == ""
    assert ok("load", "-i", str(archive)) == "Loaded image: saved:v2\n"
    loaded = store().get("saved:v2")
    assert loaded.id == image.id
    assert loaded.layers == image.layers
    assert _paths().base_disk(loaded.id).exists()

    streamed = hv("save", "--format", fmt, "saved:v2").stdout  # stdout is a pipe here
    ok("rmi", "saved:v2")
    assert ok("load", input=streamed) == "Loaded image: saved:v2\n"
    assert store().get("saved:v2").id == image.id


def test_docker_archive_layouts(reg, root, tmp_path):
    """Load accepts Docker 25's blobs/sha256 layout and untagged images (Loaded image ID)."""
    import io
    import tarfile

    layout = reg.layout
    manifest = json.loads((layout / "blobs/sha256" / fx.manifest_of(layout, "latest")["digest"]
                           .removeprefix("sha256:")).read_bytes())
    members = {}
    config_name = "blobs/sha256/" + manifest["config"]["digest"][7:]
    members[config_name] = (layout / config_name).read_bytes()
    layer_names = []
    for layer in manifest["layers"]:
        name = "blobs/sha256/" + layer["digest"][7:]
        members[name] = (layout / name).read_bytes()
        layer_names.append(name)
    members["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": None, "Layers": layer_names}]).encode()
    archive = tmp_path / "new.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert ok("load", "-i", str(archive)) == f"Loaded image ID: {manifest['config']['digest']}\n"
    assert ok("images").splitlines()[1].split()[:2] == ["<none>", "<none>"]


def test_load_rejects_garbage(root, tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tarball at all" * 100)
    proc = hv("load", "-i", str(junk))
    assert proc.returncode == 1
    assert proc.err.startswith("Error: ") and "hint:" in proc.err
    assert leftovers(root)["blobs"] == [] and leftovers(root)["tmp"] == []


# --- faults ------------------------------------------------------------------------------------


def _assert_one_error(proc, *needles: str) -> None:
    err = proc.err.strip().splitlines()
    assert len(err) == 2, proc.err
    assert err[0].startswith("Error: ") and err[1].startswith("hint: ")
    for needle in needles:
        assert needle in err[0]
    assert "Traceback" not in proc.err


def test_unknown_image_and_tag(reg, root):
    proc = hv("pull", f"{reg.host}/nosuch")
    assert proc.returncode == 1
    _assert_one_error(proc, f"manifest for {reg.host}/nosuch:latest not found")
    proc = hv("pull", busybox(reg, "nope"))
    _assert_one_error(proc, "not found: manifest unknown")
    with pytest.raises(RegistryError) as err:
        store().pull(busybox(reg, "nope"))
    assert err.value.exit_code == 125
    assert leftovers(root) == NOTHING
    with pytest.raises(ImageNotFound, match="No such image: nothing"):
        store().get("nothing")


def test_unreachable_registry(root):
    port = free_port()
    proc = hv("pull", f"127.0.0.1:{port}/busybox")
    assert proc.returncode == 1
    _assert_one_error(proc, f"cannot reach registry 127.0.0.1:{port}", "connection refused")
    assert leftovers(root) == NOTHING


def test_digest_mismatch(reg, root):
    layer = fx.manifest_of(reg.layout, "latest")
    manifest = json.loads((reg.layout / "blobs/sha256" / layer["digest"][7:]).read_bytes())
    blob = reg.blob_path(manifest["layers"][0]["digest"])
    original = blob.read_bytes()
    try:
        blob.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        proc = hv("pull", f"{reg.host}/corrupt")
        assert proc.returncode == 1
        _assert_one_error(proc, manifest["layers"][0]["digest"], "digest check")
        with pytest.raises(DigestMismatch):
            store().pull(f"{reg.host}/corrupt")
    finally:
        blob.write_bytes(original)
    assert leftovers(root) == NOTHING


class _Fake(BaseHTTPRequestHandler):
    """A registry that fails with 500, or serves one image with a slow layer."""

    routes: dict = {}
    started = threading.Event()
    token: str | None = None  # when set, /v2/ paths need "Bearer <token>" from /token
    token_requests: list = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        if self.token and path == "/token":
            self.token_requests.append((self.path, self.headers.get("Authorization")))
            body = json.dumps({"token": self.token}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.token and self.headers.get("Authorization") != f"Bearer {self.token}":
            host = self.headers["Host"]
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://{host}/token",'
                             f'service="fake",scope="repository:slow:pull"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        route = self.routes.get(path)
        if route is None:
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        media_type, body = route
        self.send_response(200)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if media_type != "slow":
            self.wfile.write(body)
            return
        for i in range(0, len(body), 64 << 10):
            self.wfile.write(body[i:i + (64 << 10)])
            self.wfile.flush()
            self.started.set()
            time.sleep(0.05)


@pytest.fixture
def fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Fake.routes = {"/v2/": ("application/json", b"{}")}
    _Fake.started.clear()
    _Fake.token = None
    _Fake.token_requests = []
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_registry_500(fake, root):
    proc = hv("pull", f"{fake}/broken")
    assert proc.returncode == 1
    _assert_one_error(proc, f"registry {fake} answered 500 Internal Server Error")
    assert leftovers(root) == NOTHING


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _serve_image(name: str, layer: bytes, layer_type: str = "application/octet-stream") -> str:
    """Routes for a one-layer image `name:latest` on the fake registry; returns the config id."""
    digest = _digest
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [digest(layer)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": digest(layer), "size": len(layer)}],
    }).encode()
    _Fake.routes.update({
        f"/v2/{name}/manifests/latest": ("application/vnd.oci.image.manifest.v1+json", manifest),
        f"/v2/{name}/blobs/{digest(config)}": ("application/octet-stream", config),
        f"/v2/{name}/blobs/{digest(layer)}": (layer_type, layer),
    })
    return digest(config)


def test_bearer_token_auth_with_docker_config_credentials(fake, root, tmp_path, monkeypatch):
    import base64

    layer = tmp_path / "layer.tar"
    fx.write_layer(layer, [fx.file("hello", "world")])
    image_id = _serve_image("slow", layer.read_bytes())
    _Fake.token = "s3cret-token"
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    auth = base64.b64encode(b"alice:pw").decode()
    (config_dir / "config.json").write_text(json.dumps({"auths": {fake: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config_dir))
    ok("pull", f"{fake}/slow")
    assert store().get(f"{fake}/slow").id == image_id
    query, authorization = _Fake.token_requests[0]
    assert "scope=repository%3Aslow%3Apull" in query and "service=fake" in query
    assert authorization == f"Basic {auth}"


def test_ctrl_c_during_pull_leaves_nothing(fake, root):
    layer = os.urandom(8 << 20)  # 8 MiB at ~1.3 MB/s: several seconds to download
    _serve_image("slow", layer, "slow")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "cli", "pull", f"{fake}/slow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    try:
        assert _Fake.started.wait(30), "the layer download never started"
        time.sleep(0.3)
        assert any(n.startswith("blob-") for n in os.listdir(root / "tmp")), "no partial blob"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode()
    assert leftovers(root) == NOTHING


def test_usage_errors(root):
    proc = hv("pull", "UPPER:case:bad")
    assert proc.returncode != 0
    assert "invalid reference format" in proc.err
    with pytest.raises(HvError):
        store().tag("nothing", "x")


def test_load_umoci_layout_tarball_names_bare_tags_after_the_file(reg, root, tmp_path):
    """guest-images ships `busybox.oci.tar` whose ref.name is just 'latest'."""
    archive = tmp_path / "busybox.oci.tar"
    subprocess.run(["tar", "-C", str(reg.layout), "-cf", str(archive), "oci-layout",
                    "index.json", "blobs"], check=True)
    lines = ok("load", "-i", str(archive)).splitlines()
    assert "Loaded image: busybox:latest" in lines and "Loaded image: busybox:multi" in lines
    assert store().get("busybox:multi").id == fx.config_digest(reg.layout, "amd")
    assert store().get("busybox").run_config["Cmd"] == ["echo hi"]


def test_pull_progress_on_a_terminal(reg, root):
    """With a TTY the rich renderer draws per-layer bars and still ends with the ref."""
    import pty

    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="100")
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - child
        os.execvpe(sys.executable, [sys.executable, "-m", "cli", "pull", busybox(reg)], env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "Pull complete" in text and f"{reg.host}/busybox:latest" in text
