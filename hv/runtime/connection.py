"""Opening libvirt for exactly one operation.

The embedded driver (`qemu:///embed?root=…`) needs no daemon, but only one process may
hold a root at a time (its driver.pid lock), and — measured with libvirt 9.0 — a process
keeps that lock until it exits, even after closing its last connection. So every libvirt
operation on an embedded root runs in a short-lived forked child (`call`): the lock lives
exactly as long as the operation, and hv processes queue on a flock of their own before
libvirt's lock is tried, so a second terminal waits briefly instead of failing.
`-H`/`HV_HOST` selects a daemon (`qemu:///system`, `qemu+ssh://host/system`), where no lock
is needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from hv.errors import RuntimeFailure, translate
from hv.paths import Paths

LOCK_WAIT_SECONDS = 60.0

QEMU_CONF = """\
# Written by hv for its embedded libvirt driver.
stdio_handler = "file"
security_driver = "none"
namespaces = []
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
# No cgroups: hv sets no cgroup tuning, and with no daemon alive when a guest powers off,
# nobody would remove its machine cgroup (one leaked per container, in every controller).
cgroup_controllers = []
"""


class Libvirt:
    """One state root's libvirt: the embedded driver under it, or a daemon at `host`.

    Holds what a process keeps between operations: the imported module and a connection
    being opened ahead (`preopen`). Built once by the engine from its Config.
    """

    def __init__(self, paths: Paths, host: str | None = None) -> None:
        self.paths = paths
        self.uri = host or f"qemu:///embed?root={paths.libvirt_root()}"
        self.embedded = self.uri.startswith("qemu:///embed")
        self._module = None
        self._preopened: Opened | None = None
        # The parent's ends of every Opened's pipes, so that a child forked by another
        # thread (the Engine API serves each connection on a thread) closes them: a child
        # holding a copy of another's request pipe keeps that one from ever reading EOF,
        # and both wait for the root's lock until it times out (seen: 3 of 4 concurrent
        # `docker run`s failed after 60 s).
        self.forking = threading.Lock()
        self.pipe_ends: set[int] = set()

    def module(self):
        """Import libvirt once, its logs sent to a file and its error printer silenced."""
        if self._module is None:
            self.paths.state_root().mkdir(parents=True, exist_ok=True)
            # read by libvirt's C library when it loads, so it must be in the environment
            os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", f"3:file:{self.paths.libvirt_log()}")
            import libvirt

            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            libvirt.virEventRegisterDefaultImpl()
            self._module = libvirt
        return self._module

    @contextlib.contextmanager
    def connect(self) -> Iterator[object]:
        """A libvirt connection for one operation; closed (and the root released) on exit."""
        libvirt = self.module()
        lock = contextlib.nullcontext()
        if self.embedded:
            _prepare_embed_root(self.paths)
            lock = _queue_lock(self.paths.libvirt_root() / "hv.lock")
        with lock:
            if self.embedded:
                _wait_driver_released(self.paths.libvirt_root())
            conn = _open(libvirt, self.uri)
            try:
                yield conn
            finally:
                with contextlib.suppress(Exception):
                    conn.close()

    def call(self, fn, *args):
        """Run `fn(conn, *args)` with a fresh connection; in a forked child for embedded
        roots. The result and any HvError come back pickled; anything else becomes a
        RuntimeFailure. A connection opened ahead (`preopen`) is let go first: its child
        holds the root's lock until it gets a request, so waiting for the lock beside it
        would never end."""
        self.drop_preopened()
        return Opened(self).call(fn, *args)

    def preopen(self) -> None:
        """Start opening libvirt now, for the one call a command is about to make.

        `hv run` calls this first thing, so libvirt's import and driver start-up (~40 ms)
        run on the second core while Python imports the CLI and makes the disk and seed.
        The command takes it with `take_preopened`; one never taken ends with the process.
        """
        if self._preopened is None and self.embedded:
            # what unpickling a domains.start request imports, ready before it comes
            self._preopened = Opened(self, import_here=False, warm=(
                "hv.runtime.domains", "hv.runtime.forwards", "libvirt_qemu"))

    def take_preopened(self) -> Opened | None:
        """The connection `preopen` started (once), or None."""
        opened, self._preopened = self._preopened, None
        return opened

    def drop_preopened(self) -> None:
        """Let a pre-opened connection go unused (before a long step or another call)."""
        opened = self.take_preopened()
        if opened is not None:
            opened.close()


def _prepare_embed_root(paths: Paths) -> None:
    real, root = paths.libvirt_root_dir(), paths.libvirt_root()
    if root != real:  # a short symlink for a long state root (socket path limit)
        real.mkdir(parents=True, exist_ok=True)
        if not root.is_symlink() or os.readlink(root) != str(real):
            tmp = root.with_name(root.name + f".{os.getpid()}")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(real)
            tmp.replace(root)
            _prune_dangling(root)
    from hv.runtime import capscache

    capscache.trim(real)
    conf = real / "etc" / "qemu.conf"
    if not conf.exists() or conf.read_text() != QEMU_CONF:
        conf.parent.mkdir(parents=True, exist_ok=True)
        tmp = conf.with_suffix(".tmp")
        tmp.write_text(QEMU_CONF)
        tmp.replace(conf)


def _prune_dangling(made: Path) -> None:
    """Remove the short links of state roots that were deleted since (tests make many)."""
    prefix = made.name.rsplit("-", 1)[0] + "-"
    with contextlib.suppress(OSError):
        for link in made.parent.iterdir():
            if link.name.startswith(prefix) and link.is_symlink() and not link.exists():
                with contextlib.suppress(OSError):
                    link.unlink()


@contextlib.contextmanager
def _queue_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeFailure(
                        f"another hv command has held {path.parent} for over "
                        f"{LOCK_WAIT_SECONDS:.0f} seconds",
                        hint="wait for it to finish, or find it with 'fuser -v " f"{path}'",
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)


def _wait_driver_released(root: Path) -> None:
    """Wait while another process still holds the root's driver.pid.

    libvirt keeps that lock until its process is gone, and the hv process before us has
    released hv's queue lock a moment before it exits: opening then fails with only
    "qemu state driver is not active" (the cause is in the log, not the error).
    """
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while _driver_held_elsewhere(root):
        if time.monotonic() > deadline:
            raise RuntimeFailure(
                f"another process has held {root} for over {LOCK_WAIT_SECONDS:.0f} seconds",
                hint="a virsh or libvirt program opened hv's root? find it with "
                f"'fuser -v {root}/run/qemu/driver.pid'")
        time.sleep(0.005)


def _driver_held_elsewhere(root: Path) -> bool:
    """Is the root's driver.pid under another process's POSIX lock (per /proc/locks)?"""
    try:
        st = (root / "run" / "qemu" / "driver.pid").stat()
        locks = Path("/proc/locks").read_text()
    except OSError:
        return False
    # "1: POSIX  ADVISORY  WRITE 5340 00:2b:1234 0 EOF" (waiters are "1: -> POSIX …")
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in locks.splitlines():
        f = line.split()
        if "POSIX" in f and key in f:
            pid = f[f.index(key) - 1]
            if pid.isdigit() and int(pid) != os.getpid():
                return True
    return False


def _open(libvirt, u: str):
    try:
        return libvirt.open(u)
    except libvirt.libvirtError as e:
        err = translate(e, f"cannot open libvirt at {u}")
        err.hint = ("check HV_HOST/-H, and that qemu-system-x86 and libvirt are installed "
                    "('make setup')")
        raise err from None


class Opened:
    """A connection being opened now, for one call later.

    On an embedded root the child forks and opens libvirt (its lock, driver start-up and
    a reconnect to running QEMUs: ~30 ms) while the caller goes on preparing what the call
    needs (a `run`'s disk and seed); `call` then sends the function over a pipe. A daemon
    URI connects when `call` is made. `close` (or a garbage-collected, unused one) lets the
    child go without doing anything.
    """

    def __init__(self, lv: Libvirt, import_here: bool = True,
                 warm: tuple[str, ...] = ()) -> None:
        """`import_here`: import libvirt in this process first (~15 ms), so that every later
        child inherits it; False imports it in the child only, off the caller's path.
        `warm`: modules the child imports once libvirt is open, while the request is made."""
        self.lv = lv
        self.pid = 0
        if not lv.embedded:
            return
        lv.paths.state_root().mkdir(parents=True, exist_ok=True)
        if import_here:
            lv.module()
        with lv.forking:  # pipes made and registered, fork: one thread at a time
            req_r, self._req = os.pipe()
            self._res, res_w = os.pipe()
            others = set(lv.pipe_ends)
            self.pid = os.fork()
            if self.pid != 0:
                lv.pipe_ends.update((self._req, self._res))
        if self.pid == 0:  # child: never returns, whatever happens (a parent gone on ^C)
            try:
                os.close(self._req)
                os.close(self._res)
                for fd in others:  # other threads' Opened pipes (see Libvirt.pipe_ends)
                    with contextlib.suppress(OSError):
                        os.close(fd)
                # answers go through the pipe; `hv run … | cat` must not wait for this child
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    if fd != null:
                        os.dup2(null, fd)
                if null > 2:
                    os.close(null)
                _serve_one(lv, req_r, res_w, warm)
            finally:
                os._exit(1)
        os.close(req_r)
        os.close(res_w)

    def call(self, fn, *args):
        import pickle

        if not self.pid:
            with self.lv.connect() as conn:
                return fn(conn, *args)
        pid, self.pid = self.pid, 0
        try:
            with self.lv.forking:
                self.lv.pipe_ends.discard(self._req)
            with os.fdopen(self._req, "wb") as f:
                f.write(pickle.dumps((fn, args)))
        except BrokenPipeError:
            pass  # the child died; _collect says so
        with self.lv.forking:
            self.lv.pipe_ends.discard(self._res)
        data = _collect(self._res, pid)
        if not data:
            raise RuntimeFailure("the libvirt helper process died",
                                 hint=f"read {self.lv.paths.libvirt_log()}")
        ok, value = pickle.loads(data)
        if ok:
            return value
        raise value

    def close(self) -> None:
        if self.pid:
            pid, self.pid = self.pid, 0
            with self.lv.forking:
                self.lv.pipe_ends.difference_update((self._req, self._res))
            os.close(self._req)
            _collect(self._res, pid)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _serve_one(lv: Libvirt, req_r: int, res_w: int, warm: tuple[str, ...] = ()) -> None:
    """The child of `Opened`: connect, run the one request that comes (if any), answer."""
    import importlib
    import pickle

    from hv.errors import HvError

    def read_request():
        with os.fdopen(req_r, "rb") as f:
            data = f.read()
        return pickle.loads(data) if data else None

    try:
        with lv.connect() as conn:
            for module in warm:
                importlib.import_module(module)
            request = read_request()
            if request is not None:
                fn, args = request
                payload = (True, fn(conn, *args))
        if request is None:
            os._exit(0)  # not needed after all
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent
        if not isinstance(e, HvError):
            why = first_line(str(e)) or type(e).__name__
            e = RuntimeFailure(f"libvirt operation failed: {why}")
        payload = (False, e)
    try:
        data = pickle.dumps(payload)
    except Exception:  # noqa: BLE001
        data = pickle.dumps((False, RuntimeFailure("libvirt operation returned bad data")))
    with contextlib.suppress(OSError), os.fdopen(res_w, "wb") as f:
        f.write(data)  # the parent may be gone (interrupted): the work is done all the same
    os._exit(0)


def _collect(r: int, pid: int) -> bytes:
    """Read the child's answer while reaping zombies.

    A foreground `run` adopts orphans (PR_SET_CHILD_SUBREAPER); QEMU processes that
    libvirt spawns and kills inside the child (capability probes) then become our
    children, and libvirt waits for them to die: they must be reaped while we wait.
    """
    import select

    chunks = []
    child_done = False
    with os.fdopen(r, "rb", buffering=0) as f:
        while True:
            ready, _, _ = select.select([f], [], [], 0.05)
            if ready:
                chunk = f.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            child_done = pid in reap_children(also=pid) or child_done
    if not child_done:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return b"".join(chunks)


def reap_children(also: int | None = None) -> list[int]:
    """Reap, without blocking, the exited children of ours that are QEMUs or live in
    another session (what a subreaper adopts: QEMUs libvirt daemonized, detached helpers)
    and `also`; their pids. Never another child of our own session: a subprocess another
    thread waits for must get its own exit status (`waitpid(-1)` could make a failed
    `qemu-img` read as success)."""
    reaped = []
    ours = os.getsid(0)
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        tasks = []
    children: set[int] = set()
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                children.update(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    if also is not None:
        children.add(also)
    for pid in children:
        if pid != also:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    comm, _, rest = f.read().partition("(")[2].rpartition(")")
                fields = rest.split()
            except (OSError, IndexError):
                continue
            # QEMU is ours to reap in any session (libvirt's capability probes in its child)
            if fields[0] != "Z" or (int(fields[3]) == ours and
                                    not comm.startswith("qemu-system")):
                continue
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if done:
            reaped.append(done)
    return reaped


def first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


# --- libvirt errors: caught here, translated by hv.errors.translate --------------------------


def lookup(conn, name: str):
    """The domain `name`, or None when libvirt has none (any more); other errors raised
    as HvError."""
    import libvirt  # loaded already: `conn` is open

    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise translate(e, f"cannot look up the VM {name}") from None


def attempt(fn, default=None, doing: str = ""):
    """`fn()`; when libvirt refuses: `default` (a best-effort query), or with `doing` the
    translated HvError raised."""
    import libvirt

    try:
        return fn()
    except libvirt.libvirtError as e:
        if doing:
            raise translate(e, doing) from None
        return default


def no_domain(err: BaseException) -> bool:
    """Is `err` libvirt saying the domain does not exist (a transient one that exited)?"""
    code = getattr(err, "get_error_code", lambda: None)()
    return code == 42  # VIR_ERR_NO_DOMAIN
