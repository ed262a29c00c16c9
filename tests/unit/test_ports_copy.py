"""Parsing `-p`, `hv cp` targets and signals; the cp member renaming that guards the host."""

import pytest

from hv.copy import CopyError, _rename, parse_target
from hv.errors import UsageError
from hv.guestops import parse_signal
from hv.ports import PortSpec, exposed, format_ps, parse


@pytest.mark.parametrize("spec,want", [
    ("80", PortSpec(80)),
    ("8080:80", PortSpec(80, host_port=8080)),
    ("127.0.0.1:8080:80/udp", PortSpec(80, "udp", "127.0.0.1", 8080)),
    ("127.0.0.1::80", PortSpec(80, host_ip="127.0.0.1")),
    ("53/UDP", PortSpec(53, "udp")),
])
def test_parse_ports(spec, want):
    assert parse(spec) == want


@pytest.mark.parametrize("bad", ["", "x", "0", "70000", "80/sctp", "1.2.3:80:80",
                                 "[::1]:80:80", "a:b:c"])
def test_bad_ports(bad):
    with pytest.raises(UsageError):
        parse(bad)


def test_exposed_and_ps_column():
    assert exposed({"ExposedPorts": {"80/tcp": {}, "53/udp": {}}}) == [
        PortSpec(53, "udp"), PortSpec(80, "tcp")]
    assert format_ps([{"host_ip": "0.0.0.0", "host_port": 8080, "container_port": 80,
                       "proto": "tcp"}]) == "0.0.0.0:8080->80/tcp"


def test_cp_targets():
    assert parse_target("web:/etc/passwd") == ("web", "/etc/passwd")
    assert parse_target("/tmp/a:b") == (None, "/tmp/a:b")
    assert parse_target("./web:x") == (None, "./web:x")
    assert parse_target("-") == (None, "-")
    with pytest.raises(UsageError):
        parse_target("web:")


def test_cp_member_renaming():
    assert _rename("tree/sub/x", "tree", "back") == "back/sub/x"
    assert _rename("tree", "tree", "back") == "back"
    assert _rename("./a/.hidden", ".", ".") == "a/.hidden"
    assert _rename("./.bashrc", ".", "dest") == "dest/.bashrc"
    with pytest.raises(CopyError):
        _rename("other/x", "tree", "back")
    with pytest.raises(CopyError):
        _rename("treex/y", "tree", "back")


def test_signals():
    assert parse_signal("KILL") == 9 == parse_signal("SIGKILL") == parse_signal("9")
    assert parse_signal("term") == 15
    for bad in ("NOPE", "0", "99", ""):
        with pytest.raises(UsageError):
            parse_signal(bad)
