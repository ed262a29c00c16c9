"""The guest seam: SSH (paramiko) to the agent's sshd through a loopback host forward.

The host key is pinned (made on the host, never learned from the network); the client key
is the container's own. Every request is one SSH channel whose command line is built by
`hv.guest.attach.session_command`, so argv travels as argv and nothing is re-parsed by a
shell. Readiness is an ordered list of checks; the first that fails is named in the error,
with the console log to read.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

from hv.errors import HvError, RuntimeFailure
from hv.paths import Paths


class AgentUnreachable(RuntimeFailure):
    pass


@dataclass
class Endpoint:
    cid: str
    port: int
    host_key_line: str
    client_key: Path
    paths: Paths  # where the container's files are (console log, keys) for errors and ssh


def endpoint(paths: Paths, cid: str) -> Endpoint:
    try:
        port = int(paths.container_ssh_port(cid).read_text().strip())
        host_key_line = paths.container_host_key(cid).read_text().strip()
    except (OSError, ValueError):
        raise AgentUnreachable(
            "the container's agent has no SSH endpoint (it was created by an older hv or "
            "is not running)", hint="restart the container with 'hv restart'") from None
    return Endpoint(cid, port, host_key_line, paths.container_client_key(cid), paths)


class Agent:
    """One authenticated SSH transport to a container's agent."""

    def __init__(self, transport, endpoint: Endpoint | None = None) -> None:
        self.transport = transport
        self.endpoint = endpoint  # what a bulk copy (hv.guest.bulk) needs: container id, port

    @classmethod
    def connect(cls, ep: Endpoint, timeout: float = 60.0) -> Agent:
        """Connect, retrying while the guest boots; each failure says which check failed."""
        import logging

        import paramiko

        quiet = logging.getLogger("paramiko")  # retries are expected; hv reports failures
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False

        deadline = time.monotonic() + timeout
        last = "the TCP port did not accept connections"
        hint = f"read the guest console log: {ep.paths.container_console(ep.cid)}"
        pinned = _public_key(ep.host_key_line)
        client = paramiko.Ed25519Key.from_private_key_file(str(ep.client_key))
        delay = 0.05
        banner_wait = 1.5  # slirp accepts before the guest listens; a fresh SYN beats a wait
        while True:
            sock = None
            try:
                sock = socket.create_connection(("127.0.0.1", ep.port), timeout=5)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                t = paramiko.Transport(sock)
                t.banner_timeout = banner_wait
                banner_wait = min(banner_wait * 2, 15)
                try:
                    t.start_client(timeout=10)
                except (paramiko.SSHException, EOFError, OSError):
                    t.close()
                    last = "the agent's sshd did not complete the SSH handshake"
                    raise
                key = t.get_remote_server_key()
                if key.get_name() != pinned.get_name() or key.asbytes() != pinned.asbytes():
                    t.close()
                    raise AgentUnreachable(
                        "the guest presented a host key that is not the container's pinned key",
                        hint="the VM behind this port is not this container; restart it")
                try:
                    t.auth_publickey("root", client)
                except paramiko.SSHException:
                    t.close()
                    raise AgentUnreachable(
                        "the agent refused the container's client key", hint=hint) from None
                return cls(t, ep)
            except HvError:
                raise
            except (OSError, EOFError, paramiko.SSHException):
                if sock is not None:
                    sock.close()
                if time.monotonic() > deadline:
                    raise AgentUnreachable(f"the guest never became ready: {last}",
                                           hint=hint) from None
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)

    def open(self, command: str, pty: tuple[str, int, int] | None = None):
        """A channel running `command` (optionally on a PTY of (TERM, cols, rows)).

        Bulk copies do not come here: they run over OpenSSH (hv.guest.bulk).
        """
        import paramiko

        try:
            ch = self.transport.open_session()
            if pty is not None:
                term, cols, rows = pty
                ch.get_pty(term=term, width=cols, height=rows)
            ch.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise AgentUnreachable(f"the agent dropped the session: {e}",
                                   hint="is the container still running? 'hv ps -a'") from None
        return ch

    def call(self, command: str, stdin: bytes | None = None,
             timeout: float = 120.0) -> tuple[int, bytes, bytes]:
        """Run to completion; (exit code, stdout, stderr). -1 when the guest went away."""
        ch = self.open(command)
        if stdin:
            ch.sendall(stdin)
        ch.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            if ch.recv_ready():
                out += ch.recv(65536)
            elif ch.recv_stderr_ready():
                err += ch.recv_stderr(65536)
            elif ch.eof_received and ch.exit_status_ready():
                break  # read to EOF first: the status can arrive before the last output
            elif ch.closed or not self.transport.is_active():
                return -1, bytes(out), bytes(err)  # e.g. the VM powered off meanwhile
            elif time.monotonic() > deadline:
                ch.close()
                raise AgentUnreachable(f"the agent did not answer within {timeout:.0f} s",
                                       hint="is the guest overloaded? see 'hv stats'")
            else:
                time.sleep(0.002)
        code = ch.recv_exit_status()
        ch.close()
        return code, bytes(out), bytes(err)

    def close(self) -> None:
        self.transport.close()


def _public_key(line: str):
    import base64

    import paramiko

    parts = line.split()
    if len(parts) < 2:
        raise AgentUnreachable("the container's pinned host key is unreadable",
                               hint="recreate the container")
    return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
