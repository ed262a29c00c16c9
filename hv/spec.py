"""How an image's config and `run`'s flags combine into what the guest runs.

Docker's rules, exactly:
- `--entrypoint X` replaces the image's ENTRYPOINT and drops its CMD; `--entrypoint ""`
  clears it.
- arguments after the image replace CMD; otherwise the image's CMD is used.
- argv = entrypoint + cmd; empty -> "No command specified".
- ENV: the image's, then `--env-file`, then `-e` (later wins, by key); `-e KEY` copies the
  host's value or drops the key when the host has none.
- WORKDIR: `-w`, else the image's, else "/". USER: `-u`, else the image's.

Strings from the command line are what Python makes of Linux's argv bytes: UTF-8 with
undecodable bytes as surrogates (PEP 383), so `os.fsencode` gives the bytes back; the seed
(hv.guest.seed) writes them out that way. Messages quote a user's value with repr() when it
holds a control character, so an error stays on one line.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from hv.errors import UsageError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MIN_MEMORY_MIB = 64
_ENV_KEY = re.compile(r"[^=\s]+")


@dataclass
class RunOptions:
    """`run`'s flags, as parsed by the CLI but not yet validated."""

    image: str
    args: list[str] = field(default_factory=list)
    name: str | None = None
    detach: bool = False
    auto_remove: bool = False
    env: list[str] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    entrypoint: str | None = None
    hostname: str | None = None
    memory: str | None = None
    cpus: str | None = None
    publish: list[str] = field(default_factory=list)
    publish_all: bool = False
    tty: bool = False
    interactive: bool = False
    restart: str | None = None
    volumes: list[str] = field(default_factory=list)  # `-v` values, as typed
    mounts: list[str] = field(default_factory=list)  # `--mount` values, as typed
    networks: list[str] = field(default_factory=list)  # `--network`: [] is the default bridge
    network_aliases: list[str] = field(default_factory=list)  # on the first network
    ip: str | None = None  # `--ip`, on the first network
    dns: list[str] = field(default_factory=list)  # `--dns IP`: the container's nameservers
    dns_search: list[str] = field(default_factory=list)  # `--dns-search DOMAIN`
    dns_options: list[str] = field(default_factory=list)  # `--dns-option OPT`
    add_hosts: list[str] = field(default_factory=list)  # `--add-host NAME:IP`, as typed
    labels: dict[str, str] = field(default_factory=dict)  # `-l KEY=VALUE`: Config.Labels
    stop_signal: str | None = None  # `--stop-signal`: what `stop` sends (default SIGTERM)
    stop_timeout: int | None = None  # `--stop-timeout`: `stop`'s default grace (10 s)
    tmpfs: list[str] = field(default_factory=list)  # `--tmpfs PATH[:OPTIONS]`
    read_only: bool = False  # `--read-only`


@dataclass
class ProcessSpec:
    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    workdir: str
    user: str

    @property
    def argv(self) -> list[str]:
        return self.entrypoint + self.cmd


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return ["/bin/sh", "-c", value]
    return [str(v) for v in value]


def parse_env_item(item: str, host_env: dict[str, str]) -> str | None:
    """One `-e` value: KEY=VALUE, or KEY (copied from the host, None when unset there)."""
    key, eq, _value = item.partition("=")
    if not key or not _ENV_KEY.fullmatch(key):
        raise UsageError(f"invalid environment variable: {_shown(item)}",
                         hint="use -e KEY=VALUE")
    if eq:
        return item
    if key in host_env:
        return f"{key}={host_env[key]}"
    return None


def _shown(text: str) -> str:
    """`text` as typed, or repr()-quoted when it holds a control character (a newline
    would split hv's one-line error)."""
    return text if text.isprintable() else repr(text)


def _quoted(text: str) -> str:
    """'text' as Docker quotes it, or repr() when it holds a control character."""
    return f"'{text}'" if text.isprintable() else repr(text)


