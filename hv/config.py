"""hv's settings, read once: from the environment and the global flags, nowhere else.

A front end (the CLI, the API service, a helper process hv starts) builds one `Config` and
hands it to the engine; no module below reads `os.environ`. Processes hv starts (the exec
multiplexer, restart watchers) get `child_environ()`, so they build the same Config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from hv.paths import Paths


def _default_root(home: Path, root_user: bool) -> Path:
    return Path("/var/lib/hv") if root_user else home / ".local/share/hv"


def _default_cache(home: Path, root_user: bool) -> Path:
    return Path("/var/cache/hv") if root_user else home / ".cache/hv"


@dataclass(frozen=True)
class Config:
    """Every setting (environment variable in brackets; README lists them)."""

    root: Path  # the state root [HV_ROOT]
    cache: Path  # build caches shared by checkouts [HV_CACHE]
    guest_dir: Path  # kernel, initramfs, agent disk [HV_GUEST_DIR]
    host: str | None = None  # a libvirt daemon's URI (-H) [HV_HOST]; None: embedded
    accel: str = ""  # kvm | tcg | "" to detect [HV_ACCEL]
    firmware: str = ""  # a firmware ROM instead of the guest's own [HV_FIRMWARE]
    tb_cache_mib: int = 40  # TCG translation cache, 0: QEMU's default [HV_TB_CACHE_MIB]
    disk_size: str = ""  # base disk size instead of the image's [HV_DISK_SIZE]
    max_image_size: str = ""  # largest unpacked image [HV_MAX_IMAGE_SIZE]
    start_timeout: float = 180.0  # seconds for a main process to start [HV_START_TIMEOUT]
    pool: int = 0  # pooled VMs kept per image for warm starts, 0: none [HV_POOL]
    mux: bool = True  # exec through the per-container multiplexer [HV_MUX]
    mux_idle: float | None = None  # multiplexer idle exit, seconds [HV_MUX_IDLE]
    volume_driver: str = ""  # virtiofs | 9p | "" to probe [HV_VOLUME_DRIVER]
    virtiofsd: str = ""  # the virtiofsd binary [HV_VIRTIOFSD]
    virtiofs_cache: str = "none"  # virtiofsd --cache [HV_VIRTIOFS_CACHE]
    # plain-HTTP registries besides loopback [HV_INSECURE_REGISTRIES]
    insecure_registries: frozenset[str] = field(default_factory=frozenset)
    docker_config: Path = Path("~/.docker")  # registry credentials [DOCKER_CONFIG]
    compare_timeout: float = 600.0  # one `hv compare` leg [HV_COMPARE_TIMEOUT]
    oci_runtime: str = ""  # crun | runc for compare's baseline [HV_OCI_RUNTIME]
    environ: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def paths(self) -> Paths:
        return Paths(self.root, self.cache, self.guest_dir)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None, *,
                     host: str | None = None, uid: int | None = None) -> Config:
        """The settings of `environ` (the process's own when None); `host`: `-H`."""
        env = dict(os.environ if environ is None else environ)
        root_user = (os.geteuid() if uid is None else uid) == 0
        home = Path(env.get("HOME") or Path.home())
        root = Path(env["HV_ROOT"]) if env.get("HV_ROOT") else _default_root(home, root_user)
        cache = Path(env["HV_CACHE"]) if env.get("HV_CACHE") else _default_cache(home, root_user)

        def number(name: str, default: float) -> float:
            text = env.get(name, "").strip()
            if not text:
                return default
            try:
                return float(text)
            except ValueError:
                from hv.errors import UsageError

                raise UsageError(f"{name}={text!r} is not a number",
                                 hint=f"unset {name} or give it a number") from None

        idle = env.get("HV_MUX_IDLE", "").strip()
        return cls(
            root=root,
            cache=cache,
            guest_dir=Path(env["HV_GUEST_DIR"]) if env.get("HV_GUEST_DIR") else root / "guest",
            host=host or env.get("HV_HOST") or None,
            accel=env.get("HV_ACCEL", "").strip().lower(),
            firmware=env.get("HV_FIRMWARE", ""),
            tb_cache_mib=int(number("HV_TB_CACHE_MIB", 40)),
            disk_size=env.get("HV_DISK_SIZE", "").strip(),
            max_image_size=env.get("HV_MAX_IMAGE_SIZE", "").strip(),
            start_timeout=number("HV_START_TIMEOUT", 180.0),
            pool=max(0, int(number("HV_POOL", 0))),
            mux=env.get("HV_MUX", "1") != "0",
            mux_idle=number("HV_MUX_IDLE", 0) if idle else None,
            volume_driver=env.get("HV_VOLUME_DRIVER", "").strip().lower(),
            virtiofsd=env.get("HV_VIRTIOFSD", ""),
            virtiofs_cache=env.get("HV_VIRTIOFS_CACHE", "none").strip().lower(),
            insecure_registries=frozenset(
                h.strip() for h in env.get("HV_INSECURE_REGISTRIES", "").split(",") if h.strip()),
            docker_config=Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG")
            else home / ".docker",
            compare_timeout=number("HV_COMPARE_TIMEOUT", 600.0),
            oci_runtime=env.get("HV_OCI_RUNTIME", "").strip().lower(),
            environ=env,
        )

    def with_root(self, root: Path) -> Config:
        return replace(self, root=root)

    def child_environ(self) -> dict[str, str]:
        """The environment for a process hv starts that builds its own Config (the exec
        multiplexer, a restart watcher): this Config's settings, absolute, plus the rest of
        the environment it was read from (PATH, locale)."""
        env = dict(self.environ)
        env["HV_ROOT"] = os.path.abspath(self.root)  # children run in /
        env["HV_CACHE"] = os.path.abspath(self.cache)
        env["HV_GUEST_DIR"] = os.path.abspath(self.guest_dir)
        env["HV_POOL"] = str(self.pool)  # (`system service --pool` sets it for its refills)
        if self.host:
            env["HV_HOST"] = self.host
        else:
            env.pop("HV_HOST", None)
        return env
