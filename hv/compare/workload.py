"""The workload `hv compare` runs in all three columns, and how its output is read.

One POSIX shell script, run by the image's own `/bin/sh` (or an injected static busybox for an
image without a shell) with the image's own `dd`, `md5sum`, `cat`, `uname`, `sleep`. It never
depends on the image's ENTRYPOINT/CMD: every column runs this script as the process's argv.

It prints marker lines `@@hvcmp KEY VALUE`; the host notes the time each marker *arrives* on
the output stream (a pipe for the process and the container, the VM's virtio-serial log file
for hv), so every duration below is measured by the host's clock, never the guest's:

- `start` is the first thing the script does: launch → its arrival is the start latency.
- `lifecycle` mode stops right there (exit 0): launch → exit is the whole start/stop cycle.
- `full` mode then reports what the workload sees of its isolation, stops at `idle` (the
  host samples memory), hashes COMPUTE_MB of zeros (`compute-begin`/`compute-end`), writes
  IO_MB with fsync (`write-begin`/`write-end`), stops at `drop` (the host drops its page
  cache; the script has already tried to drop the guest's/its own), reads the file back
  (`read-begin`/`read-end`), removes it and prints `done`.

At `idle` and `drop` the script waits for the host: with `SYNC=stdin` it reads one line from
stdin (the process and container columns: exact), with `SYNC=sleep` it sleeps WAIT seconds
(an hv VM's main process has no stdin in a non-interactive run).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PREFIX = "@@hvcmp "

# $1 mode, $2 host marker pid, $3 marker token, $4 compute MB, $5 I/O MB, $6 sync (stdin|sleep),
# $7 wait seconds for sync=sleep, $8 I/O file
SCRIPT = r"""m() { echo "@@hvcmp $*"; }
m start
[ "$1" = lifecycle ] && exit 0
P=$2 T=$3 C=$4 N=$5 S=$6 W=$7 F=$8
hold() { if [ "$S" = stdin ]; then read -r _ || :; else sleep "$W"; fi; }
m kernel "$(uname -r)"
m hostname "$(uname -n)"
h=0 c=0
while IFS= read -r l; do
  case "$l" in flags*hypervisor*) h=1 ;; processor*) c=$((c+1)) ;; esac
done < /proc/cpuinfo
m hypervisor $h
m cpus $c
while read -r k v _; do [ "$k" = MemTotal: ] && m memtotal_kib "$v"; done < /proc/meminfo
n=0; while IFS= read -r _; do n=$((n+1)); done < /proc/mounts; m mounts $n
n=0; for d in /proc/[0-9]*; do [ -d "$d" ] && n=$((n+1)); done; m pids $n
n=0; for d in /dev/* /dev/.[!.]*; do { [ -e "$d" ] || [ -L "$d" ]; } && n=$((n+1)); done
m devices $n
m devlist $(cd /dev 2>/dev/null && echo *)
v=0; [ -d "/proc/$P" ] && case "$(cat "/proc/$P/cmdline" 2>/dev/null)" in *"$T"*) v=1 ;; esac
m hostpid $v
while read -r k v _; do [ "$k" = VmRSS: ] && m rss_kib "$v"; done < /proc/$$/status
m idle
hold
m compute-begin
m hash $(dd if=/dev/zero bs=1048576 count="$C" 2>/dev/null | md5sum)
m compute-end
rm -f "$F"
m write-begin
dd if=/dev/zero of="$F" bs=1048576 count="$N" conv=fsync 2>/dev/null; m write-end $?
sync
d=0; (echo 3 > /proc/sys/vm/drop_caches) 2>/dev/null && d=1; m dropped_inside $d
m drop
hold
m read-begin
dd if="$F" of=/dev/null bs=1048576 2>/dev/null; m read-end $?
rm -f "$F"
m done
"""

# What the script needs from the image besides the shell's builtins.
APPLETS = ("uname", "cat", "dd", "md5sum", "rm", "sync", "sleep")
# the Communication row's pairs (hv/compare/comm.py): the process column's, the network ones'
PIPE_NEEDS = ("head", "cat")
NEEDS = ("nc", "ping", "head", "mkfifo", "sleep")
IO_FILE = "/hvcmp-io.dat"


def argv(shell: list[str], mode: str, *, marker_pid: int = 0, token: str = "-",
         compute_mb: int = 0, io_mb: int = 0, sync: str = "stdin", wait_s: float = 1.0,
         io_file: str = IO_FILE) -> list[str]:
    """The workload's argv inside the column: SHELL -c SCRIPT hvcmp ARGS..."""
    if mode not in ("lifecycle", "full"):
        raise ValueError(mode)
    return [*shell, "-c", SCRIPT, "hvcmp", mode, str(marker_pid), token, str(compute_mb),
            str(io_mb), sync, f"{wait_s:g}", io_file]


@dataclass
class Marker:
    key: str
    value: str
    t: float  # host monotonic seconds when the line arrived


@dataclass
class Transcript:
    """The markers of one run, in arrival order, plus any other output (kept for errors)."""

    markers: list[Marker] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def feed_line(self, line: str, t: float) -> Marker | None:
        line = line.rstrip("\r\n")
        if line.startswith(PREFIX):
            key, _, value = line[len(PREFIX):].partition(" ")
            mk = Marker(key, value.strip(), t)
            self.markers.append(mk)
            return mk
        if line:
            self.other.append(line)
        return None

    def first(self, key: str) -> Marker | None:
        return next((m for m in self.markers if m.key == key), None)

    def value(self, key: str) -> str | None:
        mk = self.first(key)
        return None if mk is None else mk.value

    def number(self, key: str) -> float | None:
        v = self.value(key)
        try:
            return float(v) if v not in (None, "") else None
        except ValueError:
            return None

    def span(self, begin: str, end: str) -> float | None:
        """Seconds between two markers' arrivals (None if either is missing)."""
        b, e = self.first(begin), self.first(end)
        if b is None or e is None:
            return None
        return max(0.0, e.t - b.t)

    def status(self, key: str) -> int | None:
        """The exit status some markers carry (`write-end 0`)."""
        v = self.value(key)
        try:
            return int(v) if v else None
        except ValueError:
            return None


class LineSplitter:
    """Bytes as they come -> whole decoded lines (a partial line waits for its end)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        return [ln.decode(errors="replace") for ln in lines]

    def flush(self) -> list[str]:
        rest, self._buf = self._buf, b""
        return [rest.decode(errors="replace")] if rest else []
