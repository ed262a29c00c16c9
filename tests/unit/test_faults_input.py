"""Issue 11, hostile or malformed input: sparse-file bombs in layers, bad --format templates
and -f filters, argv/env bytes that are not UTF-8, container names libvirt cannot hold,
memory the host does not have. No VM here (see tests/integration/test_faults_input.py)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from cli import containers_view
from cli.formatting import TemplateError, render
from hv.config import Config
from hv.errors import UsageError
from hv.guest.seed import GuestSpec, seed_files
from hv.images import disk, layers
from hv.images.layers import LayerError
from hv.spec import check_name, parse_memory, read_env_file

GiB = 1 << 30
MiB = 1 << 20

# --- 1. sparse members: crafted by hand (tarfile writes none) ------------------------------

BLOCK = 512


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % BLOCK)


def _octal(n: int, width: int = 12) -> bytes:
    return b"%0*o\0" % (width - 1, n)


def gnu_sparse(name: str, chunks: list[tuple[int, bytes]], realsize: int) -> bytes:
    """An old-GNU sparse member (type 'S', up to 4 regions in the header itself)."""
    ti = tarfile.TarInfo(name)
    stored = b"".join(d for _, d in chunks)
    ti.size, ti.mode = len(stored), 0o644
    hdr = bytearray(ti.tobuf(format=tarfile.GNU_FORMAT))
    hdr[156:157] = b"S"
    for i, (off, data) in enumerate(chunks):
        hdr[386 + 24 * i:386 + 24 * i + 24] = _octal(off) + _octal(len(data))
    hdr[483:495] = _octal(realsize)
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    return bytes(hdr) + _pad(stored)


def _pax_records(records: list[tuple[str, object]]) -> bytes:
    out = b""
    for key, value in records:
        body = f" {key}={value}\n".encode()
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n = len(str(n)) + len(body)
        out += str(n).encode() + body
    return out


def pax_member(name: str, records: list[tuple[str, object]], data: bytes) -> bytes:
    payload = _pax_records(records)  # a list: PAX 0.0 repeats its offset/numbytes keys
    x = tarfile.TarInfo("PaxHeaders/x")
    x.type, x.size = tarfile.XHDTYPE, len(payload)
    f = tarfile.TarInfo(name)
    f.size, f.mode = len(data), 0o644
    return (x.tobuf(format=tarfile.USTAR_FORMAT) + _pad(payload)
            + f.tobuf(format=tarfile.USTAR_FORMAT) + _pad(data))


def sparse_member(kind: str, name: str, chunks: list[tuple[int, bytes]], realsize: int) -> bytes:
    stored = b"".join(d for _, d in chunks)
    if kind == "gnu":
        return gnu_sparse(name, chunks, realsize)
    if kind == "pax-0.0":
        recs = [("GNU.sparse.size", realsize), ("GNU.sparse.numblocks", len(chunks))]
        for off, d in chunks:
            recs += [("GNU.sparse.offset", off), ("GNU.sparse.numbytes", len(d))]
        return pax_member(name, recs, stored)
    if kind == "pax-0.1":
        sparse_map = ",".join(f"{off},{len(d)}" for off, d in chunks)
        return pax_member(name, [("GNU.sparse.size", realsize),
                                 ("GNU.sparse.numblocks", len(chunks)),
                                 ("GNU.sparse.map", sparse_map)], stored)
    assert kind == "pax-1.0"  # the map travels at the start of the data
    sparse_map = f"{len(chunks)}\n" + "".join(f"{off}\n{len(d)}\n" for off, d in chunks)
    return pax_member("GNUSparseFile.0/" + name,
                      [("GNU.sparse.major", 1), ("GNU.sparse.minor", 0),
                       ("GNU.sparse.name", name), ("GNU.sparse.realsize", realsize)],
                      _pad(sparse_map.encode()) + stored)


def _layer(tmp_path: Path, *members: bytes, name: str = "layer.tar") -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(members) + b"\0" * (2 * BLOCK))
    return path


def _plain(name: str, data: bytes) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode = len(data), 0o644
    return ti.tobuf(format=tarfile.USTAR_FORMAT) + _pad(data)


def _rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    root.mkdir()
    return root


SPARSE_KINDS = ["gnu", "pax-0.0", "pax-0.1", "pax-1.0"]


@pytest.mark.parametrize("kind", SPARSE_KINDS)
def test_sparse_member_stays_sparse(tmp_path, kind):
    size = 256 * MiB
    chunks = [(0, b"head"), (100 * MiB, b"middle"), (size - 4, b"tail")]
    layer = _layer(tmp_path, sparse_member(kind, "big", chunks, size), _plain("after", b"ok"))
    root = _rootfs(tmp_path)
    layers.extract([layer], root)
    big = root / "big"
    st = big.stat()
    assert st.st_size == size
    assert st.st_blocks * 512 < MiB, f"{st.st_blocks * 512} bytes written for 14 of data"
    with open(big, "rb") as f:
        assert f.read(4) == b"head"
        f.seek(100 * MiB - 2)
        assert f.read(10) == b"\0\0middle\0\0"
        f.seek(size - 4)
        assert f.read() == b"tail"
    assert (root / "after").read_bytes() == b"ok"  # the stream goes on after the member


@pytest.mark.parametrize("kind", SPARSE_KINDS)
def test_sparse_bomb_is_refused_at_its_header(tmp_path, kind, monkeypatch):
    monkeypatch.delenv("HV_MAX_IMAGE_SIZE", raising=False)
    layer = _layer(tmp_path, sparse_member(kind, "bomb", [(10 * GiB - 1, b"x")], 10 * GiB))
    assert layer.stat().st_size < 10_000
    root = _rootfs(tmp_path)
    started = time.monotonic()
    with pytest.raises(LayerError) as e:
        layers.extract([layer], root)
    assert time.monotonic() - started < 5
    assert "'bomb' of 10.0GiB" in e.value.message and "4.0GiB allowed" in e.value.message
    assert "\n" not in e.value.message
    assert "HV_MAX_IMAGE_SIZE" in e.value.hint and "32 times" in e.value.hint
    assert not (root / "bomb").exists()


@pytest.mark.parametrize("chunks, size", [
    ([(10 * GiB, b"x")], MiB),  # a region past the real size
    ([(4096, b"a" * 10), (4100, b"b")], MiB),  # overlapping regions
    ([(8192, b"a"), (0, b"b")], MiB),  # out of order
])
def test_malformed_sparse_map_is_refused(tmp_path, chunks, size):
    layer = _layer(tmp_path, sparse_member("pax-0.1", "f", chunks, size))
    root = _rootfs(tmp_path)
    with pytest.raises(LayerError, match="malformed sparse map"):
        layers.extract([layer], root)
    assert not (root / "f").exists() or (root / "f").stat().st_size <= size


def test_compression_bomb_is_refused_before_it_is_written(tmp_path):
    """The same limit for plain files: 64 MiB of zeroes gzip to 64 KB."""
    fixed = Config.from_environ({"HV_MAX_IMAGE_SIZE": "16M"}).max_image_size
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        ti = tarfile.TarInfo("zeros")
        ti.size = 64 * MiB
        tar.addfile(ti, io.BytesIO(bytes(64 * MiB)))
    layer = tmp_path / "bomb.tar.gz"
    layer.write_bytes(gzip.compress(raw.getvalue(), 1))
    root = _rootfs(tmp_path)
    with pytest.raises(LayerError, match=r"more than the 16.0MiB allowed.*'zeros' of 64.0MiB"):
        layers.extract([layer], root, max_image_size=fixed)
    assert not (root / "zeros").exists()


def test_zero_runs_of_plain_files_become_holes(tmp_path):
    data = b"start" + bytes(32 * MiB) + b"end"
    layer = _layer(tmp_path, _plain("f", data))
    root = _rootfs(tmp_path)
    layers.extract([layer], root)
    st = (root / "f").stat()
    assert st.st_size == len(data) and st.st_blocks * 512 < 4 * MiB
    assert (root / "f").read_bytes() == data


def test_allowed_size_rule():
    def fixed(text: str) -> str:
        return Config.from_environ({"HV_MAX_IMAGE_SIZE": text}).max_image_size

    assert disk.allowed_size(10_000, fixed("")) == 4 * GiB  # the floor
    assert disk.allowed_size(1 * GiB) == 32 * GiB  # 32 times the compressed layers
    assert disk.allowed_size(10_000, fixed("100G")) == 100 * GiB
    with pytest.raises(UsageError, match="HV_MAX_IMAGE_SIZE"):
        disk.allowed_size(1, fixed("lots"))


def test_base_disk_build_refuses_an_image_too_large(tmp_path, monkeypatch):
    monkeypatch.delenv("HV_MAX_IMAGE_SIZE", raising=False)
    root = _rootfs(tmp_path)
    (root / "f").write_text("x")
    dest = tmp_path / "disk.ext4"
    image_id = "sha256:" + "ab" * 32
    with pytest.raises(disk.ImageTooLarge) as e:
        disk.build(root, dest, 10 * GiB, image_id, compressed_bytes=10_000)
    assert e.value.message == ("image abababababab unpacks to 10.0GiB, more than the 4.0GiB "
                               "allowed for its 9.8KiB of layers")
    assert "HV_MAX_IMAGE_SIZE" in e.value.hint and e.value.exit_code == 125
    assert not dest.exists()
    disk.build(root, dest, 1, image_id, compressed_bytes=10_000)  # within the limit
    assert dest.exists()


def test_sparse_file_keeps_the_base_disk_sparse(tmp_path, monkeypatch):
    """From a sparse layer member to ext4: a 1 GiB sparse file costs the host nothing."""
    monkeypatch.delenv("HV_DISK_SIZE", raising=False)
    layer = _layer(tmp_path, sparse_member("gnu", "var/log/lastlog", [(GiB - 3, b"end")], GiB))
    root = _rootfs(tmp_path)
    layers.extract([layer], root)
    image = tmp_path / "disk.ext4"
    disk.build(root, image, layers.tree_size(root), "sha256:" + "0" * 64,
               compressed_bytes=layer.stat().st_size)
    assert image.stat().st_blocks * 512 < 32 * MiB


# --- 2. templates and filters: one engine, Go's parse errors -------------------------------

ROWS = [{"ID": "a416a98b71e2", "Names": "web", "Status": "Up 3 seconds"}]
COLUMNS = [("CONTAINER ID", "ID"), ("NAMES", "Names")]


def _render(fmt, rows=ROWS):
    out = io.StringIO()
    render(out, rows, COLUMNS, fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt, error", [
    ("{{.Bad", "unclosed action"),
    ("{{range .X}}", "unexpected EOF"),
    ("{{if .ID}}x", "unexpected EOF"),
    ("{{end}}", "unexpected {{end}}"),
    ("{{.ID}", 'unexpected "}" in operand'),
    ("{{nosuch .ID}}", 'function "nosuch" not defined'),
    ("{{$x}}", 'undefined variable "$x"'),
    ("{{}}", "missing value for command"),
    ("{{/* never closed", "unclosed comment"),
    ("table {{.ID}}\\t{{.Names", "unclosed action"),
])
def test_bad_templates_are_go_parse_errors(fmt, error):
    for rows in (ROWS, []):  # parsed before any row, as docker/cli does
        with pytest.raises(TemplateError) as e:
            _render(fmt, rows)
        assert e.value.message == f"template parsing error: template: :1: {error}"


def test_template_execution_errors_print_nothing():
    out = io.StringIO()
    with pytest.raises(TemplateError) as e:
        render(out, ROWS, COLUMNS, "table {{.ID}}\\t{{.Bad}}")
    assert e.value.message == ('template parsing error: template: :1:10: executing "" at '
                               "<.Bad>: can't evaluate field Bad")
    assert out.getvalue() == ""


def test_go_template_features_in_listings():
    assert _render("{{if eq .Names \"web\"}}yes{{else}}no{{end}} {{len .ID}}") == "yes 12\n"
    assert _render("{{- range split .Status \" \"}}[{{.}}]{{end -}}") == "[Up][3][seconds]\n"
    assert _render("{{.Names | upper | printf \"%s!\"}}") == "WEB!\n"
    assert _render("table {{upper .Names}}") == "NAMES\nWEB\n"  # the header passes through


def test_inspect_templates(capsys):
    doc = {"Id": "abc", "State": {"Running": True, "ExitCode": 0, "Health": None},
           "Config": {"Env": ["A=1", "B=2"], "Labels": {"z": "1", "a": "2"}},
           "Mounts": [{"Source": "/s", "Destination": "/d"}]}
    containers_view.write_inspect([doc], "{{range .Config.Env}}{{.}};{{end}} "
                                         "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}},{{end}} "
                                         "{{(index .Mounts 0).Source}} {{.State.Health}} "
                                         "{{json .Config.Labels}} {{.State.Running}}")
    assert capsys.readouterr().out == 'A=1;B=2; a=2,z=1, /s <nil> {"z":"1","a":"2"} true\n'
    containers_view.write_inspect([doc], "json")
    assert capsys.readouterr().out.count("\n") == 1


def test_inspect_bad_template_exits_64_before_output(capsys):
    with pytest.raises(TemplateError) as e:
        containers_view.write_inspect([{"Id": "x"}], "{{.Id")
    assert e.value.exit_code == 64  # docker/cli's inspect: StatusError{StatusCode: 64}
    assert e.value.message == "template parsing error: template: :1: unclosed action"
    assert capsys.readouterr().out == ""
    with pytest.raises(TemplateError) as e:
        containers_view.write_inspect([{"Id": "x"}, {"Id": "y", "State": {}}], "{{.State.Pid}}")
    assert e.value.message == ('template parsing error: template: :1:8: executing "" at '
                               '<.State.Pid>: map has no entry for key "State"')


@pytest.mark.parametrize("flt, message", [
    ("bogus=1", "invalid filter 'bogus'"),
    ("status=sleeping", "invalid filter 'status=sleeping'"),
    ("exited=x", "invalid filter 'exited=x'"),
    ("nofilter", "bad format of filter (expected name=value): 'nofilter'"),
    ("health=healthy", "the filter 'health' is not supported by hv"),
])
def test_ps_filters_are_checked_even_with_no_containers(flt, message):
    with pytest.raises(UsageError) as e:
        containers_view.select([], all=True, filters=[flt], last=-1)
    assert e.value.message == message


def test_ps_filter_keys_are_lower_cased_before_the_check():
    with pytest.raises(UsageError, match="invalid filter 'status=bogus'"):
        containers_view.select([], all=True, filters=["NAME = web", " STATUS=bogus"], last=-1)


# --- 3. bytes that are not UTF-8 -----------------------------------------------------------


def test_env_file_that_is_not_utf8_is_refused_as_docker_does(tmp_path):
    path = tmp_path / "env"
    path.write_bytes(b"A=1\nB=\xff\n")
    with pytest.raises(UsageError) as e:
        read_env_file(str(path))
    assert e.value.message == f"env file {path} contains invalid utf8 bytes at line 2: [66 61 255]"


def test_env_file_docker_rules(tmp_path, monkeypatch):
    path = tmp_path / "env"
    path.write_bytes(b"\xef\xbb\xbfA=1\r\n  # comment\n\n  B = spaced value \nC\n\x0cD=\xc3\xa9\n")
    with pytest.raises(UsageError, match="variable 'B ' contains whitespaces"):
        read_env_file(str(path))
    path.write_bytes(b"\xef\xbb\xbfA=1\r\n  # c\n\nB= v \nC\nD=\xc3\xa9\x0b\n")
    assert read_env_file(str(path)) == ["A=1", "B= v ", "C", "D=\u00e9\x0b"]


def test_seed_carries_argv_and_env_bytes():
    argv = ["echo", os.fsdecode(b"\xff\xfe"), b"raw\x80"]  # Python's argv decoding, or bytes
    spec = GuestSpec(container_id="c" * 64, argv=argv, env=[os.fsdecode(b"V=\xff")],
                     workdir=os.fsdecode(b"/w\xff"))
    files = seed_files(spec)
    assert files["argv"] == b"echo\0\xff\xfe\0raw\x80\0"
    assert files["env"] == b"V=\xff\0"
    assert files["workdir"] == b"/w\xff"


def test_ps_command_shows_non_utf8_bytes_as_go_does():
    assert containers_view._quote("echo " + os.fsdecode(b"\xff") + "\n\x1b\u00e9") == (
        '"echo \\xff\\n\\x1b\u00e9"')


# --- 4. container names --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["web\n", "a\nb", "web\x00", "web\r"])
def test_bad_names_are_refused_on_one_line(name):
    with pytest.raises(UsageError) as e:
        check_name(name)
    assert e.value.message.isprintable()  # repr-quoted: one line on any terminal
    assert e.value.message.startswith(f"Invalid container name ({name!r}), only ")


def test_name_length_limit():
    assert check_name("/" + "a" * 247) == "a" * 247
    with pytest.raises(UsageError) as e:
        check_name("a" * 300)
    assert e.value.message == ("Invalid container name (aaaaaaaaaaaaaaaaaaaa..., 300 characters):"
                               " at most 247 characters are allowed")


# --- 5. memory -----------------------------------------------------------------------------


def test_memory_above_the_host_is_refused(tmp_path):
    with pytest.raises(UsageError) as e:
        parse_memory("100g", host_total=24 * GiB)
    assert e.value.message == ("memory limit 100g is more than the host's total memory "
                               "(24.0GiB): a VM's RAM must fit in the host's")
    assert e.value.exit_code == 125 and "24576m" in e.value.hint
    assert parse_memory("24g", host_total=24 * GiB) == 24576
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684084 kB\nMemFree: 1 kB\n")
    from hv.spec import host_memory_bytes

    assert host_memory_bytes(str(meminfo)) == 24684084 * 1024
    assert host_memory_bytes(str(tmp_path / "missing")) is None