def read_env_file(path: str) -> list[str]:
    """Docker's --env-file (docker/cli opts/file.go): lines split on LF (a CR before it
    dropped), a UTF-8 BOM dropped, leading whitespace trimmed, '#' comments and blank lines
    skipped, the value passed through untrimmed. As Docker, a file that is not UTF-8 is
    refused ("env file F contains invalid utf8 bytes at line N: [...]"), and so is a name
    with whitespace in it."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(
            f"open {path}: {e.strerror.lower() if e.strerror else e}",
            hint="check the --env-file path",
        ) from None
    items = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        raw = raw.removesuffix(b"\r")
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            shown = " ".join(str(b) for b in raw)
            raise UsageError(
                f"env file {_shown(path)} contains invalid utf8 bytes at line {number}: "
                f"[{shown}]",
                hint="save the --env-file as UTF-8, or pass such a value with -e",
            ) from None
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        name, eq, value = line.partition("=")
        name = name.lstrip(" \t")
        if " " in name or "\t" in name:
            raise UsageError(f"poorly formatted environment: variable {_quoted(name)} contains "
                             "whitespaces", hint=f"fix line {number} of {_shown(path)}: NAME=VALUE")
        if not name:
            raise UsageError(f"poorly formatted environment: no variable name on line "
                             f"{_quoted(line)}", hint=f"fix line {number} of {_shown(path)}")
        items.append(f"{name}={value}" if eq else line.strip())
    return items


def merge_env(base: list[str], extra: list[str]) -> list[str]:
    """Docker's ReplaceOrAppendEnvValues: a key keeps its first position, the last value wins."""
    order: dict[str, str] = {}
    for item in base + extra:
        order[item.partition("=")[0]] = item
    return list(order.values())


def process_spec(image_config: dict, opts: RunOptions, host_env: dict[str, str]
                 ) -> ProcessSpec:
    """`host_env`: the environment `-e NAME` takes values from (the Config's)."""
    if opts.entrypoint is not None:
        entrypoint = [opts.entrypoint] if opts.entrypoint else []
        cmd = list(opts.args)
    else:
        entrypoint = _as_list(image_config.get("Entrypoint"))
        cmd = list(opts.args) if opts.args else _as_list(image_config.get("Cmd"))
    if not entrypoint and not cmd:
        raise UsageError(
            "No command specified",
            hint="give a command after the image name, or use an image with a CMD",
        )
    extra: list[str] = []
    for path in opts.env_files:
        for item in read_env_file(path):
            value = parse_env_item(item, host_env)
            if value is not None:
                extra.append(value)
    for item in opts.env:
        value = parse_env_item(item, host_env)
        if value is not None:
            extra.append(value)
    env = merge_env(list(image_config.get("Env") or []), extra)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    workdir = opts.workdir if opts.workdir else (image_config.get("WorkingDir") or "/")
    if not workdir.startswith("/"):
        raise UsageError(
            f"the working directory '{workdir}' is invalid, it needs to be an absolute path",
            hint="use -w /absolute/path",
        )
    user = opts.user if opts.user is not None else (image_config.get("User") or "")
    return ProcessSpec(entrypoint, cmd, env, workdir, user)


