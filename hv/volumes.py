"""Volumes: host folders under the state root that outlive containers, and how every
mount (volume or bind) reaches a guest.

A volume is `volumes/NAME/` with `_data/` (what containers see) and `volume.json` (a small
versioned record: name, created, driver, labels, anonymous). Creation is atomic (made in a
temporary folder, then renamed), so a failed `run` never leaves half a volume behind.

Which containers use a volume is read from each container's `mounts.json` (written under
the volumes lock before the container's volumes are made), not from libvirt: a volume of a
container being created, or of a stopped one, counts as in use; `rm` refuses it, as Docker
does even with `-f`.

Transport: virtiofs (virtiofsd, started and stopped by libvirt with the domain; guest RAM
becomes shared memfd) where a probe shows virtiofsd runs here, else virtio-9p (QEMU's own
server). The verdict is cached in the state root; `HV_VOLUME_DRIVER=virtiofs|9p` forces it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hv.config import Config
from hv.errors import Conflict, NotFound, UsageError
from hv.mounts import MountSpec, check_volume_name
from hv.timefmt import rfc3339

SCHEMA_VERSION = 1
TRANSPORTS = ("virtiofs", "9p")
VIRTIOFSD_CANDIDATES = ("/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd",
                        "/usr/bin/virtiofsd")


class VolumeNotFound(NotFound):
    hint = "list volumes with 'hv volume ls'"


# --- the store ------------------------------------------------------------------------------


@dataclass
class Volume:
    name: str
    created: float
    anonymous: bool = False
    driver: str = "local"
    labels: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    broken: str = ""  # why its record could not be read (it is still listed)
    mountpoint: Path = Path()  # its `_data` folder (what containers see)

    def inspect(self) -> dict:

        return {
            "CreatedAt": rfc3339(self.created).split(".")[0] + "Z",
            "Driver": self.driver,
            "Labels": self.labels or None,
            "Mountpoint": str(self.mountpoint),
            "Name": self.name,
            "Options": self.options or None,
            "Scope": "local",
        }

    def to_json(self) -> str:
        return json.dumps({"version": SCHEMA_VERSION, "name": self.name,
                           "created": self.created, "anonymous": self.anonymous,
                           "driver": self.driver, "labels": self.labels,
                           "options": self.options}, indent=1, sort_keys=True) + "\n"


@dataclass(frozen=True)
class Transport:
    name: str  # "virtiofs" | "9p"
    reason: str
    binary: str = ""  # virtiofsd


def _probe_virtiofsd(binary: str) -> str:
    """'' when virtiofsd starts and listens here, else why not."""
    try:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=5)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{binary} does not run: {e}"
    legacy = "FUSE kernel interface" in version.stdout + version.stderr  # QEMU's C virtiofsd
    with tempfile.TemporaryDirectory(prefix="hv-vfs-probe.") as tmp:
        sock = Path(tmp) / "s"
        share = Path(tmp) / "d"
        share.mkdir()
        args = [binary, f"--socket-path={sock}"]
        args += ["-o", f"source={share}"] if legacy else ["--shared-dir", str(share)]
        try:
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as e:
            return f"{binary} does not start: {e}"
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and proc.poll() is None and not sock.exists():
                time.sleep(0.02)
            if not sock.exists():
                err = b""
                if proc.poll() is not None:
                    err = proc.stderr.read() if proc.stderr else b""
                why = err.decode(errors="replace").strip().splitlines()[-1:] or ["no socket"]
                return f"{binary} did not start here: {why[0]}"
            return ""
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stderr:
                proc.stderr.close()


def with_image_volumes(specs: list[MountSpec], image_config: dict) -> list[MountSpec]:
    """The image's VOLUME paths not covered by a -v/--mount become anonymous volumes."""
    taken = {s.target for s in specs}
    extra = []
    for path in sorted((image_config.get("Volumes") or {}).keys()):
        import posixpath

        target = posixpath.normpath(path) if path.startswith("/") else None
        if target and target != "/" and target not in taken:
            extra.append(MountSpec("volume", "", target))
            taken.add(target)
    return specs + extra


def check_sources(specs: list[MountSpec]) -> None:
    """Refuse, before anything is made, what Docker refuses up front."""
    for s in specs:
        if s.type == "bind" and not s.create_source and not os.path.exists(s.source):
            raise UsageError(
                f'invalid mount config for type "bind": bind source path does not exist: '
                f"{s.source}",
                hint="create the folder first, or use -v (which creates it)")


