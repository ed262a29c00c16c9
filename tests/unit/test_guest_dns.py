"""The guest agent's embedded resolver (guest-images/agent/dns.c), built from its source and
run on the host's loopback: names of the hosts file answered, others forwarded to an
upstream (a fake one here, on loopback) and their answers returned under the asker's id."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "guest-images" / "agent"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def query(name: str, qtype: int = 1, qid: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + \
        struct.pack(">HH", qtype, 1)


def parse(reply: bytes) -> tuple[int, int, int, list[str]]:
    """(id, flags, rcode, the A records' addresses)."""
    qid, flags, qd, an, _, _ = struct.unpack(">HHHHHH", reply[:12])
    off = 12
    for _ in range(qd):
        while reply[off]:
            off += reply[off] + 1
        off += 5
    addrs = []
    for _ in range(an):
        off += 2 if reply[off] & 0xC0 == 0xC0 else 0  # a compressed name (all we send)
        rtype, _, _, rdlen = struct.unpack(">HHIH", reply[off:off + 10])
        off += 10
        if rtype == 1:
            addrs.append(socket.inet_ntoa(reply[off:off + rdlen]))
        off += rdlen
    return qid, flags, flags & 0xF, addrs


@pytest.fixture(scope="module")
def agent_binary(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is missing: 'make setup' installs it (guest-images/build.sh needs it)")
    out = tmp_path_factory.mktemp("agent") / "hv-init"
    subprocess.run(["gcc", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(out),
                    *(str(AGENT / f) for f in ("hv-init.c", "proc.c", "session.c", "dns.c"))],
                   check=True, capture_output=True, text=True)
    return out


@pytest.fixture
def resolver(agent_binary, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n172.18.0.2\tweb alpha 0123456789ab\n"
                     "# a comment db\n172.18.0.3\tdb\n::1\tip6only\n")
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.bind(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve():
        while True:
            try:
                data, who = upstream.recvfrom(4096)
            except OSError:
                return
            seen.append(data)
            qid = data[:2]
            rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("192.0.2.7")
            upstream.sendto(qid + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0) + data[12:] + rr,
                            who)

    threading.Thread(target=serve, daemon=True).start()
    port = _free_udp_port()
    proc = subprocess.Popen([str(agent_binary), "--dns", str(hosts),
                             f"127.0.0.1:{upstream.getsockname()[1]}", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "listening\n", proc.stderr.read()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.settimeout(5)

        def ask(packet: bytes) -> bytes:
            client.sendto(packet, ("127.0.0.1", port))
            return client.recv(4096)

        yield ask, hosts, seen, proc
        client.close()
    finally:
        proc.kill()
        proc.wait()
        upstream.close()


def test_names_of_the_hosts_file_are_answered_here(resolver):
    ask, _, seen, _ = resolver
    for name, addr in (("db", "172.18.0.3"), ("alpha", "172.18.0.2"), ("DB", "172.18.0.3"),
                       ("0123456789ab", "172.18.0.2"), ("web", "172.18.0.2")):
        qid, flags, rcode, addrs = parse(ask(query(name, qid=0x4242)))
        assert (qid, rcode, addrs) == (0x4242, 0, [addr]), name
        assert flags & 0x8000 and flags & 0x0400  # a response, authoritative
    # AAAA of a known name: no data, at once (a resolver asking both never waits)
    assert parse(ask(query("db", qtype=28)))[2:] == (0, [])
    assert parse(ask(query("ip6only")))[2:] == (0, [])
    assert seen == []  # nothing went upstream


def test_other_names_go_upstream_and_come_back_under_the_askers_id(resolver):
    ask, _, seen, _ = resolver
    qid, _, rcode, addrs = parse(ask(query("outside.test", qid=0x0777)))
    assert (qid, rcode, addrs) == (0x0777, 0, ["192.0.2.7"])
    assert len(seen) == 1 and seen[0][12:] == query("outside.test")[12:]
    # a name in a comment is no name
    assert parse(ask(query("comment")))[3] == ["192.0.2.7"] and len(seen) == 2


def test_a_rewritten_hosts_file_is_read_again(resolver):
    ask, hosts, seen, _ = resolver
    assert parse(ask(query("late")))[3] == ["192.0.2.7"]  # not known yet: forwarded
    text = hosts.read_text() + "172.18.0.9\tlate\n"
    with open(hosts, "r+") as f:  # in place, as the agent's `hosts` verb writes it
        f.write(text)
    os.utime(hosts, ns=(0, 1))  # a new mtime even within the same clock tick
    assert parse(ask(query("late")))[3] == ["172.18.0.9"]


def test_malformed_packets_are_dropped_and_the_resolver_goes_on(resolver):
    ask, _, _, proc = resolver
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    port = None
    for arg in proc.args:
        if arg.startswith("127.0.0.1:"):
            port = int(arg.rsplit(":", 1)[1])  # the last one is the listener
    for junk in (b"", b"\x00" * 5, b"\xff" * 12, query("db")[:-3], b"\x12\x34\x01\x00\x00\x01"
                 + b"\x00" * 6 + b"\x3f" + b"a" * 10):
        sock.sendto(junk, ("127.0.0.1", port))
    sock.close()
    assert parse(ask(query("db")))[3] == ["172.18.0.3"]
    assert proc.poll() is None


def test_without_an_upstream_other_names_fail_at_once(agent_binary, tmp_path):
    """An --internal container's resolver (upstream 0.0.0.0): its peers answered, anything
    else SERVFAIL at once (no client waits out its time-out)."""
    hosts = tmp_path / "hosts"
    hosts.write_text("172.18.0.3\tdb\n")
    port = _free_udp_port()
    proc = subprocess.Popen([str(agent_binary), "--dns", str(hosts), "0.0.0.0",
                             f"127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "listening\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(2)
            c.sendto(query("outside.test", qid=9), ("127.0.0.1", port))
            assert parse(c.recv(4096))[::2] == (9, 2)  # id, SERVFAIL
            c.sendto(query("db"), ("127.0.0.1", port))
            assert parse(c.recv(4096))[2:] == (0, ["172.18.0.3"])
    finally:
        proc.kill()
        proc.wait()
