"""The seed ISO round trip: what write_seed puts in is what the guest reads (Rock Ridge names)."""

from __future__ import annotations

import io
from pathlib import Path

import pycdlib
import pytest

from hv.guest.seed import GuestSpec, seed_files, write_seed


def read_iso(path: Path) -> dict[str, bytes]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = {}
        for child in iso.list_children(rr_path="/"):
            if child.is_dir():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path="/" + name)
            out[name] = buf.getvalue()
        return out
    finally:
        iso.close()


def test_round_trip_any_bytes(tmp_path: Path) -> None:
    spec = GuestSpec(
        container_id="0123456789ab" * 5 + "cdef",
        argv=["sh", "-c", "echo \"a  b\"\n'c' $X", "", "ünïcødé ✓"],
        env=["PATH=/usr/bin:/bin", "MULTI=line1\nline2", "EMPTY=", "Q=\"'\\"],
        workdir="/work dir/x",
        user="1234:5678",
        hostname="web",
        tty=True,
    )
    iso = tmp_path / "seed.iso"
    write_seed(iso, spec)
    files = read_iso(iso)
    assert files == {
        "argv": b"sh\0-c\0echo \"a  b\"\n'c' $X\0\0" + "ünïcødé ✓".encode() + b"\0",
        "env": b"PATH=/usr/bin:/bin\0MULTI=line1\nline2\0EMPTY=\0Q=\"'\\\0",
        "workdir": b"/work dir/x",
        "user": b"1234:5678",
        "hostname": b"web",
        "id": spec.container_id.encode(),
        "tty": b"1",
        "stdin_open": b"0",
        "wait_attach": b"0",
        "maintenance": b"0",
    }
    # NUL-terminated items split back into the original lists.
    assert [a.decode() for a in files["argv"].split(b"\0")[:-1]] == spec.argv
    assert [e.decode() for e in files["env"].split(b"\0")[:-1]] == spec.env


def test_defaults_and_empty_values(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    write_seed(iso, GuestSpec("abc", ["true"], []))
    files = read_iso(iso)
    assert files["env"] == b""
    assert files["workdir"] == b"/"
    assert files["user"] == b"" and files["hostname"] == b""
    assert files["tty"] == b"0"


def test_atomic_replace_leaves_no_temp_files(tmp_path: Path) -> None:
    iso = tmp_path / "seed.iso"
    write_seed(iso, GuestSpec("a", ["one"], []))
    write_seed(iso, GuestSpec("a", ["two"], []))
    assert read_iso(iso)["argv"] == b"two\0"
    assert [p.name for p in tmp_path.iterdir()] == ["seed.iso"]


@pytest.mark.parametrize(
    "spec",
    [
        GuestSpec("a", [], []),
        GuestSpec("a", ["bad\0arg"], []),
        GuestSpec("a", ["true"], ["K=v\0"]),
        GuestSpec("a", ["true"], [], workdir="/x\0"),
    ],
)
def test_rejects_empty_argv_and_nul(tmp_path: Path, spec: GuestSpec) -> None:
    with pytest.raises(ValueError):
        write_seed(tmp_path / "seed.iso", spec)
    assert not list(tmp_path.iterdir())


def test_seed_files_names() -> None:
    assert sorted(seed_files(GuestSpec("a", ["true"], []))) == sorted(
        ["argv", "env", "workdir", "user", "hostname", "id", "tty", "stdin_open", "wait_attach",
         "maintenance"]
    )  # fmt: skip


HOST_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


def test_ssh_keys_and_flags(tmp_path: Path) -> None:
    spec = GuestSpec(
        "k", ["sleep", "1"], [], authorized_keys="ssh-ed25519 AAAAC3 hv", ssh_host_key=HOST_KEY,
        wait_attach=True, maintenance=True, stdin_open=True,
    )  # fmt: skip
    iso = tmp_path / "seed.iso"
    write_seed(iso, spec)
    files = read_iso(iso)
    assert files["authorized_keys"] == b"ssh-ed25519 AAAAC3 hv\n"
    assert files["ssh_host_ed25519_key"] == HOST_KEY.encode()
    assert (files["wait_attach"], files["maintenance"], files["stdin_open"]) == (b"1", b"1", b"1")


def test_ssh_keys_go_together() -> None:
    with pytest.raises(ValueError):
        seed_files(GuestSpec("k", ["true"], [], authorized_keys="ssh-ed25519 AAAA"))
    with pytest.raises(ValueError):
        seed_files(GuestSpec("k", ["true"], [], ssh_host_key=HOST_KEY))
    assert "authorized_keys" not in seed_files(GuestSpec("k", ["true"], []))


def test_embedded_dns_upstream_and_its_resolv_conf() -> None:
    """A container on a user-defined network: seed `dns` names the upstream, resolv.conf the
    agent's resolver as Docker's (127.0.0.11, ndots:0 unless given)."""
    from types import SimpleNamespace

    from hv.engine.create import _resolv_conf

    files = seed_files(GuestSpec("a", ["true"], [], dns="10.0.2.3"))
    assert files["dns"] == b"10.0.2.3"
    with pytest.raises(ValueError):
        seed_files(GuestSpec("a", ["true"], [], dns="2001:db8::53"))
    plain = SimpleNamespace(dns=[], dns_search=[], dns_options=[])
    assert _resolv_conf(plain) is None
    assert _resolv_conf(plain, embedded=True) == "nameserver 127.0.0.11\noptions ndots:0\n"
    flags = SimpleNamespace(dns=["192.0.2.53"], dns_search=["example.test"],
                            dns_options=["ndots:2", "timeout:1"])
    assert _resolv_conf(flags, embedded=True) == ("nameserver 127.0.0.11\nsearch example.test\n"
                                                  "options ndots:2 timeout:1\n")
    assert _resolv_conf(flags).startswith("nameserver 192.0.2.53\n")
