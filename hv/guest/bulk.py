"""Bulk byte streams to and from a guest (`hv cp`'s `tar-in` / `tar-out`) over OpenSSH's `ssh`.

Why not paramiko, the guest seam for everything else (exec, PTYs, attach, cp's `stat`)?
Under TCG the guest's CPU is the bottleneck of a copy, and most of what it spends is the
agent sshd decrypting the stream in emulated software. paramiko offers only AES (ctr, cbc,
gcm) with HMAC, which such a guest does at 10-15 MB/s; OpenSSH's client negotiates
chacha20-poly1305@openssh.com, which the same guest does at ~26 MB/s (measured; giving the
guest AES-NI/SSSE3 made AES-GCM a little faster but chacha20 and other SIMD code much slower
under TCG). paramiko has no chacha20-poly1305, so the bytes of a copy travel through `ssh`.

The guest side does not change: the same sshd, the same `hv-init --session` command built by
`hv.guest.attach.session_command` (one word string, sent as the remote command, which sshd's
ForceCommand reads back from $SSH_ORIGINAL_COMMAND), the same per-container client key and
the same pinned host key. `ssh` runs with no user or system config (`-F /dev/null`), batch
mode, only the container's key, no agent, no forwarding, and a known_hosts file of one line
written from the pinned key: no other host key is accepted, nothing is learned on first use.
The control calls of a copy (`stat`) stay on the agent's own connection.

Small copies (under SSH_FROM bytes, when the size is known up front) also stay there: ssh's
own handshake costs the guest ~0.2 s, more than the slower cipher costs a few MB. Either way
a copy sees the same `Stream` interface: `stdin` or `stdout`, then `finish()` -> (exit code,
the guest's stderr), `abort()`, `close()`.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import IO

from hv.errors import HvError
from hv.guest.agent import AgentUnreachable
from hv.paths import Paths

BUF = 1 << 20
# Copies smaller than this go over the agent's own connection: measured under TCG, a 4 MB
# tar-in takes 0.32 s on a paramiko channel and 0.54 s through ssh (its handshake is ~0.2 s);
# from ~8 MB on ssh is ahead, and 100 MB take half the time.
SSH_FROM = 4 << 20
SSH_FAILED = 255  # ssh's own failures (connect, host key, auth); the agent never exits 255


class SshMissing(HvError):
    hint = "install OpenSSH's client: apt-get install openssh-client"


def known_hosts(paths: Paths, cid: str, port: int) -> tuple[Path, str]:
    """The container's pinned host key as a known_hosts file for [127.0.0.1]:PORT, and the
    key's type."""
    try:
        key = paths.container_host_key(cid).read_text().split()
    except OSError:
        key = []
    if len(key) < 2:
        raise AgentUnreachable("the container's pinned host key is unreadable",
                               hint="recreate the container")
    line = f"[127.0.0.1]:{port} {key[0]} {key[1]}\n"
    path = paths.container_known_hosts(cid)
    try:
        if path.read_text() == line:
            return path, key[0]
    except OSError:
        pass
    # several hv commands may write it at once: a whole file is renamed into place
    fd, tmp = tempfile.mkstemp(prefix=".known_hosts.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(line)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path, key[0]


def ssh_argv(paths: Paths, cid: str, port: int, command: str) -> list[str]:
    """`ssh` to the agent of container CID on 127.0.0.1:PORT, running the session COMMAND."""
    ssh = shutil.which("ssh")
    if ssh is None:
        raise SshMissing("'hv cp' needs OpenSSH's ssh client, which is not installed")
    pinned, key_type = known_hosts(paths, cid, port)
    opts = {
        "BatchMode": "yes",  # never a password or passphrase prompt
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "PubkeyAuthentication": "yes",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "HostbasedAuthentication": "no",
        "GSSAPIAuthentication": "no",
        "StrictHostKeyChecking": "yes",  # the pinned key or nothing
        "UserKnownHostsFile": str(pinned),
        "GlobalKnownHostsFile": "/dev/null",
        "HostKeyAlgorithms": key_type,
        "UpdateHostKeys": "no",
        "CheckHostIP": "no",
        "VerifyHostKeyDNS": "no",
        "ForwardAgent": "no",
        "ForwardX11": "no",
        "ClearAllForwardings": "yes",
        # the hybrid post-quantum default (sntrup761x25519) costs the emulated guest ~0.1 s
        # more per handshake than X25519; this stream never leaves the loopback interface
        "KexAlgorithms": "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256",
        "ControlMaster": "no",
        "ControlPath": "none",
        "RequestTTY": "no",
        "EscapeChar": "none",
        "ConnectTimeout": "30",
        "ServerAliveInterval": "30",
        "ServerAliveCountMax": "4",
        "LogLevel": "ERROR",
    }
    argv = [ssh, "-F", "/dev/null", "-i", str(paths.container_client_key(cid)),
            "-p", str(port)]
    for k, v in opts.items():
        argv += ["-o", f"{k}={v}"]
    return [*argv, "root@127.0.0.1", command]


class Stream:
    """One session of the agent over `ssh`: `stdin` to write, or `stdout` to read, then `finish`.

    The guest's stderr is kept in a temporary file (no pipe to fill and stall the session).
    """

    def __init__(self, paths: Paths, cid: str, port: int, name: str, command: str,
                 write: bool) -> None:
        self.paths, self.cid, self.name = paths, cid, name
        argv = ssh_argv(paths, cid, port, command)
        self._err: IO[bytes] = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE if write else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if write else subprocess.PIPE, stderr=self._err,
                bufsize=BUF, close_fds=True)
        except OSError as e:
            self._err.close()
            raise SshMissing(f"cannot run OpenSSH's ssh client: {e}") from None
        self.stdin = self.proc.stdin
        self.stdout = self.proc.stdout

    def finish(self) -> tuple[int, bytes]:
        """(the session's exit code, the guest's stderr), once the guest is done.

        An `ssh` that could not connect, verify the pinned host key or authenticate raises
        AgentUnreachable, naming the container and its console log.
        """
        self._close_stdin()
        if self.stdout is not None:
            while self.stdout.read(BUF):  # whatever follows the tar's end, so ssh can exit
                pass
        code = self.proc.wait()
        self._err.seek(0)
        err = self._err.read()
        if code == SSH_FAILED:
            lines = err.decode(errors="replace").strip().splitlines()
            why = lines[-1] if lines else "ssh exited with status 255"
            console = self.paths.container_console(self.cid)
            hint = f"is it still running ('hv ps -a')? read its console log: {console}"
            if "host key" in why.lower():  # not the pinned key: another VM behind the port
                hint = f"the VM behind this port is not this container; restart it " \
                       f"(console log: {console})"
            raise AgentUnreachable(
                f"cannot open a copy session to container {self.name} over OpenSSH: {why}",
                hint=hint)
        return code, err

    def abort(self) -> None:
        """End the session now (the guest sees the connection go)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self._close_stdin()

    def close(self) -> None:
        self.abort()
        self.proc.wait()
        if self.stdout is not None:
            self.stdout.close()
        self._err.close()

    def _close_stdin(self) -> None:
        if self.stdin is not None and not self.stdin.closed:
            try:
                self.stdin.close()
            except OSError:  # ssh went away with bytes still buffered
                pass

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _ChannelWriter(io.RawIOBase):
    def __init__(self, ch) -> None:
        self._ch = ch

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        try:
            self._ch.sendall(bytes(b))
        except OSError as e:  # a channel that closed: the session ended, its status says why
            raise BrokenPipeError(str(e)) from None
        return len(b)

    def close(self) -> None:
        if not self.closed:
            super().close()
            try:
                self._ch.shutdown_write()
            except Exception:  # noqa: BLE001 - the session is gone; its status says why
                pass


class _ChannelReader(io.RawIOBase):
    def __init__(self, ch) -> None:
        self._ch = ch

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._ch.recv(len(b))
        b[:len(data)] = data
        return len(data)


class ChannelStream:
    """Stream's interface over a channel of the agent's own connection (paramiko's, or the
    exec multiplexer's): for small copies, where ssh's handshake (~0.2 s under TCG) would
    cost more than the slower cipher."""

    def __init__(self, ch, write: bool) -> None:
        self.ch = ch
        self.stdin = io.BufferedWriter(_ChannelWriter(ch), BUF) if write else None
        self.stdout = None if write else io.BufferedReader(_ChannelReader(ch), BUF)
        if not write:
            ch.shutdown_write()

    def finish(self) -> tuple[int, bytes]:
        if self.stdin is not None and not self.stdin.closed:
            try:
                self.stdin.close()  # the last bytes, then EOF
            except OSError:
                pass
        while self.ch.recv(BUF):  # read to EOF first: the status can come before the output
            pass
        err = bytearray()
        while chunk := self.ch.recv_stderr(65536):
            err += chunk
        return self.ch.recv_exit_status(), bytes(err)

    def abort(self) -> None:
        self.ch.close()

    def close(self) -> None:
        self.ch.close()

    def __enter__(self) -> ChannelStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_stream(agent, name: str, command: str, write: bool,
                size: int | None = None) -> Stream | ChannelStream:
    """A bulk session to the agent AGENT talks to, running the session COMMAND.

    SIZE (bytes, None when unknown) below SSH_FROM: a channel of AGENT itself. Else `ssh`,
    to the container of a paramiko Agent (its endpoint) or of any agent that knows its
    container id (`cid`; the port is then the container's ssh-port file).
    """
    if size is not None and size < SSH_FROM:
        return ChannelStream(agent.open(command), write)
    ep = getattr(agent, "endpoint", None)
    cid = ep.cid if ep is not None else getattr(agent, "cid", None)
    paths = ep.paths if ep is not None else agent.paths
    try:
        port = ep.port if ep is not None else \
            int(paths.container_ssh_port(cid).read_text().strip())
    except (OSError, ValueError, TypeError):
        raise AgentUnreachable(f"no SSH endpoint is known for container {name}",
                               hint="restart the container with 'hv restart'") from None
    return Stream(paths, cid, port, name, command, write)
