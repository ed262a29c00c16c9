"""`hv system service tcp://…` with TLS (issue 13): mutual TLS as dockerd's `--tlsverify`.

A CA, a server certificate (SAN 127.0.0.1 and localhost) and client certificates are made
here with `cryptography`; the real `docker --tlsverify` CLI and docker-py's TLSConfig drive
the service; clients without a certificate, or with one from another CA, are refused at the
handshake and the service goes on serving. An open TCP address without TLS is refused
before anything listens. Every service started here is stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.pki import Pki, https_get

pytestmark = pytest.mark.vm

DOCKER = shutil.which("docker")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, ctx: ssl.SSLContext, path: str = "/_ping") -> tuple[int, bytes]:
    return https_get(port, ctx, path, timeout=30)


class TlsService:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path, pki: Pki,
                 config: Path) -> None:
        self.proc, self.port, self.log, self.pki, self.config = proc, port, log, pki, config
        self.host = f"tcp://127.0.0.1:{port}"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def docker(self, *args: str, tls: bool = True, timeout: float = 240,
               check: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, DOCKER_CONFIG=str(self.config))
        for k in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            env.pop(k, None)
        flags = ["--tlsverify", "--tlscacert", str(self.pki.ca), "--tlscert",
                 str(self.pki.client_cert), "--tlskey", str(self.pki.client_key)] if tls else []
        p = subprocess.run([DOCKER, *flags, "-H", self.host, *args], capture_output=True,
                           text=True, timeout=timeout, env=env, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {p.returncode}:\n"
                                 f"{p.stdout}\n{p.stderr}\n--- service log:\n{self.tail()}")
        return p


def _start(hv, pki: Pki, work: Path, *tls_args: str) -> TlsService:
    port = _free_port()
    log = work / f"service-{port}.log"
    with open(log, "ab") as out:
        proc = hv.popen("system", "service", f"tcp://127.0.0.1:{port}", "--log-level", "debug",
                        *tls_args, stdout=out, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL)
    svc = TlsService(proc, port, log, pki, work / "docker-config")
    svc.config.mkdir(exist_ok=True)
    ctx = pki.context(pki.client_cert, pki.client_key)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the service exited {proc.returncode}:\n{svc.tail()}")
        with contextlib.suppress(OSError):
            if _get(port, ctx)[0] == 200:
                return svc
        if time.monotonic() > deadline:
            _stop(svc)
            raise AssertionError(f"the service did not answer:\n{svc.tail()}")
        time.sleep(0.1)


def _stop(svc: TlsService) -> None:
    if svc.proc.poll() is None:
        svc.proc.send_signal(signal.SIGTERM)
        try:
            svc.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            svc.proc.kill()
            svc.proc.wait()
            raise AssertionError("the service did not stop on SIGTERM") from None
    assert svc.proc.returncode == 0, svc.tail()


@pytest.fixture(scope="module")
def tls_service(hv, busybox, pki, tmp_path_factory):
    if DOCKER is None:
        pytest.fail("the docker CLI is not on PATH (make setup installs the test clients)")
    svc = _start(hv, pki, tmp_path_factory.mktemp("api-tls"), "--tls-cert",
                 str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-ca", str(pki.ca))
    try:
        yield svc
    finally:
        _stop(svc)


@pytest.fixture(autouse=True)
def _service_log_on_failure(request):
    yield
    if "tls_service" in request.fixturenames:
        svc = request.getfixturevalue("tls_service")
        print(f"--- service log ({svc.log}):\n{svc.tail()}")


def test_docker_cli_with_tlsverify(tls_service):
    p = tls_service.docker("version", "--format", "{{.Server.APIVersion}}", check=True)
    assert p.stdout.strip() == "1.50"
    p = tls_service.docker("run", "--rm", "busybox", "echo", "hi")
    assert (p.returncode, p.stdout) == (0, "hi\n"), p.stderr + tls_service.tail()
    # stdin through TLS: the client's end of it (a close_notify) ends the process's stdin
    p = tls_service.docker("run", "-i", "--rm", "busybox", "sh", "-c", "cat; echo done",
                           input="one\ntwo\n")
    assert (p.returncode, p.stdout) == (0, "one\ntwo\ndone\n"), p.stderr + tls_service.tail()
    # DOCKER_CERT_PATH's layout, as README shows it
    env = dict(os.environ, DOCKER_CONFIG=str(tls_service.config), DOCKER_HOST=tls_service.host,
               DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(tls_service.pki.cert_path))
    p = subprocess.run([DOCKER, "images", "--format", "{{.Repository}}"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert p.returncode == 0 and "busybox" in p.stdout.split(), p.stderr


def test_docker_py_with_tls_config(tls_service, monkeypatch):
    import docker

    # requests lets these replace the session's CA (docker-py's ca_cert) on every request
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)

    pki = tls_service.pki
    tls = docker.tls.TLSConfig(client_cert=(str(pki.client_cert), str(pki.client_key)),
                               ca_cert=str(pki.ca), verify=True)
    client = docker.DockerClient(base_url=f"https://127.0.0.1:{tls_service.port}", tls=tls,
                                 version="1.50", timeout=120)
    try:
        assert client.ping() is True
        assert client.version()["ApiVersion"] == "1.50"
        assert any("busybox:latest" in i.tags for i in client.images.list())
        assert client.images.get("busybox").history()[0]["Tags"] == ["busybox:latest"]
    finally:
        client.close()


def _refused(port: int, ctx: ssl.SSLContext | None) -> str:
    """What a client without an accepted certificate (or without TLS) gets: no HTTP answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            if ctx is None:
                raw.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
                data = raw.recv(4096)
                assert not data.startswith(b"HTTP/"), data
                return "no HTTP over plain TCP"
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                # TLS 1.3: the server's verdict on the client certificate comes after the
                # client's side of the handshake, with the first read
                s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n")
                data = s.recv(4096)
                assert not data, data
                return "closed"
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
        return type(e).__name__


