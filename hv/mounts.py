"""`run -v` and `--mount`, parsed with Docker's rules (no I/O beyond `cwd` and `exists`).

`-v SOURCE:TARGET[:OPTIONS]`:
- SOURCE starting with `/` is a bind mount; `.` or `./…` is made absolute against the
  current directory (as the Docker CLI does since 23.0); anything else is a volume name
  (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`, so `rel` is a volume and `../rel` is refused).
- `-v /path` alone is an anonymous volume (a 64-hex name, made when the container is).
- OPTIONS: comma-separated `ro|rw`, `nocopy` (volumes), `z|Z`, propagation and
  consistency words (accepted, no effect in a VM); anything else: `invalid mode: xyz`.
- A missing bind source is created as a directory (Docker does so for `-v`).

`--mount type=bind|volume,source=…,target=…[,readonly][,volume-nocopy]`: a missing bind
source is refused (`bind source path does not exist`); `volume` without a source is
anonymous.
"""

from __future__ import annotations

import csv
import os
import posixpath
import re
from dataclasses import asdict, dataclass

from hv.errors import UsageError

VOLUME_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_RW = {"ro", "rw"}
_LABELS = {"z", "Z"}
_PROPAGATION = {"shared", "rshared", "slave", "rslave", "private", "rprivate"}
_CONSISTENCY = {"consistent", "cached", "delegated"}
_TRUE = {"", "1", "true", "yes"}
_FALSE = {"0", "false", "no"}


@dataclass
class MountSpec:
    """One mount as asked for; `source` is an absolute host path (bind) or a volume name
    ("" for an anonymous volume, named when the container is created)."""

    type: str  # "bind" | "volume"
    source: str
    target: str
    readonly: bool = False
    nocopy: bool = False
    create_source: bool = False  # `-v` creates a missing bind source; `--mount` refuses

    def to_dict(self) -> dict:
        return asdict(self)


def check_volume_name(name: str) -> str:
    if not VOLUME_NAME.match(name):
        raise UsageError(
            f'create {name}: "{name}" includes invalid characters for a local volume name, '
            'only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
            "directory, use absolute path",
            hint="a volume name is letters, digits, '_', '.', '-'; a host folder starts "
                 "with '/' or './'",
        )
    return name


def _target(raw: str, kind: str, target: str) -> str:
    if not target.startswith("/"):
        raise UsageError(
            f"invalid volume specification: '{raw}': invalid mount config for type "
            f"\"{kind}\": invalid mount path: '{target}' mount path must be absolute",
            hint="the path inside the container must start with '/'",
        )
    if "\n" in target or "\0" in target:
        raise UsageError(f"invalid mount path: {target!r}: newlines are not supported",
                         hint="choose a path without a newline")
    clean = posixpath.normpath(target)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    if clean == "/":
        raise UsageError(f"invalid volume specification: '{raw}': invalid mount config for "
                         f"type \"{kind}\": invalid specification: destination can't be '/'",
                         hint="mount somewhere below '/'")
    return clean


def _host_path(source: str, cwd: str | None) -> str:
    if source == "." or source.startswith("./"):
        source = os.path.join(cwd or os.getcwd(), source)
    if "\n" in source or "\0" in source:
        raise UsageError(f"invalid bind source: {source!r}: newlines are not supported",
                         hint="choose a path without a newline")
    return posixpath.normpath(source)


def _mode(raw: str, mode: str, kind: str) -> tuple[bool, bool]:
    """(readonly, nocopy) from `-v`'s third field."""
    seen: set[str] = set()
    readonly = nocopy = False
    for word in mode.split(","):
        group = next((g for g in (_RW, _LABELS, _PROPAGATION, _CONSISTENCY, {"nocopy"})
                      if word in g), None)
        if group is None or id(group) in seen or (word == "nocopy" and kind == "bind"):
            raise UsageError(f"invalid mode: {mode}",
                             hint="use ro or rw (and, for volumes, nocopy)")
        seen.add(id(group))
        readonly = readonly or word == "ro"
        nocopy = nocopy or word == "nocopy"
    return readonly, nocopy


