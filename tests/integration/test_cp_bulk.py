"""`hv cp`'s bulk streams over OpenSSH (hv.guest.bulk) — a real guest, no mocks.

The bytes of a copy travel through `ssh` with the container's own key and its pinned host
key (see hv/guest/bulk.py for why not paramiko); these checks prove that the stream is
byte-identical both ways and that a host key other than the pinned one is refused, with a
clear error and nothing written on either side.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from hv.config import Config
from tests.conftest import HV, REPO

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def box(hv, busybox):
    name = "hv-test-cp-bulk"
    hv("rm", "-f", name)
    hv("run", "-d", "--name", name, busybox, "sleep", "3600", check=True)
    yield name
    hv("rm", "-f", name)


def _cid(hv, name: str) -> str:
    return hv("inspect", "-f", "{{.Id}}", name, check=True).stdout.strip()


def _ssh_children(cid: str) -> list[int]:
    """`ssh` processes still running for this container (its key path names the id)."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"ssh") and any(cid.encode() in a for a in cmd):
            pids.append(int(p.name))
    return pids


def test_cp_20mb_round_trip_is_byte_identical(hv, box, tmp_path):
    data = os.urandom(20 * 1024 * 1024 + 13)
    src = tmp_path / "blob"
    src.write_bytes(data)
    hv("cp", str(src), f"{box}:/tmp/blob", check=True, timeout=300)
    p = hv("exec", box, "sha256sum", "/tmp/blob", check=True)
    assert p.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    hv("cp", f"{box}:/tmp/blob", str(tmp_path / "back"), check=True, timeout=300)
    assert (tmp_path / "back").read_bytes() == data
    # `-` both ways: the raw tar stream on stdout, then back in on stdin
    raw = subprocess.run([*HV, "cp", f"{box}:/tmp/blob", "-"], capture_output=True,
                         env=hv.env(), cwd=REPO, timeout=300, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        member = tar.next()
        assert member is not None and member.name == "blob"
        assert tar.extractfile(member).read() == data
    hv("exec", box, "mkdir", "-p", "/tmp/in", check=True)
    hv("cp", "-", f"{box}:/tmp/in", input=raw, check=True, timeout=300)
    p = hv("exec", box, "sha256sum", "/tmp/in/blob", check=True)
    assert p.stdout.split()[0] == hashlib.sha256(data).hexdigest()
    assert not _ssh_children(_cid(hv, box))


def test_a_host_key_other_than_the_pinned_one_is_refused(hv, box, tmp_path):
    from hv import copy as cp
    from hv.config import Config

    paths = Config.from_environ().paths
    from hv.guest import bulk, keys
    from hv.guest.agent import Agent, AgentUnreachable, endpoint

    cid = _cid(hv, box)
    src = tmp_path / "secret"
    src.write_bytes(os.urandom(bulk.SSH_FROM))  # large enough to go through ssh
    # the control channel still sees the real key
    agent = Agent.connect(endpoint(Config.from_environ().paths, cid))
    pinned = paths.container_host_key(cid)
    saved = pinned.read_text()
    try:
        pinned.write_text(keys.generate("not-the-guest").public_line + "\n")
        with pytest.raises(AgentUnreachable) as e:
            cp.copy_in(agent, box, str(src), "/tmp/secret", False, False)
        assert box in e.value.message and "OpenSSH" in e.value.message
        assert str(paths.container_console(cid)) in e.value.hint
        with pytest.raises(AgentUnreachable):
            cp.copy_out(agent, box, "/etc", str(tmp_path / "out"), False, False)  # a dir
    finally:
        pinned.write_text(saved)
        agent.close()
    assert not (tmp_path / "out").exists()
    assert hv("exec", box, "ls", "/tmp/secret").returncode != 0
    assert not [f for f in os.listdir(paths.container_dir(cid)) if f.startswith(".known_hosts")]
    assert not _ssh_children(cid)
    # the real key pinned again: the next copy works (its known_hosts is rewritten)
    hv("cp", str(src), f"{box}:/tmp/secret", check=True)


def test_guest_side_failure_keeps_its_message(hv, box, tmp_path):
    """tar-in's own error (a directory where a file should go) comes back as before."""
    hv("exec", box, "mkdir", "-p", "/tmp/clash/x/y", check=True)
    (tmp_path / "x").write_text("a file\n")
    p = hv("cp", str(tmp_path / "x"), f"{box}:/tmp/clash/")
    assert p.returncode != 0
    assert f"copying into {box}:/tmp/clash/ failed:" in p.stderr and "hint:" in p.stderr


def test_no_ssh_client_is_a_clear_error(hv, box, tmp_path, monkeypatch):
    from hv import copy as cp
    from hv.errors import HvError
    from hv.guest import bulk
    from hv.guest.agent import Agent, endpoint

    (tmp_path / "f").write_bytes(os.urandom(bulk.SSH_FROM))
    agent = Agent.connect(endpoint(Config.from_environ().paths, _cid(hv, box)))
    try:
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
        with pytest.raises(HvError) as e:
            cp.copy_in(agent, box, str(tmp_path / "f"), "/tmp/f-no-ssh", False, False)
    finally:
        agent.close()
    assert "ssh" in e.value.message and "apt-get install openssh-client" in e.value.hint


def test_small_copies_use_the_agents_own_channel_and_any_agent_works(hv, box, tmp_path):
    """Under SSH_FROM bytes a copy skips ssh's handshake; both paths work with the exec
    multiplexer's agent too (it knows only the container id: the port is its ssh-port)."""
    from hv import copy as cp
    from hv.guest import bulk, mux
    from hv.guest.agent import Agent, endpoint
    from hv.guest.attach import session_command

    cid = _cid(hv, box)
    small, big = os.urandom(1000), os.urandom(bulk.SSH_FROM + 1)
    (tmp_path / "small").write_bytes(small)
    (tmp_path / "big").write_bytes(big)
    config = Config.from_environ()
    direct = Agent.connect(endpoint(config.paths, cid))
    agents = [direct]
    shared = mux.connect(config, cid, timeout=60) if config.mux else None
    if shared is not None:
        agents.append(shared)
    try:
        for i, agent in enumerate(agents):
            for name, data in (("small", small), ("big", big)):
                dest = f"/tmp/{name}-{i}"
                cp.copy_in(agent, box, str(tmp_path / name), dest, False, False)
                back = tmp_path / f"{name}-{i}"
                cp.copy_out(agent, box, dest, str(back), False, False)
                assert back.read_bytes() == data, (name, type(agent).__name__)
        with bulk.open_stream(direct, box, session_command("ready"), write=False,
                              size=10) as s:
            assert isinstance(s, bulk.ChannelStream)
            assert s.finish() == (0, b"")
    finally:
        direct.close()
        if shared is not None:
            shared.close()
            mux.stop(config, cid)
    assert not _ssh_children(cid)


def test_large_copy_into_a_stopped_container(hv, busybox, tmp_path):
    """The maintenance boot (sshd only) serves the ssh path too: same keys, same port file."""
    from hv.guest import bulk

    name = "hv-test-cp-bulk-stopped"
    hv("rm", "-f", name)
    hv("run", "--name", name, busybox, "true", check=True)
    try:
        data = os.urandom(bulk.SSH_FROM + 4096)
        (tmp_path / "big").write_bytes(data)
        hv("cp", str(tmp_path / "big"), f"{name}:/big", check=True, timeout=300)
        hv("cp", f"{name}:/big", str(tmp_path / "back"), check=True, timeout=300)
        assert (tmp_path / "back").read_bytes() == data
        hv("cp", f"{name}:/etc", str(tmp_path / "etc"), check=True, timeout=300)  # a dir: ssh
        assert (tmp_path / "etc" / "passwd").exists()
        assert "Exited (0)" in hv("ps", "-a", "-f", f"name={name}").stdout
        assert not _ssh_children(_cid(hv, name))
    finally:
        hv("rm", "-f", name)
