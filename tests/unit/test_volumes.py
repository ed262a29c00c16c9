"""Volumes without a VM: -v/--mount parsing, the volume store, the seed and domain XML."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hv import mounts, volumes
from hv.config import Config
from hv.errors import Conflict, UsageError
from hv.guest.seed import GuestMount, GuestSpec, seed_files
from hv.mounts import MountSpec, parse_all, parse_mount, parse_volume
from hv.runtime.domain import DomainSpec, Filesystem, MemoryBacking

GOLDEN = Path(__file__).parent / "golden" / "container-domain-volumes.xml"


@pytest.fixture
def root(tmp_path):
    return tmp_path / "state"


def _store(root: Path, **env: str) -> volumes.Volumes:
    config = Config.from_environ({"HV_ROOT": str(root), "HOME": str(root), **env})
    return volumes.Volumes(config, embedded=True, uri="qemu:///embed")


@pytest.fixture
def vs(root):
    return _store(root)


# --- -v ------------------------------------------------------------------------------------


def test_volume_forms():
    assert parse_volume("/h:/c") == MountSpec("bind", "/h", "/c", create_source=True)
    assert parse_volume("/h/:/c/:ro").readonly
    assert parse_volume("/h:/c:rw,z").readonly is False
    assert parse_volume("data:/c") == MountSpec("volume", "data", "/c")
    assert parse_volume("data:/c:ro,nocopy") == MountSpec("volume", "data", "/c", True, True)
    assert parse_volume("/c") == MountSpec("volume", "", "/c")
    assert parse_volume("/c//x/../y").target == "/c/y"


def test_relative_sources_follow_current_docker():
    assert parse_volume("./rel:/x", cwd="/work") == MountSpec("bind", "/work/rel", "/x",
                                                              create_source=True)
    assert parse_volume(".:/x", cwd="/work").source == "/work"
    assert parse_volume("rel:/x", cwd="/work") == MountSpec("volume", "rel", "/x")
    with pytest.raises(UsageError, match="includes invalid characters for a local volume"):
        parse_volume("../rel:/x", cwd="/work")


@pytest.mark.parametrize("raw, message", [
    ("/h:rel", "invalid mount path: 'rel' mount path must be absolute"),
    ("vol:rel", 'for type "volume": invalid mount path'),
    ("/h:/c:xyz", "invalid mode: xyz"),
    ("/h:/c:ro,rw", "invalid mode: ro,rw"),
    ("/h:/c:nocopy", "invalid mode: nocopy"),
    ("/h:/c:ro:x", "invalid volume specification: '/h:/c:ro:x'"),
    ("/c:ro", "invalid volume specification"),
    ("", "invalid volume specification"),
    ("/h:/", "destination can't be '/'"),
    ("bad$name:/c", '"bad$name" includes invalid characters'),
    ("a:/c", "includes invalid characters"),  # Docker wants two characters at least
])
def test_volume_errors(raw, message):
    with pytest.raises(UsageError) as e:
        parse_volume(raw)
    assert message in e.value.message
    assert e.value.hint


def test_duplicate_target():
    with pytest.raises(UsageError, match="Duplicate mount point: /c"):
        parse_all(["/a:/c"], ["type=volume,target=/c/"])


# --- --mount -------------------------------------------------------------------------------


def test_mount_forms():
    assert parse_mount("type=bind,source=/h,target=/c,readonly") == MountSpec(
        "bind", "/h", "/c", True)
    assert parse_mount("type=bind,src=rel,dst=/c", cwd="/w").source == "/w/rel"
    assert parse_mount("type=volume,source=v1,destination=/c,ro=false,volume-nocopy") == \
        MountSpec("volume", "v1", "/c", False, True)
    assert parse_mount("target=/c") == MountSpec("volume", "", "/c")
    assert parse_mount('"type=bind","source=/a,b",target=/c').source == "/a,b"


@pytest.mark.parametrize("raw, message", [
    ("type=bind,source=/h", "target is required"),
    ("type=bind,target=/c", "field Source must not be empty"),
    ("type=bind,source=/h,target=c", "mount path must be absolute"),
    ("type=volume,source=v1,target=/c,foo=bar", "unexpected key 'foo' in 'foo=bar'"),
    ("type=tmpfs,target=/c", "not supported"),
    ("type=npipe,target=/c", "unknown mount type"),
    ("type=volume,source=b@d,target=/c", "includes invalid characters"),
    ("type=bind,source=/h,target=/c,readonly=maybe", "invalid value for readonly"),
])
def test_mount_errors(raw, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        parse_mount(raw)


def test_mount_bind_source_must_exist(tmp_path):
    missing = tmp_path / "x"
    with pytest.raises(UsageError) as e:
        volumes.check_sources([parse_mount(f"type=bind,source={missing},target=/c")])
    assert e.value.message == (f'invalid mount config for type "bind": bind source path does '
                               f"not exist: {missing}")
    volumes.check_sources([parse_volume(f"{missing}:/c")])  # -v creates it later
    assert not missing.exists()


# --- the store -----------------------------------------------------------------------------


def _use(vs, cid: str, *names: str, anonymous: bool = False) -> None:
    paths = vs.paths
    paths.container_dir(cid).mkdir(parents=True, exist_ok=True)
    paths.container_mounts(cid).write_text(json.dumps([
        {"type": "volume", "name": n, "anonymous": anonymous} for n in names]))


def test_create_is_idempotent_and_versioned(root, vs):
    v = vs.create("data", {"team": "a"})
    again = vs.create("data")
    assert again.created == v.created and again.labels == {"team": "a"}
    meta = json.loads((root / "volumes/data/volume.json").read_text())
    assert meta["version"] == volumes.SCHEMA_VERSION and meta["anonymous"] is False
    assert (root / "volumes/data/_data").is_dir()
    anon = vs.create()
    assert len(anon.name) == 64 and not anon.anonymous  # `volume create` without a name
    assert [x.name for x in vs.list_volumes()] == sorted(["data", anon.name])
    assert not [p for p in (root / "volumes").iterdir() if p.name.startswith(".new-")]
    doc = vs.get("data").inspect()
    assert doc["Driver"] == "local" and doc["Scope"] == "local"
    assert doc["Mountpoint"] == str(root / "volumes/data/_data")
    with pytest.raises(UsageError):
        vs.create("-bad")


def test_unreadable_record_is_still_listed(root, vs):
    vs.create("ok1")
    (root / "volumes/broken").mkdir()
    vols = {v.name: v for v in vs.list_volumes()}
    assert vols["broken"].broken and not vols["ok1"].broken


def test_rm_refuses_in_use_even_with_force(root, vs):
    vs.create("data")
    _use(vs, "c1", "data")
    for force in (False, True):
        with pytest.raises(Conflict, match=r"remove data: volume is in use - \[c1\]"):
            vs.remove("data", force=force)
    assert vs.get("data")
    with pytest.raises(volumes.VolumeNotFound, match="No such volume: nosuch"):
        vs.remove("nosuch")
    assert vs.remove("nosuch", force=True) == "nosuch"


def test_prune_anonymous_unless_all(root, vs):
    vs.create("named")
    anon_used, anon_free = vs.create(anonymous=True), vs.create(anonymous=True)
    _use(vs, "c1", anon_used.name, anonymous=True)
    (anon_free.mountpoint / "f").write_bytes(b"x" * 10000)
    removed, freed = vs.prune()
    assert removed == [anon_free.name] and freed >= 10000
    removed, _ = vs.prune(all=True)
    assert removed == ["named"]
    assert [v.name for v in vs.list_volumes()] == [anon_used.name]


def test_remove_anonymous_keeps_named_and_used(root, vs):
    vs.create("named")
    a, b = vs.create(anonymous=True), vs.create(anonymous=True)
    _use(vs, "other", b.name, anonymous=True)
    assert vs.remove_anonymous(["named", a.name, b.name]) == [a.name]


def test_attach_and_undo(root, tmp_path, vs):
    src = tmp_path / "host" / "deep"
    f = tmp_path / "file.txt"
    f.write_text("x")
    specs = parse_all([f"{src}:/a", "named:/b:ro", "/c", f"{f}:/f"], [])
    how = volumes.Transport("9p", "test")

    vs.paths.container_dir("cid1").mkdir(parents=True)
    entries, made = vs.attach("cid1", specs, how)
    assert src.is_dir()
    assert [e["tag"] for e in entries] == ["hv0", "hv1", "hv2", "hv3"]
    assert entries[1]["source"] == str(root / "volumes/named/_data") and entries[1]["readonly"]
    assert entries[2]["anonymous"] and len(entries[2]["name"]) == 64
    assert entries[3]["file"] and volumes.share_source(entries[3]) == tmp_path
    assert vs.users() == {"named": ["cid1"], entries[2]["name"]: ["cid1"]}
    # a failed create: its mounts.json goes first, then what it made
    vs.paths.container_mounts("cid1").unlink()
    made.undo()
    assert not (tmp_path / "host").exists() and vs.list_volumes() == []


def test_attach_refuses_missing_mount_source_and_leaves_nothing(root, tmp_path, vs):

    vs.paths.container_dir("cid2").mkdir(parents=True)
    specs = parse_all(["keep:/k"], [f"type=bind,source={tmp_path}/nope,target=/x"])
    with pytest.raises(UsageError, match="bind source path does not exist"):
        vs.attach("cid2", specs, volumes.Transport("9p", "test"))
    assert vs.list_volumes() == [] and not vs.paths.container_mounts("cid2").exists()


def test_image_volumes_become_anonymous():
    specs = volumes.with_image_volumes([MountSpec("volume", "v1", "/data")],
                                       {"Volumes": {"/data": {}, "/var/lib/x": {}}})
    assert specs[1] == MountSpec("volume", "", "/var/lib/x")
    assert len(specs) == 2


# --- transport -------------------------------------------------------------------------------


def test_transport_forced_and_cached(root, vs):
    assert _store(root, HV_VOLUME_DRIVER="9p").transport().name == "9p"
    with pytest.raises(UsageError, match="not virtiofs or 9p"):
        _store(root, HV_VOLUME_DRIVER="nfs").transport()
    root.mkdir(parents=True, exist_ok=True)
    (root / "volume-transport.json").write_text(json.dumps({"name": "9p", "reason": "cached"}))
    assert vs.transport() == volumes.Transport("9p", "cached", "")


def test_virtiofs_cache_knob(root, vs):
    assert vs.virtiofs_cache() == "none"
    assert _store(root, HV_VIRTIOFS_CACHE="auto").virtiofs_cache() == ""
    with pytest.raises(UsageError):
        _store(root, HV_VIRTIOFS_CACHE="bad").virtiofs_cache()


# --- seed and domain -------------------------------------------------------------------------


def test_seed_mounts_file():
    spec = GuestSpec(container_id="c", argv=["true"], env=[], mounts=[
        GuestMount("hv0", "virtiofs", "", "/data", copy=True),
        GuestMount("hv1", "9p", "file.txt", "/etc/x", readonly=True)])
    assert seed_files(spec)["mounts"] == (b"hv0\0virtiofs\0\0/data\0" b"0\x001\0"
                                          b"hv1\x009p\0file.txt\0/etc/x\x001\x000\0")
    assert "mounts" not in seed_files(GuestSpec(container_id="c", argv=["true"], env=[]))
    spec.mounts = [GuestMount("hv0", "9p", "a\nb", "/x")]
    with pytest.raises(ValueError, match="newline"):
        seed_files(spec)


def _domain() -> DomainSpec:
    return DomainSpec(
        name="web", uuid="0123abcd-0123-4567-89ab-0123456789ab", kernel=Path("/g/vmlinuz"),
        initrd=Path("/g/initrd.img"), cmdline="console=ttyS0", memory_mib=256,
        filesystems=[Filesystem(Path("/v/data/_data"), "hv0", "virtiofs",
                                binary=Path("/usr/lib/qemu/virtiofsd"), cache="none"),
                     Filesystem(Path("/srv/site"), "hv1", "virtiofs", readonly=True),
                     Filesystem(Path("/srv/conf"), "hv2", "9p", readonly=True)],
        memory_backing=MemoryBacking(), qemu_args=[])


def test_domain_golden():
    xml = _domain().to_xml()
    if os.environ.get("HV_UPDATE_GOLDEN"):
        GOLDEN.write_text(xml)
    assert xml == GOLDEN.read_text()


def test_domain_filesystems():
    root = ET.fromstring(_domain().to_xml())
    assert root.find("memoryBacking/source").get("type") == "memfd"
    assert root.find("memoryBacking/access").get("mode") == "shared"
    fss = root.findall("devices/filesystem")
    assert [f.find("driver").get("type") for f in fss] == ["virtiofs", "virtiofs", "path"]
    assert all(f.get("accessmode") == "passthrough" for f in fss)
    assert fss[0].find("binary/cache").get("mode") == "none"
    assert fss[1].find("readonly") is None  # libvirt 9.0: virtiofs has no readonly
    assert fss[2].find("readonly") is not None


def test_domain_devices_only_share_memory_for_virtiofs(vs):
    e = {"type": "bind", "source": "/h/f.txt", "target": "/f", "readonly": False,
         "transport": "9p", "tag": "hv0", "file": True}
    fss, backing = vs.domain_devices([e])
    assert backing is None and fss[0].source == Path("/h") and fss[0].driver == "9p"
    fss, backing = vs.domain_devices([dict(e, transport="virtiofs")])
    assert backing is not None
    gm = volumes.guest_mounts([dict(e, copy=True)], first_boot=True)
    assert gm == [GuestMount("hv0", "9p", "f.txt", "/f", False, True)]
    assert not volumes.guest_mounts([dict(e, copy=True)], first_boot=False)[0].copy


def test_inspect_mounts():
    m = volumes.inspect_mounts([{"type": "volume", "name": "v", "source": "/s", "target": "/t",
                                 "readonly": True, "transport": "9p"}])
    assert m[0]["Name"] == "v" and m[0]["RW"] is False and m[0]["Destination"] == "/t"


def test_mounts_module_names_docker_regex():
    assert mounts.VOLUME_NAME.pattern == r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$"
