"""`hv system service` driven by real clients: the `docker` CLI (28.2) and docker-py.

One service per module, on the session's state root; one long-running container shared by
the exec/logs/inspect tests, so few VMs boot. Every process started here is stopped by PID.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures import images as fx
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.vm

DOCKER = shutil.which("docker")
SHARED = "api-shared"


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=120)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(self.path)


class Service:
    def __init__(self, sock: Path, proc: subprocess.Popen, log: Path, config: Path) -> None:
        self.sock, self.proc, self.log, self.config = sock, proc, log, config
        self.url = f"unix://{sock}"

    def docker(self, *args: str, input: str | None = None, timeout: float = 240,
               check: bool = False) -> subprocess.CompletedProcess:
        env = dict(os.environ, DOCKER_CONFIG=str(self.config))
        env.pop("DOCKER_HOST", None)
        p = subprocess.run([DOCKER, "-H", self.url, *args], input=input, capture_output=True,
                           text=True, timeout=timeout, env=env,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {p.returncode}:\n"
                                 f"{p.stdout}\n{p.stderr}\n--- service log:\n{self.tail()}")
        return p

    def request(self, method: str, path: str, body: object = None,
                raw: bytes | None = None) -> tuple[int, bytes, http.client.HTTPResponse]:
        conn = UnixHTTP(str(self.sock))
        try:
            data = raw if raw is not None else (json.dumps(body).encode()
                                                if body is not None else None)
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp
        finally:
            conn.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _start(hv, sock: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return hv.popen("system", "service", f"unix://{sock}", "--log-level", "debug",
                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait_ready(svc: Service) -> None:
    deadline = time.monotonic() + 60
    while True:
        if svc.proc.poll() is not None:
            raise AssertionError(f"the service exited {svc.proc.returncode}:\n{svc.tail()}")
        with contextlib.suppress(OSError):
            if svc.request("GET", "/_ping")[0] == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"the service did not answer:\n{svc.tail()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def service(hv, busybox, tmp_path_factory):
    if DOCKER is None:
        pytest.fail("the docker CLI is not on PATH (make setup installs the test clients)")
    work = tmp_path_factory.mktemp("api")
    sock = hv.root / "api.sock"
    log = work / "service.log"
    svc = Service(sock, _start(hv, sock, log), log, work / "docker-config")
    svc.restart = lambda: _start(hv, sock, log)  # type: ignore[attr-defined]
    svc.config.mkdir()
    try:
        _wait_ready(svc)
        yield svc
    finally:
        with contextlib.suppress(Exception):
            svc.docker("rm", "-f", SHARED, timeout=60)
        proc = svc.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("the service did not stop on SIGTERM") from None
    assert proc.returncode == 0, svc.tail()
    assert not sock.exists(), "the service left its socket behind"


@pytest.fixture(autouse=True)
def _service_log_on_failure(request):
    """The service's log tail in a failing test's report (printed after each test that used
    the service; pytest shows it only when the test failed)."""
    yield
    if "service" in request.fixturenames:
        svc = request.getfixturevalue("service")
        print(f"--- service log ({svc.log}):\n{svc.tail()}")


@pytest.fixture(scope="module")
def shared(service):
    """One running container for exec, logs, inspect and docker-py's exec_run."""
    p = service.docker("run", "-d", "--name", SHARED, "busybox", "sh", "-c",
                       "echo started; echo oops >&2; exec sleep 600", check=True)
    cid = p.stdout.strip()
    assert len(cid) == 64, p.stdout
    return cid


# --- negotiation, system, errors --------------------------------------------------------------


