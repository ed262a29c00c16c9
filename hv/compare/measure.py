"""Small measuring tools: statistics, process-tree memory from /proc, the host's page cache.

Pure functions where possible (unit-tested in tests/unit/test_compare.py).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

PROC = Path("/proc")


def summarize(values: list[float | None]) -> dict | None:
    """{median, min, max, spread, n, values} of the numbers among `values`; None if none."""
    nums = [float(v) for v in values if v is not None]
    if not nums:
        return None
    med = statistics.median(nums)
    return {
        "median": med,
        "min": min(nums),
        "max": max(nums),
        "spread": max(nums) - min(nums),
        "n": len(nums),
        "values": nums,
    }


def median(summary: dict | None) -> float | None:
    return None if summary is None else summary["median"]


def overhead_pct(value: float | None, baseline: float | None) -> float | None:
    """How much longer `value` takes than `baseline`, in percent (+25.0 = 1.25x the time)."""
    if value is None or baseline is None or baseline <= 0:
        return None
    return (value / baseline - 1.0) * 100.0


def throughput(mb: float, seconds: float | None) -> float | None:
    if seconds is None or seconds <= 0:
        return None
    return mb / seconds


def parse_status_kib(text: str, key: str = "VmRSS") -> int | None:
    """A `Key:   123 kB` value of /proc/PID/status, in KiB."""
    for line in text.splitlines():
        k, _, rest = line.partition(":")
        if k == key:
            parts = rest.split()
            try:
                return int(parts[0])
            except (IndexError, ValueError):
                return None
    return None


def parse_ppid(stat_text: str) -> int | None:
    """The parent pid from /proc/PID/stat (the comm field may contain spaces and parens)."""
    close = stat_text.rfind(")")
    if close < 0:
        return None
    fields = stat_text[close + 2:].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def descendants(root_pid: int, proc: Path = PROC) -> list[int]:
    """root_pid and every live process below it (by parent pid), root first."""
    children: dict[int, list[int]] = {}
    for p in proc.iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = parse_ppid((p / "stat").read_text())
        except OSError:
            continue
        if ppid is not None:
            children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [root_pid]
    while todo:
        pid = todo.pop(0)
        if pid in out:
            continue
        out.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return out


def rss_kib(pid: int, proc: Path = PROC) -> int | None:
    try:
        return parse_status_kib((proc / str(pid) / "status").read_text())
    except OSError:
        return None


def tree_rss_kib(root_pid: int, proc: Path = PROC) -> tuple[int, dict[int, int]]:
    """Sum of VmRSS over root_pid's tree, and the per-pid values (shared pages counted once
    per process, as `ps` does)."""
    per = {}
    for pid in descendants(root_pid, proc):
        v = rss_kib(pid, proc)
        if v is not None:
            per[pid] = v
    return sum(per.values()), per


def comm(pid: int, proc: Path = PROC) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


def drop_host_caches() -> tuple[bool, float]:
    """sync + `echo 3 > /proc/sys/vm/drop_caches` (root only); (done, seconds taken)."""
    t = time.monotonic()
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False, time.monotonic() - t
    return True, time.monotonic() - t


def host_facts() -> dict:
    """The host as the process column should see it, read by hv itself."""
    import platform

    model, flags, cpus = "unknown CPU", set(), 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("processor"):
                cpus += 1
    except OSError:
        pass
    try:
        mem = parse_status_kib(Path("/proc/meminfo").read_text(), "MemTotal")
    except OSError:
        mem = None
    return {
        "kernel": platform.release(),
        "system": platform.system(),
        "cpu": model,
        "cpus": cpus or os.cpu_count(),
        "mem_total_kib": mem,
        "hypervisor_flag": "hypervisor" in flags,
        "hostname": platform.node(),
    }
