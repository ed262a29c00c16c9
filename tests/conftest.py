"""Session-wide setup for the suite: an isolated hv state root, the guest, a clean end.

Integration tests boot real guests (TCG here, KVM where usable) through the real `hv`
CLI. They share one state root per session so libvirt's capability cache and the images
are made once. At the end every domain of that root is destroyed and the suite fails if a
QEMU process of this root is still alive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HV = [sys.executable, "-m", "cli"]

# The ^C tests send SIGINT as a terminal would. A suite started in the background of a
# non-interactive shell (`make test &`, a CI runner's job) inherits SIGINT ignored, and an
# ignored signal stays ignored across exec: every hv the tests start would then shrug ^C
# off. The CLI rightly keeps an ignore it inherited; the suite stands for a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _default_cache() -> Path:
    env = os.environ.get("HV_CACHE")
    if env:
        return Path(env)
    return Path("/var/cache/hv") if os.geteuid() == 0 else Path.home() / ".cache/hv"


@pytest.fixture(scope="session")
def hv_root():
    """A short path: libvirt's monitor sockets live under it (108-byte limit)."""
    root = Path(tempfile.mkdtemp(prefix="hvt-", dir="/tmp"))
    old = {k: os.environ.get(k) for k in ("HV_ROOT", "HV_GUEST_DIR")}
    os.environ["HV_ROOT"] = str(root)
    os.environ.setdefault("HV_GUEST_DIR", str(_default_cache() / "guest" / "current"))
    yield root
    drain_pool(root)
    _destroy_all(root)
    leftovers = _qemu_pids(root)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    stray_virtiofsd = _lingering(b"virtiofsd", root)
    for pid in stray_virtiofsd:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    stray_mux = _lingering(b"hv.guest.mux", root)
    for pid in stray_mux:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    stray_links = _hv_links(root)  # before the root goes: the links' alias names it
    shutil.rmtree(root, ignore_errors=True)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    assert not leftovers, f"QEMU processes outlived the suite: {leftovers}"
    assert not stray_virtiofsd, f"virtiofsd processes outlived the suite: {stray_virtiofsd}"
    assert not stray_mux, f"exec multiplexers outlived the suite: {stray_mux}"
    assert not stray_links, f"hv bridges/taps outlived the suite: {stray_links}"


def _hv_links(root: Path) -> list[str]:
    """The hv bridges and taps of this state root still on the host, removed (by name)."""
    from hv.network import datapath

    links = datapath.hv_links(datapath.owner_tag(root))
    if links and datapath.can_admin():  # taps first, then the bridges they were on
        datapath.delete_links(sorted(links, key=lambda n: n.startswith("hvbr-")))
    return sorted(links)


def _pids(binary: bytes, root: Path) -> list[int]:
    """Processes of `binary` whose command line names a path under `root`."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if binary in cmd and str(root).encode() in cmd:
            pids.append(int(p.name))
    return pids


def _qemu_pids(root: Path) -> list[int]:
    return _pids(b"qemu-system", root)


def _lingering(binary: bytes, root: Path, grace: float = 3.0) -> list[int]:
    """Processes of `binary` for `root` still alive `grace` seconds on: virtiofsd (tests keep
    every bind source under the root) and exec multiplexers (`python -m hv.guest.mux
    ROOT/containers/ID`) each exit by themselves when their QEMU / guest connection does."""
    deadline = time.monotonic() + grace
    while True:
        pids = _pids(binary, root)
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def drain_pool(root: Path) -> None:
    """The warm pool's VMs of `root` gone (a run with HV_POOL=N leaves them, as it should):
    before a root's leak checks and its removal, and where a test counts hv's links. In a
    child: opening libvirt here would set LIBVIRT_LOG_OUTPUTS in this process's environment
    for every later hv the suite starts."""
    if not (root / "pool").is_dir():
        return
    subprocess.run([sys.executable, "-c", "from hv.config import Config\n"
                    "from hv.engine import Engine\n"
                    "Engine(Config.from_environ()).drain_pool()"],
                   env=dict(os.environ, HV_ROOT=str(root), PYTHONPATH=str(REPO)), cwd=REPO,
                   check=True, timeout=180)


def _destroy_all(root: Path) -> None:
    if not (root / "libvirt").exists():
        return
    from hv.config import Config
    from hv.runtime.connection import Libvirt

    config = Config.from_environ(dict(os.environ, HV_ROOT=str(root)))
    with Libvirt(config.paths, config.host).connect() as conn:
        for dom in conn.listAllDomains():
            try:
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
            except Exception:
                pass


class Hv:
    """Runs the real CLI in a subprocess, as a user would."""

    def __init__(self, root: Path):
        self.root = root

    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        env["HV_ROOT"] = str(self.root)
        env["PYTHONPATH"] = str(REPO)
        env.update(extra or {})
        return env

    def __call__(self, *args: str, input: bytes | str | None = None, timeout: float = 240,
                 env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
        text = not isinstance(input, bytes)
        proc = subprocess.run(
            [*HV, *args], input=input, capture_output=True, timeout=timeout, text=text,
            env=self.env(env), cwd=REPO,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"hv {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen([*HV, *args], env=self.env(kw.pop("env", None)), cwd=REPO, **kw)

    def wait_for(self, predicate, timeout: float = 120, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError("condition not met in time")


@pytest.fixture(scope="session")
def hv(hv_root) -> Hv:
    return Hv(hv_root)


@pytest.fixture(scope="session")
def test_images_dir() -> Path:
    d = Path(os.environ.get("HV_TEST_IMAGES", _default_cache() / "images" / "out"))
    if not (d / "busybox.oci.tar").exists():
        pytest.fail(f"no test images in {d}: run 'make images' (make test does it)")
    return d


@pytest.fixture(scope="session")
def busybox(hv, test_images_dir) -> str:
    """The offline busybox image, loaded once per session as busybox:latest."""
    if hv("images", "-q", "busybox:latest").stdout.strip() == "":
        hv("load", "-i", str(test_images_dir / "busybox.oci.tar"), check=True)
    return "busybox"


@pytest.fixture
def net_admin():
    """Networks need CAP_NET_ADMIN: as root (CI, `make test`) its absence is a defect of the
    machine hv runs on, not a reason to skip; an unprivileged developer run skips."""
    from hv.network import datapath

    if datapath.can_admin():
        return
    if os.geteuid() == 0:
        pytest.fail("hv runs as root but cannot make network links (CAP_NET_ADMIN missing)")
    pytest.skip("needs CAP_NET_ADMIN (root)")