_MEM = re.compile(r"(\d+(?:\.\d+)?)\s*([bkmgt]?)b?", re.IGNORECASE)
_UNIT = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def host_memory_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    """The host's physical memory (MemTotal), None when it cannot be read."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f}GiB"


def parse_memory(text: str, host_total: int | None = -1) -> int:
    """Docker's -m (`512m`, `1g`, `1.5G`, bytes) -> MiB for the VM.

    A VM's RAM cannot come from nowhere: a limit above the host's physical memory
    (`host_total` bytes, /proc/meminfo's MemTotal by default; None skips the check) is
    refused, where Docker, whose limit is a cgroup ceiling, only warns."""
    m = _MEM.fullmatch(text.strip())
    if not m:
        raise UsageError(f"invalid argument \"{_shown(text)}\" for \"-m, --memory\" flag: "
                         "invalid size", hint="use a size like 512m or 2g")
    n = float(m.group(1)) * _UNIT[m.group(2).lower()]
    mib = int(math.ceil(n / 1024**2))
    if mib < MIN_MEMORY_MIB:
        raise UsageError(f"Minimum memory limit allowed is {MIN_MEMORY_MIB}MB for a VM",
                         hint="a guest kernel needs room too: use -m 256m or more")
    total = host_memory_bytes() if host_total == -1 else host_total
    if total and mib * 1024**2 > total:
        raise UsageError(
            f"memory limit {text.strip()} is more than the host's total memory "
            f"({_gib(total)}): a VM's RAM must fit in the host's",
            hint=f"use -m {total // 1024**2}m or less (the host has {total // 1024**2} MiB)",
        )
    return mib


def parse_cpus(text: str, host_cpus: int | None = None) -> tuple[int, float]:
    """Docker's --cpus -> (vCPUs for the VM, the requested NanoCPUs as a float)."""
    host_cpus = host_cpus or os.cpu_count() or 1
    try:
        value = float(text)
    except ValueError:
        raise UsageError(
            f"invalid argument \"{text}\" for \"--cpus\" flag: failed to parse {text} as a "
            "rational number",
            hint="use a number like 1 or 1.5",
        ) from None
    if not (0.01 <= value <= host_cpus) or math.isnan(value):
        raise UsageError(
            f"range of CPUs is from 0.01 to {host_cpus:.2f}, as there are only {host_cpus} CPUs "
            "available",
            hint=f"use --cpus between 0.01 and {host_cpus}",
        )
    return max(1, math.ceil(value)), value


_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
# libvirt names the domain's files after it (the config `NAME.xml`, written as
# `NAME.xml.new` first; `NAME.pid`, `NAME.log`) and a file name stops at 255 bytes (NAME_MAX):
# 255 - len(".xml.new"). Measured with libvirt 9.0's embedded driver: 247 characters start
# (run --rm and run -d, ps, rm), 248 fail ("Failed to create file '.../run/qemu/NAME.xml.new':
# File name too long"), 255 fail earlier ("Cannot remove stale PID file"). The UNIX sockets
# (QEMU's monitor, hv's multiplexer) are named after the container id or libvirt's 20-character
# short name, so they set no lower limit.
MAX_NAME = 247


def check_name(name: str) -> str:
    """Docker's rule for --name: `/?[a-zA-Z0-9][a-zA-Z0-9_.-]+`, the whole name (Go's regexp
    `$` is the end of the text; Python's also matched before a final newline), and at most
    MAX_NAME characters."""
    name = name.removeprefix("/")
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"Invalid container name ({_shown(name)}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are "
            "allowed",
            hint="pick another --name",
        )
    if len(name) > MAX_NAME:
        raise UsageError(
            f"Invalid container name ({name[:20]}..., {len(name)} characters): at most "
            f"{MAX_NAME} characters are allowed",
            hint="libvirt names the VM's files after the container; pick a shorter --name",
        )
    return name


def check_tmpfs(spec: str) -> str:
    """`--tmpfs PATH[:OPTIONS]` as Docker checks it: an absolute path, not `/`."""
    path, _, options = spec.partition(":")
    if not path.startswith("/"):
        raise UsageError(f"invalid mount path: '{path}' mount path must be absolute",
                         hint="e.g. --tmpfs /run:size=64m")
    if path.rstrip("/") == "":
        raise UsageError("invalid mount path: '/' cannot be a tmpfs",
                         hint="give a directory below / (use --read-only for the root)")
    if any(ch in spec for ch in "\n\0") or " " in options:
        raise UsageError(f"invalid --tmpfs value: {spec!r}", hint="PATH[:OPT,OPT=VALUE]")
    return f"{path.rstrip('/') or '/'}:{options}" if options else path.rstrip("/")


def check_hostname(hostname: str) -> str:
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9.-]{0,62}", hostname):
        raise UsageError(f"invalid hostname format: {_shown(hostname)}",
                         hint="use letters, digits, - and .")
    return hostname


def parse_add_host(item: str) -> tuple[str, str]:
    """`--add-host NAME:IP` (Docker also takes NAME=IP); (name, ip). `host-gateway` is
    refused: the host has no address on any hv segment by design."""
    import ipaddress

    sep = "=" if "=" in item else ":"
    name, eq, ip = item.partition(sep)
    if not eq or not name or not ip:
        raise UsageError(f"bad format for add-host: {_quoted(item)}",
                         hint="use --add-host NAME:IP")
    if ip == "host-gateway":
        raise UsageError("--add-host NAME:host-gateway is not supported: the host has no "
                         "address on hv's networks", hint="give the IP address to use")
    ip = ip.strip("[]")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise UsageError(f"invalid IP address in add-host: {_quoted(ip)}",
                         hint="use --add-host NAME:IP") from None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise UsageError(f"invalid host name in add-host: {_quoted(name)}",
                         hint="use --add-host NAME:IP")
    return name, ip
