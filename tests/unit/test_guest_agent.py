"""Parts of the guest agent built from their source and run on the host: the embedded
resolver (dns.c) on the host's loopback (names of the hosts file answered, others forwarded
to an upstream, a fake one on loopback, and their answers returned under the asker's id),
and the move of a NIC into a network namespace (netns.c) with a veth pair that has no
address and lives only for the test."""

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
                    *map(str, sorted(AGENT.glob("*.c")))],
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


NICS_SCRIPT = r"""
set -e
mount -t tmpfs hv-test /run && mkdir -p /run/hv
veth() { ip link add "$1" address "$2" type veth peer name "$1-p"; }
veth ag 52:54:00:68:76:01; veth us 52:54:00:68:76:02; veth n1 02:42:ac:12:00:02
printf '%s\0' 02:42:ac:12:00:02 172.18.0.2/16 | "$AGENT" --nics --boot
echo ROOT; ip -o -4 addr; ip -o link
echo NS; nsenter --net=/run/hv/netns sh -c 'ip -o -4 addr; ip route; ip -o link'
# a connect: the new NIC shows up in the root namespace under a name taken inside
ip link add n1 address 02:42:ac:13:00:05 type veth peer name n2-p
printf '%s\0' 02:42:ac:12:00:02 172.18.0.2/16 02:42:ac:13:00:05 10.9.0.3/24 | "$AGENT" --nics
echo CONNECTED; nsenter --net=/run/hv/netns ip -o -4 addr
# a disconnect: the first network's NIC loses its address and goes down
printf '%s\0' 02:42:ac:13:00:05 10.9.0.3/24 | "$AGENT" --nics
echo DISCONNECTED; nsenter --net=/run/hv/netns sh -c 'ip -o -4 addr; ip -o link show n1'
"""


def test_nics_make_the_namespace_and_keep_the_agents_nic_out_of_it(agent_binary):
    """`hv-init --nics` as the guest runs it, in a scratch network and mount namespace of
    the host (veths with the guest's MACs, nothing on the host's own network): at boot every
    NIC but the agent's moves into the container's namespace, the listed ones get their
    address and the workload's user-mode NIC SLIRP's address and default route; then a
    connect (the new NIC renamed, its root-namespace name being taken inside) and a
    disconnect (address gone, link down)."""
    if os.geteuid() != 0:
        pytest.fail("needs root (CI runs as root) to make network namespaces and veths")
    p = subprocess.run(["unshare", "--net", "--mount", "--propagation", "private",
                        "sh", "-c", NICS_SCRIPT], capture_output=True, text=True,
                       env={**os.environ, "AGENT": str(agent_binary)}, timeout=60)
    assert p.returncode == 0, p.stderr
    root, rest = p.stdout.split("\nNS\n")
    ns, rest = rest.split("\nCONNECTED\n")
    connected, disconnected = rest.split("\nDISCONNECTED\n")

    def addrs(text: str) -> dict[str, str]:
        return {ln.split()[1]: ln.split()[3] for ln in text.splitlines() if " inet " in ln}

    def links(text: str) -> list[str]:
        return [ln.split(":")[1].strip().split("@")[0] for ln in text.splitlines()
                if ln[:1].isdigit() and "link/" in ln]

    assert addrs(root) == {"lo": "127.0.0.1/8", "ag": "10.0.2.15/24"}, root
    assert links(root) == ["lo", "ag"], root  # every other NIC went into the namespace
    assert addrs(ns) == {"lo": "127.0.0.1/8", "us": "10.0.2.15/24", "n1": "172.18.0.2/16"}
    assert "default via 10.0.2.2 dev us" in ns, ns
    assert addrs(connected)["eth0"] == "10.9.0.3/24", connected
    assert "n1" not in addrs(disconnected) and addrs(disconnected)["eth0"] == "10.9.0.3/24"
    assert ",UP" not in disconnected.splitlines()[-1].split(">")[0], disconnected