class Attached:
    """What `attach` made, so a failed create can undo it."""

    def __init__(self, store: Volumes) -> None:
        self.store = store
        self.volumes: list[str] = []
        self.dirs: list[Path] = []

    def undo(self) -> None:
        with self.store.locked(create=False):
            used = self.store.users()
            for name in self.volumes:
                if not used.get(name) and self.store._read(name) is not None:
                    self.store._delete_locked(name)
        for d in reversed(self.dirs):
            with contextlib.suppress(OSError):
                d.rmdir()  # only while still empty


def _mkdirs(path: Path) -> list[Path]:
    """mkdir -p, returning the folders it made (outermost first)."""
    made = []
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except OSError as e:
            raise UsageError(f"cannot create the bind source {path}: {e.strerror}",
                             hint="check the host path and its permissions") from None
        made.append(d)
    return made


def share_source(entry: dict) -> Path:
    src = Path(entry["source"])
    return src.parent if entry.get("file") else src


def guest_mounts(volumes: list[dict], first_boot: bool):
    from hv.guest.seed import GuestMount

    return [GuestMount(e["tag"], e["transport"], Path(e["source"]).name if e["file"] else "",
                       e["target"], e["readonly"], copy=first_boot and e.get("copy", False))
            for e in volumes]


def inspect_mounts(volumes: list[dict]) -> list[dict]:
    """Docker's `Mounts` of `inspect`."""
    out = []
    for e in volumes:
        m = {"Type": e["type"]}
        if e["type"] == "volume":
            m["Name"] = e["name"]
        m.update(Source=e["source"], Destination=e["target"], Mode="" if e["type"] == "volume"
                 else ("ro" if e["readonly"] else ""), RW=not e["readonly"],
                 Propagation="" if e["type"] == "volume" else "rprivate")
        if e["type"] == "volume":
            m["Driver"] = "local"
        m["Transport"] = e.get("transport", "")
        out.append(m)
    return out


