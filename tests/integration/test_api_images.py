"""Images through the Engine API, driven by real clients (issue 13): `docker save`/`load`/
`history` (CLI 28.2) and docker-py 7.1's `image.save()`, `images.load()`, `image.history()`;
`hv history` in the CLI. One VM boots (the loaded image runs).

The service fixture is test_api's (one service for this module). busybox is put back (from
the test images) if a test leaves it removed.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time

import pytest

from tests.integration import test_api

# test_api's fixtures: one service for this module, its log in a failing test's report
service = test_api.service
_service_log_on_failure = test_api._service_log_on_failure

pytestmark = pytest.mark.vm


def _client(service):
    import docker

    return docker.DockerClient(base_url=service.url, version="1.50", timeout=240)


def _lines(body: bytes) -> list[dict]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


@pytest.fixture
def busybox_back(hv, busybox, test_images_dir):
    """busybox:latest is there after the test, whatever the test did to it."""
    yield busybox
    if hv("images", "-q", "busybox:latest").stdout.strip() == "":
        hv("load", "-i", str(test_images_dir / "busybox.oci.tar"), check=True)


def test_docker_save_rmi_load_run(service, busybox_back, tmp_path):
    t0 = time.time()
    image_id = service.docker("image", "inspect", "-f", "{{.Id}}", "busybox",
                              check=True).stdout.strip()
    archive = tmp_path / "f.tar"
    service.docker("save", "busybox", "-o", str(archive), check=True)
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())
        assert manifest[0]["RepoTags"] == ["busybox:latest"]
        config = json.loads(tar.extractfile(manifest[0]["Config"]).read())
        assert len(config["rootfs"]["diff_ids"]) == len(manifest[0]["Layers"])
    p = service.docker("rmi", "busybox")
    if p.returncode != 0 and "must force" in p.stderr:  # a stopped container of the session
        p = service.docker("rmi", "-f", "busybox")
    assert p.returncode == 0, p.stderr
    assert service.docker("images", "-q", "busybox", check=True).stdout.strip() == ""
    p = service.docker("load", "-i", str(archive), check=True)
    assert p.stdout == "Loaded image: busybox:latest\n", p.stdout
    assert service.docker("image", "inspect", "-f", "{{.Id}}", "busybox",
                          check=True).stdout.strip() == image_id
    p = service.docker("run", "--rm", "busybox", "true")
    assert p.returncode == 0, p.stderr + service.tail()
    # the journal has the save and the load (docker events reads it)
    p = service.docker("events", "--since", f"{t0:.3f}", "--until", f"{time.time():.3f}",
                       "--filter", "type=image",
                       "--format", "{{.Action}} {{.Actor.ID}}", check=True)
    actions = p.stdout.splitlines()
    assert f"save {image_id}" in actions and f"load {image_id}" in actions, actions


def test_docker_py_save_chunks_are_a_docker_archive(service, busybox, hv):
    client = _client(service)
    try:
        image = client.images.get("busybox")
        chunks = list(image.save(chunk_size=64 * 1024))
        assert len(chunks) > 1  # streamed, not one piece
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
            names = tar.getnames()
            manifest = json.loads(tar.extractfile("manifest.json").read())
            assert manifest[0]["Config"] == image.id.removeprefix("sha256:") + ".json"
            assert all(layer in names for layer in manifest[0]["Layers"])
            repositories = json.loads(tar.extractfile("repositories").read())
            assert "busybox" in repositories
        # several at once: GET /images/get?names=…&names=…
        image.tag("hv-api-save-two", "v1")
        try:
            status, body, resp = service.request(
                "GET", "/v1.50/images/get?names=busybox&names=hv-api-save-two:v1")
            assert status == 200 and resp.getheader("Content-Type") == "application/x-tar"
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                manifest = json.loads(tar.extractfile("manifest.json").read())
            assert [m["RepoTags"] for m in manifest] == [["busybox:latest"],
                                                         ["hv-api-save-two:v1"]]
        finally:
            hv("rmi", "hv-api-save-two:v1", check=True)
        # docker-py's load of what it saved
        loaded = client.images.load(b"".join(chunks))
        assert [i.id for i in loaded] == [image.id]
    finally:
        client.close()


def test_history_docker_cli_docker_py_and_hv(service, busybox, hv):
    config = json.loads(service.docker("image", "inspect", "busybox", check=True).stdout)[0]
    image_id = config["Id"]
    client = _client(service)
    try:
        rows = client.images.get("busybox").history()
    finally:
        client.close()
    status, body, _ = service.request("GET", "/v1.50/images/busybox/history")
    assert status == 200 and json.loads(body) == rows
    assert rows[0]["Id"] == image_id and rows[0]["Tags"] == ["busybox:latest"]
    assert all(r["Id"] == "<missing>" and r["Tags"] is None for r in rows[1:])
    assert set(rows[0]) == {"Id", "Created", "CreatedBy", "Tags", "Size", "Comment"}
    # the test image: `umoci repack` made its one layer, `umoci config` an empty entry on top
    assert [r["CreatedBy"] for r in rows] == ["umoci config", "umoci repack"]
    assert rows[0]["Size"] == 0 and rows[1]["Size"] > config["Size"] // 2
    assert all(isinstance(r["Created"], int) and r["Created"] > 0 for r in rows)

    p = service.docker("history", "busybox", check=True)
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert lines[1].startswith(image_id.removeprefix("sha256:")[:12] + " ")
    assert lines[2].startswith("<missing> ") and " umoci repack " in lines[2]
    assert " 0B " in lines[1]
    mine = hv("history", "busybox", check=True).stdout.splitlines()
    assert mine == lines, (mine, lines)  # the same table (the same minute, one hopes)

    for args in (["-q"], ["--no-trunc", "-q"], ["--no-trunc", "-H=false"],
                 ["--format", "{{.ID}}|{{.CreatedBy}}|{{.Size}}"], ["--format", "json"]):
        want = service.docker("history", *args, "busybox", check=True).stdout
        got = hv("history", *args, "busybox", check=True).stdout
        if args[-1] == "json":  # CreatedSince may tick between the two
            want, got = ([{k: v for k, v in json.loads(x).items() if k != "CreatedSince"}
                          for x in s.splitlines()] for s in (want, got))
        assert got == want, args
    assert hv("history", "-q", "busybox", check=True).stdout == \
        f"{image_id.removeprefix('sha256:')[:12]}\n<missing>\n"
    full = hv("image", "history", "--no-trunc", "-H=false", "busybox", check=True).stdout
    assert image_id in full and f" {rows[1]['Size']} " in full and "CREATED AT" in full
    p = hv("history", "no-such-image-here")
    assert p.returncode == 1 and "No such image" in p.stderr and "hint:" in p.stderr


def test_bad_input_is_answered_in_dockers_shapes(service, busybox, tmp_path):
    # a body that is not a tarball: dockerd's 200 and an errorDetail line
    status, body, _ = service.request("POST", "/v1.50/images/load?quiet=1",
                                      raw=b"this is not a tarball\n" * 100)
    assert status == 200, body
    (line,) = _lines(body)
    assert set(line) == {"errorDetail", "error"} and "not a tarball" in line["error"]
    assert line["errorDetail"]["message"] == line["error"]
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(4096))
    p = service.docker("load", "-i", str(garbage))
    assert p.returncode == 1 and "not a tarball" in p.stderr, p.stderr
    import docker

    client = _client(service)
    try:
        with pytest.raises(docker.errors.ImageLoadError, match="neither manifest.json"):
            client.images.load(b"\0" * 10240)  # an empty tar
        with pytest.raises(docker.errors.ImageLoadError, match="empty"):
            client.images.load(b"")
    finally:
        client.close()
    # a missing image: 404 with Docker's {"message": …}, before any byte of a tarball
    for path in ("/v1.50/images/no-such-image-here/get",
                 "/v1.50/images/get?names=busybox&names=no-such-image-here",
                 "/v1.50/images/no-such-image-here/history"):
        status, body, resp = service.request("GET", path)
        assert status == 404 and resp.getheader("Content-Type") == "application/json", path
        assert json.loads(body) == {"message": "No such image: no-such-image-here"}, path
    status, body, _ = service.request("GET", "/v1.50/images/get")
    assert status == 400 and "names" in json.loads(body)["message"]
    p = service.docker("save", "no-such-image-here", "-o", str(tmp_path / "n.tar"))
    assert p.returncode == 1 and "No such image: no-such-image-here" in p.stderr
    assert not (tmp_path / "n.tar").exists()
    # the service still serves
    assert service.request("GET", "/_ping")[0] == 200
