"""hv writes OpenSSH's key formats itself; every reader hv relies on must accept them."""

import base64
import io
import subprocess

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hv.guest import keys


def test_private_key_loads_in_cryptography_and_matches_the_public_line():
    pair = keys.generate("hv-test")
    key = serialization.load_ssh_private_key(pair.private_openssh.encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    assert pair.public_line == f"{public} hv-test"


def test_private_key_loads_in_paramiko_and_signs():
    pair = keys.generate("hv-test")
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(pair.private_openssh))
    assert pair.public_line.split()[1] == key.get_base64()
    public = paramiko.Ed25519Key(data=base64.b64decode(pair.public_line.split()[1]))
    sig = key.sign_ssh_data(b"hello")
    sig.rewind()
    assert public.verify_ssh_sig(b"hello", sig)
    sig.rewind()
    assert not public.verify_ssh_sig(b"other", sig)


def test_layout_matches_openssh():
    text = keys.generate("c").private_openssh
    lines = text.splitlines()
    assert lines[0] == "-----BEGIN OPENSSH PRIVATE KEY-----"
    assert lines[-1] == "-----END OPENSSH PRIVATE KEY-----"
    assert all(len(line) <= 70 for line in lines[1:-1])
    assert text.endswith("\n")


def test_keys_are_fresh():
    assert keys.generate("a").public_line != keys.generate("a").public_line


def test_openssh_reads_the_private_key(tmp_path):
    pair = keys.generate("hv-test")
    path = tmp_path / "id"
    keys.write_private(path, pair.private_openssh)
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True,
                         text=True, check=True).stdout
    assert out.split()[:2] == pair.public_line.split()[:2]