class Volumes:
    """The volumes of one state root, and how mounts reach its guests (settings from the
    Config: HV_VOLUME_DRIVER, HV_VIRTIOFSD, HV_VIRTIOFS_CACHE)."""

    def __init__(self, config: Config, embedded: bool, uri: str) -> None:
        self.config = config
        self.paths = config.paths
        self.embedded = embedded
        self.uri = uri

    @contextlib.contextmanager
    def locked(self, create: bool = True) -> Iterator[bool]:
        """The volumes lock, held exclusively. Without `create`, for those that only remove
        or look: where no volume was ever made nothing is made for the lock (a look-up makes no
        state), and False is yielded without locking: there is nothing to protect."""
        d = self.paths.volumes_dir()
        if not create and not d.is_dir():
            yield False
            return
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.paths.volumes_lock(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        finally:
            os.close(fd)

    def _read(self, name: str) -> Volume | None:
        d = self.paths.volume_dir(name)
        if not d.is_dir() or name.startswith("."):
            return None
        try:
            data = json.loads(self.paths.volume_meta(name).read_text())
            if int(data.get("version", 0)) > SCHEMA_VERSION:
                raise ValueError(f"written by a newer hv (version {data['version']})")
            return Volume(name=name, created=float(data["created"]),
                          anonymous=bool(data.get("anonymous", False)),
                          driver=data.get("driver", "local"), labels=data.get("labels") or {},
                          options=data.get("options") or {},
                          mountpoint=self.paths.volume_data(name))
        except (OSError, ValueError, KeyError, TypeError) as e:
            return Volume(name=name, created=d.stat().st_mtime, broken=str(e) or type(e).__name__,
                          mountpoint=self.paths.volume_data(name))

    def get(self, name: str) -> Volume:
        v = self._read(name) if name and "/" not in name else None
        if v is None:
            raise VolumeNotFound(f"No such volume: {name}")
        return v

    def list_volumes(self) -> list[Volume]:
        d = self.paths.volumes_dir()
        if not d.is_dir():
            return []
        out = [v for v in (self._read(p.name) for p in d.iterdir()) if v is not None]
        return sorted(out, key=lambda v: v.name)

    def _create_locked(self, name: str, anonymous: bool, labels: dict | None = None
                       ) -> tuple[Volume, bool]:
        existing = self._read(name)
        if existing is not None:
            return existing, False
        root = self.paths.volumes_dir()
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
        try:
            os.chmod(tmp, 0o701)
            (tmp / "_data").mkdir(mode=0o755)
            vol = Volume(name=name, created=time.time(), anonymous=anonymous,
                         labels=dict(labels or {}), mountpoint=self.paths.volume_data(name))
            (tmp / "volume.json").write_text(vol.to_json())
            os.rename(tmp, self.paths.volume_dir(name))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return vol, True

    def create(self, name: str | None = None, labels: dict | None = None, anonymous: bool = False
               ) -> Volume:
        """`hv volume create [NAME]`: an existing volume is returned as is (Docker does so).
        Without a name it gets a random one but is not anonymous: as in Docker, only volumes a
        container made for itself are (and only those are pruned without `-a`)."""
        name = check_volume_name(name) if name else secrets.token_hex(32)
        with self.locked():
            return self._create_locked(name, anonymous, labels)[0]

    def users(self) -> dict[str, list[str]]:
        """Volume name -> ids of the containers (any state) that mount it."""
        out: dict[str, list[str]] = {}
        root = self.paths.containers_dir()
        if not root.is_dir():
            return out
        for d in root.iterdir():
            for m in self._container_mounts(d.name):
                if m.get("type") == "volume":
                    out.setdefault(m["name"], []).append(d.name)
        return out

    def _container_mounts(self, cid: str) -> list[dict]:
        try:
            return json.loads(self.paths.container_mounts(cid).read_text())
        except (OSError, ValueError):
            return []

    def _delete_locked(self, name: str) -> None:
        d = self.paths.volume_dir(name)
        doomed = self.paths.volumes_dir() / f".rm-{name}-{secrets.token_hex(4)}"
        os.rename(d, doomed)  # gone from every listing at once
        shutil.rmtree(doomed, ignore_errors=True)

    def remove(self, name: str, force: bool = False) -> str:
        """`hv volume rm`: refuses a volume any container uses (Docker does, even with -f);
        `-f` only makes a missing volume not an error."""
        with self.locked(create=False):
            try:
                self.get(name)
            except VolumeNotFound:
                if force:
                    return name
                raise
            used = self.users().get(name)
            if used:
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(used)}]",
                               hint="remove the container first ('hv rm -v ID'), then the volume")
            self._delete_locked(name)
        return name

    def remove_anonymous(self, names: list[str]) -> list[str]:
        """Anonymous volumes of a removed container that no other container uses."""
        removed = []
        with self.locked(create=False):
            used = self.users()
            for name in names:
                v = self._read(name)
                if v is not None and v.anonymous and not used.get(name):
                    self._delete_locked(name)
                    removed.append(name)
        return removed

    def prune(self, all: bool = False) -> tuple[list[str], int]:
        """Unused volumes: anonymous ones (Docker >= 23), every unused one with `all`."""
        removed, reclaimed = [], 0
        with self.locked(create=False):
            used = self.users()
            for v in self.list_volumes():
                if used.get(v.name) or not (all or v.anonymous):
                    continue
                reclaimed += self.size(v.name)
                self._delete_locked(v.name)
                removed.append(v.name)
        return removed, reclaimed

    def size(self, name: str) -> int:
        """Bytes the volume holds on the host (allocated blocks, hard links once)."""
        total, seen = 0, set()
        for root, dirs, files in os.walk(self.paths.volume_data(name)):
            for n in dirs + files:
                try:
                    st = os.lstat(os.path.join(root, n))
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512 if n in files else 0
        return total


    # --- transport --------------------------------------------------------------------------------

    def _virtiofsd(self) -> str | None:
        env = self.config.virtiofsd
        candidates = [env] if env else list(VIRTIOFSD_CANDIDATES)
        for desc in sorted(Path("/usr/share/qemu/vhost-user").glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(desc.read_text())
                if data.get("type") == "fs" and data.get("binary"):
                    candidates.append(data["binary"])
        return next((c for c in candidates if c and os.access(c, os.X_OK)), None)

    def _detect(self) -> Transport:
        u = self.uri
        if not (self.embedded or u.startswith("qemu:///system")):
            return Transport("9p", f"{u} is not on this host: virtiofsd cannot be probed")
        if os.geteuid() != 0 and self.embedded:
            return Transport("9p", "virtiofsd needs root with libvirt 9.0's embedded driver")
        binary = self._virtiofsd()
        if binary is None:
            return Transport("9p", "no virtiofsd found (" + ", ".join(VIRTIOFSD_CANDIDATES) + ")")
        why = _probe_virtiofsd(binary)
        if why:
            return Transport("9p", why)
        return Transport("virtiofs", f"{binary} runs here", binary)

    def transport(self) -> Transport:
        forced = self.config.volume_driver
        if forced:
            if forced not in TRANSPORTS:
                raise UsageError(f"HV_VOLUME_DRIVER={forced!r} is not virtiofs or 9p",
                                 hint="unset HV_VOLUME_DRIVER to let hv choose")
            binary = self._virtiofsd() or "" if forced == "virtiofs" else ""
            return Transport(forced, "forced by HV_VOLUME_DRIVER", binary)
        cache = self.paths.volume_transport_cache()
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(cache.read_text())
            t = Transport(data["name"], data["reason"], data.get("binary", ""))
            if t.name in TRANSPORTS and (t.name == "9p" or os.access(t.binary, os.X_OK)):
                return t
        verdict = self._detect()
        with contextlib.suppress(OSError):
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps({"name": verdict.name, "reason": verdict.reason,
                                       "binary": verdict.binary}) + "\n")
            tmp.replace(cache)
        return verdict


    def attach(self, cid: str, specs: list[MountSpec], how: Transport
               ) -> tuple[list[dict], Attached]:
        """Make what the mounts need (bind folders for -v, volumes) and record them in the
        container's mounts.json, all under the volumes lock. Returns the record's `volumes`."""
        made = Attached(self)
        entries: list[dict] = []
        try:
            with self.locked():
                for i, s in enumerate(specs):
                    entry = {"type": s.type, "target": s.target, "readonly": s.readonly,
                             "transport": how.name, "tag": f"hv{i}", "file": False}
                    if s.type == "bind":
                        src = Path(s.source)
                        if not os.path.lexists(src):
                            if not s.create_source:
                                check_sources([s])
                            made.dirs += _mkdirs(src)
                        if not src.exists():
                            raise UsageError(f"bind source path is a dangling link: {src}",
                                             hint="point it at an existing file or folder")
                        entry.update(name="", source=str(src), anonymous=False, copy=False,
                                     file=not src.is_dir())
                        if entry["file"] and "\n" in src.name:
                            raise UsageError(f"invalid bind source: {src}",
                                             hint="choose a file name without a newline")
                    else:
                        name = s.source or secrets.token_hex(32)
                        vol, new = self._create_locked(name, anonymous=not s.source)
                        if new:
                            made.volumes.append(name)
                        entry.update(name=name, source=str(vol.mountpoint),
                                     anonymous=vol.anonymous, copy=not s.nocopy)
                    entries.append(entry)
                self.paths.container_mounts(cid).write_text(json.dumps(entries, indent=1) + "\n")
        except BaseException:
            self.paths.container_mounts(cid).unlink(missing_ok=True)
            made.undo()
            raise
        return entries, made

    def anonymous_of(self, cid: str) -> list[str]:
        return [m["name"] for m in self._container_mounts(cid)
                if m.get("type") == "volume" and m.get("anonymous")]

    def virtiofs_cache(self) -> str:
        """virtiofsd's cache mode. `none` (default): what the host writes is what the guest reads
        next, as with Docker's bind mounts (`auto` keeps attributes up to 1 s and mixed stale
        pages with new ones in a test); the price: no shared writable mmap of volume files.
        `HV_VIRTIOFS_CACHE=auto|always` trades coherence for speed."""
        mode = self.config.virtiofs_cache
        if mode not in ("none", "auto", "always"):
            raise UsageError(f"HV_VIRTIOFS_CACHE={mode!r} is not none, auto or always",
                             hint="unset HV_VIRTIOFS_CACHE")
        return "" if mode == "auto" else mode

    def domain_devices(self, volumes: list[dict]):
        """(filesystems, memory backing) for a container's record."""
        from hv.runtime.domain import Filesystem, MemoryBacking

        fss = []
        binary = None
        for e in volumes:
            if e["transport"] == "virtiofs" and binary is None:
                binary = self._virtiofsd()
            fss.append(Filesystem(share_source(e), e["tag"], e["transport"], e["readonly"],
                                  Path(binary) if e["transport"] == "virtiofs" and binary else None,
                                  cache=self.virtiofs_cache()))
        backing = MemoryBacking() if any(e["transport"] == "virtiofs" for e in volumes) else None
        return fss, backing


