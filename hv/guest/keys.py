"""Each container's SSH identity: a client key pair and a host key, made on the host.

The host key's private half travels to the guest on the seed ISO; its public half is
pinned on the host, so the connection to the agent's sshd is never trust-on-first-use.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class KeyPair:
    private_openssh: str
    public_line: str


def generate(comment: str) -> KeyPair:
    """A fresh Ed25519 pair in OpenSSH's formats (private key unencrypted, mode 0600 on disk).

    Only the key itself comes from cryptography; the two encodings are written here, because
    cryptography's serialization module costs ~10 ms to import on every `hv run`. The format
    is OpenSSH's PROTOCOL.key; tests load the result with cryptography and paramiko.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    seed, public = key.private_bytes_raw(), key.public_key().public_bytes_raw()
    blob = _string(_KEY_TYPE) + _string(public)
    check = os.urandom(4)
    secret = (check + check + blob + _string(seed + public) + _string(comment.encode()))
    secret += bytes(range(1, 1 + (-len(secret) % 8)))  # pad to the "none" cipher's block
    body = (b"openssh-key-v1\0" + _string(b"none") + _string(b"none") + _string(b"")
            + (1).to_bytes(4, "big") + _string(blob) + _string(secret))
    text = base64.b64encode(body).decode()
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    private = "\n".join(["-----BEGIN OPENSSH PRIVATE KEY-----", *lines,
                         "-----END OPENSSH PRIVATE KEY-----", ""])
    return KeyPair(private, f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}")


_KEY_TYPE = b"ssh-ed25519"


def _string(data: bytes) -> bytes:
    """SSH's `string`: a 32-bit big-endian length, then the bytes (RFC 4251)."""
    return len(data).to_bytes(4, "big") + data


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