def test_ping_version_info(service, hv):
    status, body, resp = service.request("GET", "/_ping")
    assert (status, body) == (200, b"OK")
    assert resp.getheader("API-Version") == "1.50" and resp.getheader("OSType") == "linux"
    assert resp.getheader("Docker-Experimental") == "false"
    status, body, resp = service.request("HEAD", "/_ping")
    assert status == 200 and body == b"" and resp.getheader("Builder-Version") == "1"
    p = service.docker("version", "--format", "{{.Server.APIVersion}} {{.Server.MinAPIVersion}}",
                       check=True)
    assert p.stdout.strip() == "1.50 1.24"
    p = service.docker("info", "--format",
                       "{{.DefaultRuntime}} {{.Isolation}} {{.OSType}} {{.NCPU}}", check=True)
    assert p.stdout.split() == ["hv", "vm", "linux", str(os.cpu_count())]
    info = json.loads(service.request("GET", "/v1.50/info")[1])
    assert info["Accelerator"] in ("KVM", "TCG") and "hv" in info["Runtimes"]
    release = Path(os.environ["HV_GUEST_DIR"], "release")
    if release.exists():
        assert info["KernelVersion"] == release.read_text().strip()


def test_errors_are_dockers(service):
    status, body, _ = service.request("GET", "/v1.50/containers/no-such-thing/json")
    assert status == 404 and json.loads(body) == {"message": "No such container: no-such-thing"}
    status, body, _ = service.request("GET", "/v1.12/version")
    assert status == 400 and "Minimum supported API version is 1.24" in json.loads(body)["message"]
    status, body, _ = service.request("GET", "/v1.51/version")
    assert status == 400 and "Maximum supported API version is 1.50" in json.loads(body)["message"]
    status, body, _ = service.request("POST", "/v1.50/containers/create", raw=b"{not json")
    assert status == 400 and "invalid JSON" in json.loads(body)["message"]
    status, body, _ = service.request("POST", "/v1.50/containers/create",
                                      {"Image": "no-such-image-here"})
    assert status == 404
    assert json.loads(body)["message"] == "No such image: no-such-image-here:latest"
    status, body, _ = service.request("GET", "/v1.50/no/such/endpoint")
    assert status == 404 and "message" in json.loads(body)
    status, body, _ = service.request("GET", "/v1.50/exec/" + "0" * 64 + "/json")
    assert status == 404 and "No such exec instance" in json.loads(body)["message"]
    p = service.docker("inspect", "no-such-thing")
    assert p.returncode == 1 and "no-such-thing" in p.stderr


def test_conflicts_and_not_modified(service, shared):
    status, body, _ = service.request("POST", f"/v1.50/containers/create?name={SHARED}",
                                      {"Image": "busybox", "Cmd": ["true"]})
    assert status == 409 and "is already in use" in json.loads(body)["message"]
    status, _, _ = service.request("POST", f"/v1.50/containers/{SHARED}/start")
    assert status == 304
    status, body, _ = service.request("DELETE", f"/v1.50/containers/{SHARED}")
    assert status == 409 and "container is running" in json.loads(body)["message"]


# --- the docker CLI ---------------------------------------------------------------------------


def test_run_rm_output_and_exit_code(service):
    p = service.docker("run", "--rm", "--name", "api-rm", "busybox", "sh", "-c",
                       "echo hi; echo err >&2; exit 3")
    assert p.returncode == 3, p.stderr + service.tail()
    assert p.stdout == "hi\n"
    assert "err\n" in p.stderr
    names = service.docker("ps", "-a", "--format", "{{.Names}}", check=True).stdout.split()
    assert "api-rm" not in names


def test_run_without_rm_then_start_attached(service):
    p = service.docker("run", "--name", "api-again", "busybox", "sh", "-c", "echo run; exit 4")
    assert (p.returncode, p.stdout) == (4, "run\n"), p.stderr
    p = service.docker("start", "-a", "api-again")  # the next run's output, its exit code
    assert (p.returncode, p.stdout) == (4, "run\n"), p.stderr + service.tail()
    p = service.docker("run", "--rm", "busybox", "no-such-command")
    assert p.returncode == 127 and "executable file not found" in p.stderr
    service.docker("rm", "api-again", check=True)