def test_clients_without_an_accepted_certificate_are_refused(tls_service):
    pki, port = tls_service.pki, tls_service.port
    assert _refused(port, pki.context())  # no client certificate
    assert _refused(port, pki.context(pki.rogue_cert, pki.rogue_key))  # another CA's
    assert _refused(port, None)  # plain HTTP
    p = tls_service.docker("version", "--format", "{{.Server.APIVersion}}", tls=False)
    assert p.returncode != 0 and p.stdout.strip() != "1.50"  # the docker CLI without TLS
    env = dict(os.environ, DOCKER_CONFIG=str(tls_service.config))
    p = subprocess.run([DOCKER, "--tls", "-H", tls_service.host, "version", "--format",
                        "{{.Server.APIVersion}}"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode != 0 and p.stdout.strip() != "1.50"  # TLS, but no certificate
    log = tls_service.tail()
    assert "TLS handshake with 127.0.0.1:" in log and "failed" in log, log
    # still serving
    assert _get(port, pki.context(pki.client_cert, pki.client_key))[0] == 200


def test_a_silent_client_does_not_hold_up_others(tls_service):
    """The handshake runs on the connection's thread: a client that connects and says
    nothing does not stop the next one being served."""
    pki = tls_service.pki
    with socket.create_connection(("127.0.0.1", tls_service.port), timeout=30):
        t0 = time.monotonic()
        status, body = _get(tls_service.port, pki.context(pki.client_cert, pki.client_key),
                            "/version")
        assert status == 200 and json.loads(body)["ApiVersion"] == "1.50"
        assert time.monotonic() - t0 < 10


def test_tls_without_a_ca_is_for_loopback(hv, pki, tmp_path):
    """--tls-cert/--tls-key alone: encrypted, clients not authenticated (loopback only)."""
    svc = _start(hv, pki, tmp_path, "--tls-cert", str(pki.server_cert), "--tls-key",
                 str(pki.server_key))
    try:
        assert _get(svc.port, pki.context())[0] == 200  # no client certificate needed
    finally:
        _stop(svc)


@pytest.mark.parametrize("extra", [[], ["--tls-cert", "CERT", "--tls-key", "KEY"]])
def test_an_open_address_needs_mutual_tls(hv, pki, extra):
    port = _free_port()
    args = [{"CERT": str(pki.server_cert), "KEY": str(pki.server_key)}.get(a, a) for a in extra]
    p = hv("system", "service", f"tcp://0.0.0.0:{port}", *args, timeout=60)
    assert p.returncode == 125, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Error: refusing to listen on 0.0.0.0"), lines
    assert lines[1].startswith("hint: ") and "--tls-ca" in lines[1]
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.settimeout(5)
        s.connect(("127.0.0.1", port))


def test_bad_tls_files_are_refused_before_listening(hv, pki, tmp_path):
    port = _free_port()
    p = hv("system", "service", f"tcp://127.0.0.1:{port}", "--tls-cert", str(pki.server_cert),
           "--tls-key", str(pki.rogue_key), "--tls-ca", str(pki.ca), timeout=60)
    assert p.returncode == 125 and "hint:" in p.stderr, p.stderr
    p = hv("system", "service", f"tcp://127.0.0.1:{port}", "--tls-ca", str(pki.ca), timeout=60)
    assert p.returncode == 125 and "--tls-cert and --tls-key" in p.stderr, p.stderr
    help_text = hv("system", "service", "--help", check=True).stdout
    assert "--tls-cert" in help_text and "--tls-ca" in help_text and "mutual TLS" in help_text