def parse_volume(raw: str, cwd: str | None = None) -> MountSpec:
    """One `-v`/`--volume` value."""
    parts = raw.split(":")
    if not raw or parts[0] == "" or len(parts) > 3:
        raise UsageError(f"invalid volume specification: '{raw}'",
                         hint="use -v SOURCE:TARGET[:ro], -v NAME:TARGET or -v TARGET")
    if len(parts) == 1:
        return MountSpec("volume", "", _target(raw, "volume", parts[0]))
    source = parts[0]
    if len(parts) == 2 and _is_mode_only(parts[1]) and not parts[1].startswith("/"):
        raise UsageError(f"invalid volume specification: '{raw}'",
                         hint="a volume without a source cannot take options: -v TARGET")
    kind = "bind" if source.startswith("/") or source == "." or source.startswith("./") \
        else "volume"
    target = _target(raw, kind, parts[1])
    readonly, nocopy = _mode(raw, parts[2], kind) if len(parts) == 3 else (False, False)
    if kind == "bind":
        return MountSpec("bind", _host_path(source, cwd), target, readonly,
                         create_source=True)
    return MountSpec("volume", check_volume_name(source), target, readonly, nocopy)


def _is_mode_only(word: str) -> bool:
    try:
        _mode(word, word, "volume")
    except UsageError:
        return False
    return True


def _bool(key: str, value: str | None, raw: str) -> bool:
    v = (value or "").lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise UsageError(f"invalid value for {key}: {value}", hint=f"use {key}=true or {key}=false")


def parse_mount(raw: str, cwd: str | None = None) -> MountSpec:
    """One `--mount` value (Docker's CSV of key=value)."""
    try:
        fields = next(csv.reader([raw]), [])
    except csv.Error as e:
        raise UsageError(f"invalid argument \"{raw}\" for \"--mount\" flag: {e}",
                         hint="use --mount type=bind,source=/host,target=/path") from None
    kind, source, target = "volume", "", ""
    readonly = nocopy = False
    for field in fields:
        key, eq, value = field.partition("=")
        key = key.strip().lower()
        if key in ("readonly", "ro"):
            readonly = _bool(key, value if eq else None, raw)
            continue
        if key == "volume-nocopy":
            nocopy = _bool(key, value if eq else None, raw)
            continue
        if not eq:
            raise UsageError(f"invalid field '{field}' must be a key=value pair",
                             hint="use --mount type=bind,source=/host,target=/path")
        if key == "type":
            kind = value.lower()
        elif key in ("source", "src"):
            source = value
        elif key in ("target", "destination", "dst"):
            target = value
        elif key == "volume-driver":
            if value != "local":
                raise UsageError(f"volume driver {value!r} is not supported",
                                 hint="hv has the 'local' driver only")
        elif key in ("bind-propagation", "consistency", "volume-label", "bind-nonrecursive"):
            pass  # no effect on a VM's shares
        else:
            raise UsageError(f"unexpected key '{key}' in '{field}'",
                             hint="keys: type, source, target, readonly, volume-nocopy")
    if kind not in ("bind", "volume"):
        if kind == "tmpfs":
            raise UsageError("--mount type=tmpfs is not supported by hv yet",
                             hint="use a named or anonymous volume")
        raise UsageError(f"invalid argument \"{raw}\" for \"--mount\" flag: unknown mount "
                         f"type '{kind}'", hint="use type=bind or type=volume")
    if not target:
        raise UsageError(f"invalid argument \"{raw}\" for \"--mount\" flag: target is required",
                         hint="add target=/path/in/container")
    target = _target(raw, kind, target)
    if kind == "bind":
        if not source:
            raise UsageError("invalid mount config for type \"bind\": field Source must not "
                             "be empty", hint="add source=/host/path")
        if nocopy:
            raise UsageError("invalid mount config for type \"bind\": field VolumeOptions must "
                             "not be specified", hint="volume-nocopy is for volumes")
        if not source.startswith("/"):
            source = os.path.join(cwd or os.getcwd(), source)
        return MountSpec("bind", _host_path(source, cwd), target, readonly)
    if source:
        check_volume_name(source)
    return MountSpec("volume", source, target, readonly, nocopy)


def parse_all(volumes: list[str], mounts: list[str], cwd: str | None = None
              ) -> list[MountSpec]:
    """Every `-v` then every `--mount`; a target given twice is refused as Docker does."""
    specs = [parse_volume(v, cwd) for v in volumes] + [parse_mount(m, cwd) for m in mounts]
    seen: set[str] = set()
    for s in specs:
        if s.target in seen:
            raise UsageError(f"Duplicate mount point: {s.target}",
                             hint="mount one source per path")
        seen.add(s.target)
    return specs