def test_clients_at_once(service):
    """Ten `docker run --rm` at once (issue 13's number): each its own output and exit code
    (the service serves them on threads; each libvirt operation forks a child of its own)."""
    env = dict(os.environ, DOCKER_CONFIG=str(service.config))
    procs = [subprocess.Popen([DOCKER, "-H", service.url, "run", "--rm", "busybox", "sh", "-c",
                               f"echo c{i}; exit {i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(1, 11)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        results.append((p.returncode, out, err))
    assert [(code, out) for code, out, _ in results] == \
        [(i, f"c{i}\n") for i in range(1, 11)], (results, service.tail())


def test_run_interactive_stdin_ends(service):
    p = service.docker("run", "-i", "--rm", "busybox", "cat", input="hi\nthere\n", timeout=180)
    assert p.returncode == 0, p.stderr + service.tail()
    assert p.stdout == "hi\nthere\n"


def test_hv_and_docker_share_the_root(service, shared, hv):
    """While the service runs, the daemonless `hv` CLI works on the same state root."""
    p = hv("ps", "--format", "{{.Names}}", check=True)
    assert SHARED in p.stdout.split()
    assert hv("exec", SHARED, "echo", "from-hv", check=True).stdout == "from-hv\n"
    p = hv("run", "--rm", "busybox", "echo", "hv-run-beside-the-service", check=True)
    assert p.stdout == "hv-run-beside-the-service\n"
    p = service.docker("exec", SHARED, "echo", "from-docker", check=True)
    assert p.stdout == "from-docker\n"


def test_detached_ps_logs_inspect_exec(service, shared):
    rows = service.docker("ps", "--format", "{{.ID}} {{.Names}} {{.Status}}",
                          check=True).stdout.splitlines()
    mine = [r for r in rows if r.split()[1] == SHARED]
    assert mine and mine[0].split()[0] == shared[:12] and " Up " in f" {mine[0]} "
    service.docker("ps", "-a", check=True)
    deadline = time.monotonic() + 60
    while True:
        p = service.docker("logs", SHARED, check=True)
        if p.stdout == "started\n" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert p.stdout == "started\n" and p.stderr == "oops\n"
    p = service.docker("inspect", "-f", "{{.State.Running}} {{.Name}} {{.Config.Image}}", SHARED,
                       check=True)
    assert p.stdout.strip() == "true /api-shared busybox"
    doc = json.loads(service.docker("inspect", SHARED, check=True).stdout)[0]
    assert doc["Created"].endswith("Z") and isinstance(doc["Config"]["Env"], list)
    p = service.docker("exec", SHARED, "sh", "-c", "echo $((6*7)); echo e >&2", check=True)
    assert p.stdout == "42\n" and p.stderr == "e\n"
    p = service.docker("exec", SHARED, "sh", "-c", "exit 5")
    assert p.returncode == 5
    p = service.docker("exec", "-i", SHARED, "cat", input="through stdin\n", check=True)
    assert p.stdout == "through stdin\n"


def test_lifecycle_logs_follow_pause_kill_cp_restart(service, tmp_path):
    name = "api-life"
    service.docker("run", "-d", "--name", name, "busybox", "sh", "-c",
                   "i=0; while :; do echo tick $i; i=$((i+1)); sleep 1; done", check=True)
    env = dict(os.environ, DOCKER_CONFIG=str(service.config))
    follow = subprocess.Popen([DOCKER, "-H", service.url, "logs", "-f", name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        got = [follow.stdout.readline() for _ in range(3)]
    finally:
        follow.kill()
        follow.wait()
    assert got == [b"tick 0\n", b"tick 1\n", b"tick 2\n"], got
    service.docker("pause", name, check=True)
    p = service.docker("ps", "--filter", f"name={name}", "--format", "{{.Status}}", check=True)
    assert p.stdout.strip().endswith("(Paused)"), p.stdout
    service.docker("unpause", name, check=True)
    assert service.docker("top", name, check=True).stdout.splitlines()[0].split()[:2] == \
        ["UID", "PID"]
    service.docker("kill", name, check=True)
    p = service.docker("ps", "-a", "--filter", f"name={name}", "--format", "{{.Status}}",
                       check=True)
    assert p.stdout.startswith("Exited (137)"), p.stdout
    assert service.docker("wait", name, check=True).stdout.strip() == "137"
    p = service.docker("kill", name)
    assert p.returncode == 1 and "is not running" in p.stderr
    # cp out of a stopped container (hv boots it in maintenance mode for the copy)
    service.docker("cp", f"{name}:/etc/passwd", str(tmp_path / "passwd"), check=True)
    assert (tmp_path / "passwd").read_text().startswith("root:")
    p = subprocess.run([DOCKER, "-H", service.url, "start", name], capture_output=True,
                       text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stderr
    p = service.docker("inspect", "-f", "{{.State.Status}}", name, check=True)
    assert p.stdout.strip() == "running", p.stdout + service.tail()
    service.docker("restart", "-t", "1", name, check=True)
    assert service.docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() == "true"
    # rename, running: the new name everywhere, the old one free
    service.docker("rename", name, f"{name}-2", check=True)
    assert service.docker("inspect", "-f", "{{.Name}}", f"{name}-2",
                          check=True).stdout.strip() == f"/{name}-2"
    assert service.docker("exec", f"{name}-2", "echo", "ok", check=True).stdout == "ok\n"
    p = service.docker("rename", f"{name}-2", f"{name}-2")
    assert p.returncode == 1 and "same name as its current name" in p.stderr
    service.docker("rm", "-f", f"{name}-2", check=True)
    p = service.docker("inspect", name)
    assert p.returncode == 1


def test_cp_both_ways_with_a_symlink_and_modes(service, shared, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("hello\n")
    (src / "sub").chmod(0o750)
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "link").symlink_to("sub/f")
    service.docker("cp", str(src), f"{SHARED}:/tmp/", check=True)
    p = service.docker("exec", SHARED, "sh", "-c",
                       "stat -c '%n %a' /tmp/src/sub /tmp/src/run.sh; readlink /tmp/src/link; "
                       "cat /tmp/src/link", check=True)
    assert p.stdout == "/tmp/src/sub 750\n/tmp/src/run.sh 755\nsub/f\nhello\n"
    out = tmp_path / "out"
    out.mkdir()
    service.docker("cp", f"{SHARED}:/tmp/src", str(out), check=True)
    assert os.readlink(out / "src" / "link") == "sub/f"
    assert (out / "src" / "sub" / "f").read_text() == "hello\n"
    assert (out / "src" / "sub").stat().st_mode & 0o777 == 0o750
    assert (out / "src" / "run.sh").stat().st_mode & 0o777 == 0o755
    p = service.docker("cp", f"{SHARED}:/no/such/path", str(out))
    assert p.returncode == 1 and "Could not find the file /no/such/path" in p.stderr


def _pty_run(argv: list[str], typed: list[bytes], timeout: float = 180) -> tuple[int, bytes]:
    """Run argv on a real pseudo-terminal, typing each line once the output went quiet."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execvp(argv[0], argv)
    out, i = b"", 0
    deadline, quiet = time.monotonic() + timeout, time.monotonic()
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                out, quiet = out + data, time.monotonic()
            elif i < len(typed) and time.monotonic() - quiet > 1.0 and b"# " in out:
                os.write(fd, typed[i])
                i += 1
    finally:
        os.close(fd)
    if time.monotonic() >= deadline:
        os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), out


def test_run_it_and_exec_it_on_a_terminal(service, shared):
    base = [DOCKER, "-H", service.url]
    code, out = _pty_run([*base, "run", "-it", "--rm", "busybox", "sh"],
                         [b"echo typed-$((1+2))\r", b"exit 7\r"])
    assert code == 7, out
    assert b"typed-3" in out and b"echo typed-$((1+2))" in out  # the shell's echo of the input
    code, out = _pty_run([*base, "exec", "-it", SHARED, "sh"],
                         [b"tty; echo in-exec-$((2*3))\r", b"exit 3\r"])
    assert code == 3, out
    assert b"in-exec-6" in out and b"/dev/pts/" in out


def test_volumes(service):
    assert service.docker("volume", "create", "api-vol", check=True).stdout.strip() == "api-vol"
    assert "api-vol" in service.docker("volume", "ls", "-q", check=True).stdout.split()
    p = service.docker("volume", "inspect", "-f", "{{.Name}} {{.Driver}}", "api-vol", check=True)
    assert p.stdout.strip() == "api-vol local"
    service.docker("volume", "rm", "api-vol", check=True)
    assert "api-vol" not in service.docker("volume", "ls", "-q", check=True).stdout.split()
    p = service.docker("volume", "inspect", "api-vol")
    assert p.returncode == 1


def test_stats_df_and_a_labelled_prune(service, shared):
    p = service.docker("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", SHARED,
                       check=True)
    name, usage = p.stdout.split(" ", 1)
    assert name == SHARED and usage.strip().endswith("/ 512MiB"), p.stdout
    p = service.docker("system", "df", "--format", "{{.Type}}", check=True)
    assert {"Images", "Containers", "Local Volumes"} <= set(p.stdout.splitlines())
    service.docker("run", "--name", "api-prunable", "--label", "api-test=prune", "busybox",
                   "true", check=True)
    p = service.docker("inspect", "-f", "{{index .Config.Labels \"api-test\"}}",
                       "api-prunable", check=True)
    assert p.stdout.strip() == "prune"
    assert "api-prunable" in service.docker(
        "ps", "-a", "--filter", "label=api-test=prune", "--format", "{{.Names}}").stdout
    p = service.docker("container", "prune", "-f", "--filter", "label=api-test=prune",
                       check=True)
    assert "Deleted Containers:" in p.stdout
    assert service.docker("inspect", "api-prunable").returncode == 1
    assert service.docker("inspect", SHARED).returncode == 0  # running: kept


def test_events(service):
    t0 = time.time()
    service.docker("volume", "create", "api-ev-vol", check=True)
    service.docker("volume", "rm", "api-ev-vol", check=True)
    p = service.docker("events", "--since", f"{t0:.3f}", "--until", f"{time.time():.3f}",
                       "--filter", "type=volume", "--format", "{{.Action}} {{.Actor.ID}}",
                       timeout=30, check=True)
    assert p.stdout.splitlines() == ["create api-ev-vol", "destroy api-ev-vol"]
    env = dict(os.environ, DOCKER_CONFIG=str(service.config))
    watch = subprocess.Popen([DOCKER, "-H", service.url, "events", "--filter",
                              "container=api-ev", "--format", "{{.Action}}"],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(1.0)  # the stream has read the table
        service.docker("run", "--rm", "--name", "api-ev", "busybox", "true", check=True)
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while "destroy" not in seen and time.monotonic() < deadline:
            seen.append(watch.stdout.readline().strip())
    finally:
        watch.kill()
        watch.wait()
    assert [a for a in seen if a in ("create", "start", "die", "destroy")] == \
        ["create", "start", "die", "destroy"], seen


def test_pull_images_tag_rmi(service, tmp_path):
    layout = tmp_path / "layout"
    fx.busybox_image(layout, "latest")
    with Registry(tmp_path / "registry") as reg:
        reg.push(layout, "latest", "apibox:latest")
        ref = f"{reg.host}/apibox:latest"
        p = service.docker("pull", ref, check=True)
    assert "Pulling from apibox" in p.stdout and f"Status: Downloaded newer image for {ref}" \
        in p.stdout, p.stdout
    rows = service.docker("images", "--format", "{{.Repository}}:{{.Tag}}", check=True).stdout
    assert ref in rows.split()
    service.docker("tag", ref, "api-retagged:v1", check=True)
    assert "api-retagged:v1" in service.docker("images", "--format",
                                               "{{.Repository}}:{{.Tag}}").stdout.split()
    p = service.docker("rmi", "api-retagged:v1", check=True)
    assert "Untagged: api-retagged:v1" in p.stdout
    p = service.docker("rmi", ref, check=True)
    assert f"Untagged: {ref}" in p.stdout and "Deleted: sha256:" in p.stdout


# --- docker-py --------------------------------------------------------------------------------


def test_docker_py(service, shared):
    import docker

    client = docker.DockerClient(base_url=service.url, timeout=240)
    try:
        assert client.version()["ApiVersion"] == "1.50"
        c = client.containers.run("busybox", ["sh", "-c", "echo out; echo err >&2; exit 4"],
                                  detach=True)
        assert c.wait()["StatusCode"] == 4
        assert c.logs(stderr=False) == b"out\n"
        assert c.logs(stdout=False) == b"err\n"
        c.reload()
        assert c.status == "exited" and c.attrs["State"]["ExitCode"] == 4
        c.remove()
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(c.id)
        box = client.containers.get(SHARED)
        code, out = box.exec_run(["sh", "-c", "echo hi; exit 2"])
        assert (code, out) == (2, b"hi\n")
        # the command starts after the 101: none of its output may hide in docker-py's
        # buffer of the answer's headers (it did, one exec in a few, before)
        for i in range(10):
            assert tuple(box.exec_run(["echo", f"n{i}"])) == (0, f"n{i}\n".encode())
        code, (out, err) = box.exec_run(["sh", "-c", "echo o; echo e >&2"], demux=True)
        assert (code, out, err) == (0, b"o\n", b"e\n")
        assert client.containers.run("busybox", ["echo", "hello"], remove=True) == b"hello\n"
        chunks = box.exec_run(["sh", "-c", "echo a; sleep 1; echo b"], stream=True).output
        assert b"".join(chunks) == b"a\nb\n"
        sock = box.exec_run(["cat"], socket=True, stdin=True).output
        raw = getattr(sock, "_sock", sock)
        raw.sendall(b"via socket\n")
        raw.shutdown(socket.SHUT_WR)  # stdin ends; the output still comes
        data = b""
        while chunk := raw.recv(65536):
            data += chunk
        raw.close()
        assert data == b"\x01\x00\x00\x00\x00\x00\x00\x0bvia socket\n"
        import io
        import tarfile

        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("put.txt")
            info.size, info.mode = 4, 0o640
            tar.addfile(info, io.BytesIO(b"data"))
        assert box.put_archive("/tmp", buf.getvalue())
        bits, stat = box.get_archive("/tmp/put.txt")
        assert stat["name"] == "put.txt" and stat["size"] == 4 and stat["mode"] & 0o777 == 0o640
        with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as tar:
            assert tar.extractfile("put.txt").read() == b"data"
        c = client.containers.run("busybox", ["sh", "-c", "echo one; sleep 1; echo two"],
                                  detach=True)
        assert list(c.logs(stream=True, follow=True)) in ([b"one\n", b"two\n"],
                                                          [b"one\ntwo\n"])
        c.remove(force=True)
        assert any(v.name == "api-py-vol" for v in [client.volumes.create("api-py-vol")])
        client.volumes.get("api-py-vol").remove()
    finally:
        client.close()


# --- docker-compose -------------------------------------------------------------------------


def test_compose_up_ps_logs_down(service, tmp_path):
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.fail("docker-compose is not installed (make setup installs Debian's)")
    project = tmp_path / "proj"
    project.mkdir()
    (project / "docker-compose.yml").write_text(
        'version: "3"\nservices:\n  web:\n    image: busybox\n'
        "    command: sh -c 'echo compose-up > /data/f; cat /data/f; exec sleep 600'\n"
        "    network_mode: bridge\n    volumes:\n      - data:/data\nvolumes:\n  data:\n")
    env = dict(os.environ, DOCKER_HOST=service.url, DOCKER_CONFIG=str(service.config),
               COMPOSE_PROJECT_NAME="hvapi")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([compose, *args], cwd=project, env=env, capture_output=True,
                              text=True, timeout=240)

    try:
        p = run("up", "-d")
        assert p.returncode == 0, p.stderr + service.tail()
        p = run("ps")
        assert "hvapi_web_1" in p.stdout and " Up " in p.stdout, p.stdout
        assert "hvapi_data" in service.docker("volume", "ls", "-q", check=True).stdout.split()
        deadline = time.monotonic() + 60
        while "compose-up" not in (p := run("logs")).stdout and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "compose-up" in p.stdout, p.stdout + p.stderr
    finally:
        p = run("down", "-v")
    assert p.returncode == 0, p.stderr
    assert "hvapi_web_1" not in service.docker("ps", "-a", "--format", "{{.Names}}").stdout
    assert "hvapi_data" not in service.docker("volume", "ls", "-q", check=True).stdout.split()


# --- bad input and faults -------------------------------------------------------------------


def test_bad_input_is_answered_and_the_service_keeps_serving(service):
    for body in ({"Image": "busybox", "Cmd": 5}, {"Image": "busybox", "HostConfig": "x"},
                 {"Image": "busybox", "HostConfig": {"Memory": "lots"}}, [1, 2], "text"):
        status, data, _ = service.request("POST", "/v1.50/containers/create", body)
        assert status == 400, (body, data)
        assert json.loads(data)["message"]
    status, data, _ = service.request("POST", "/v1.50/containers/create",
                                      raw=b"x" * (64 * 1024 * 1024 + 1))
    assert status == 413 and "larger than" in json.loads(data)["message"]
    with socket.socket(socket.AF_UNIX) as s:  # not HTTP at all
        s.connect(str(service.sock))
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400 ")
    status, data, _ = service.request("POST", "/v1.50/containers/nope/wait?condition=bogus")
    assert status == 404
    assert service.request("GET", "/_ping")[0] == 200


def _hijack(service, path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(str(service.sock))
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
              "Upgrade: tcp\r\nContent-Length: 0\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101 UPGRADED"), head
    assert b"application/vnd.docker.multiplexed-stream" in head
    return s


def test_clients_leaving_mid_attach_and_mid_exec(service, shared):
    a = _hijack(service, f"/v1.50/containers/{SHARED}/attach?stream=1&stdout=1&stderr=1")
    b = _hijack(service, f"/v1.50/containers/{SHARED}/attach?stream=1&stdout=1&stderr=1")
    a.close()  # gone without a word
    b.close()
    status, data, _ = service.request("POST", f"/v1.50/containers/{SHARED}/exec",
                                      {"Cmd": ["sh", "-c", "sleep 2; echo late"],
                                       "AttachStdout": True})
    exec_id = json.loads(data)["Id"]
    e = _hijack(service, f"/v1.50/exec/{exec_id}/start")
    e.close()
    assert service.docker("exec", SHARED, "echo", "still-serving", check=True).stdout == \
        "still-serving\n"
    assert service.docker("inspect", "-f", "{{.State.Running}}", SHARED).stdout.strip() == "true"


def test_a_sigkilled_service_leaves_containers_running_and_a_new_one_sees_them(service,
                                                                                 shared):
    service.proc.kill()
    service.proc.wait()
    assert service.sock.exists()  # left behind by the killed server
    service.proc = service.restart()
    _wait_ready(service)
    p = service.docker("ps", "--format", "{{.Names}} {{.State}}", check=True)
    assert f"{SHARED} running" in p.stdout.splitlines()
    assert service.docker("exec", SHARED, "echo", "after-restart", check=True).stdout == \
        "after-restart\n"


# --- the course's clean-up script, with the real docker binary --------------------------------

CLEANUP = """\
#!/bin/bash

# remove containers:
docker ps -aq | xargs -r docker rm -f

# remove unused images (those without running containers):
docker images --no-trunc | awk '{ print $3 }' | xargs -r docker rmi

# remove unused volumes:
docker volume ls -qf dangling=true | xargs -r docker volume rm
"""


def test_course_cleanup_script_with_the_real_docker(hv, test_images_dir, tmp_path):
    """On a state root of its own (it removes every image): no shim, `docker` is docker."""
    import tempfile

    from tests.conftest import Hv, _qemu_pids, drain_pool

    own = Hv(Path(tempfile.mkdtemp(prefix="hva-", dir="/tmp")))
    own("load", "-i", str(test_images_dir / "busybox.oci.tar"), check=True)
    sock, log = own.root / "api.sock", tmp_path / "cleanup-service.log"
    svc = Service(sock, _start(own, sock, log), log, tmp_path / "docker-config")
    svc.config.mkdir()
    try:
        _wait_ready(svc)
        svc.docker("volume", "create", "course-named", check=True)
        svc.docker("run", "-d", "--name", "web", "-v", "course-named:/data", "-v", "/cache",
                   "busybox", "sleep", "600", check=True)
        svc.docker("run", "--name", "done", "-v", "other-named:/x", "busybox", "true",
                   check=True)
        svc.docker("volume", "create", "lonely", check=True)
        before = svc.docker("ps", "-aq", check=True).stdout.split()
        assert len(before) == 2
        (tmp_path / "cleanup.sh").write_text(CLEANUP)
        env = dict(os.environ, DOCKER_HOST=svc.url, DOCKER_CONFIG=str(svc.config))
        p = subprocess.run(["bash", str(tmp_path / "cleanup.sh")], capture_output=True,
                           text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr + svc.tail()
        out = p.stdout.splitlines()
        assert sorted(out[:2]) == sorted(before), (out, p.stderr, svc.tail())
        assert "Untagged: busybox:latest" in out
        assert any(line.startswith("Deleted: sha256:") for line in out), out
        for name in ("course-named", "other-named", "lonely"):
            assert name in out, out
        errors = [line for line in p.stderr.splitlines() if line.startswith("Error")]
        assert len(errors) == 1 and "invalid reference format" in errors[0], p.stderr
        assert svc.docker("ps", "-aq", check=True).stdout == ""
        assert svc.docker("images", "-q", check=True).stdout == ""
        assert svc.docker("volume", "ls", "-qf", "dangling=true", check=True).stdout == ""
    finally:
        ids = own("ps", "-aq").stdout.split()
        if ids:
            own("rm", "-f", *ids)
        if svc.proc.poll() is None:
            svc.proc.send_signal(signal.SIGTERM)
            svc.proc.wait(timeout=20)
        drain_pool(own.root)
        left = _qemu_pids(own.root)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(own.root, ignore_errors=True)
    assert not left, f"QEMU outlived the clean-up test: {left}"


# --- testcontainers-python --------------------------------------------------------------------


def test_testcontainers_reaches_a_port_inside_the_vm(service, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", service.url)
    monkeypatch.setenv("DOCKER_CONFIG", str(service.config))
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    import urllib.request

    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    box = DockerContainer("busybox").with_exposed_ports(8080).with_command(
        ["sh", "-c", "mkdir -p /www && echo hello-from-the-vm > /www/index.html && "
         "echo ready && exec httpd -f -p 8080 -h /www"])
    with box:
        wait_for_logs(box, "ready", timeout=120)
        host, port = box.get_container_host_ip(), int(box.get_exposed_port(8080))
        deadline, body = time.monotonic() + 60, b""
        while time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://{host}:{port}/", timeout=5).read()
                break
            except OSError:
                time.sleep(0.3)
        cid = box.get_wrapped_container().id
    assert body == b"hello-from-the-vm\n"
    assert service.request("GET", f"/v1.50/containers/{cid}/json")[0] == 404  # removed
