"""`hv system service`'s addresses and socket (no VM, no engine)."""

from __future__ import annotations

import socket
import stat

import pytest

from api.server import listen, parse_address
from hv.errors import UsageError


def test_addresses():
    a = parse_address("unix:///run/hv/hv.sock")
    assert (a.kind, str(a.path)) == ("unix", "/run/hv/hv.sock")
    a = parse_address("tcp://127.0.0.1:2375")
    assert (a.kind, a.host, a.port) == ("tcp", "127.0.0.1", 2375)
    assert parse_address("tcp://localhost:1").host == "127.0.0.1"
    assert parse_address("tcp://[::1]:2375").host == "::1"


@pytest.mark.parametrize("text", ["tcp://0.0.0.0:2375", "tcp://10.1.2.3:2375",
                                  "tcp://example.com:2375"])
def test_no_remote_tcp_without_tls(text):
    with pytest.raises(UsageError, match="refusing to listen"):
        parse_address(text)


@pytest.mark.parametrize("text", ["unix://relative.sock", "tcp://127.0.0.1", "http://x", ""])
def test_bad_addresses(text):
    with pytest.raises(UsageError):
        parse_address(text)


def test_unix_socket_is_private_and_a_stale_one_is_replaced(tmp_path):
    path = tmp_path / "hv.sock"
    s = listen(parse_address(f"unix://{path}"))
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode in (0o600, 0o660)  # 0660 only with an `hv` group
        with pytest.raises(UsageError, match="another server"):
            listen(parse_address(f"unix://{path}"))
    finally:
        s.close()
    assert path.exists()  # what a killed server leaves
    s = listen(parse_address(f"unix://{path}"))
    s.close()


def test_tcp_loopback_listens(tmp_path):
    addr = parse_address("tcp://127.0.0.1:0")
    s = listen(addr)
    try:
        assert addr.port > 0
        with socket.create_connection(("127.0.0.1", addr.port), timeout=5):
            pass
    finally:
        s.close()
