"""The comparison's result: a stable JSON document, the course's table with measured values
beside its claims, the footnotes that define every number, and the bar-chart PNG.

JSON schema `hv.compare/1` (keys are always present; a number is null when it could not be
measured, and the column's `error` or `notes` say why):

    {
      "schema": "hv.compare/1",
      "host": {kernel, system, cpu, cpus, mem_total_kib, hypervisor_flag, hostname},
      "accelerator": {"name": "kvm"|"tcg", "reason": str},
      "image": {"ref", "id", "shell": [argv], "injected_busybox": bool},
      "repeats": int,
      "params": {"io_mb", "compute_mb", "warmup", "vm_wait_s", "net_mb", "pings",
                 "pipe_rounds", "drop_caches"},
      "results": {
        "process"|"container"|"vm": {
          "measured": bool, "error": str|null, "notes": [str], "how": str,
          "runtime": "crun"|"runc"|null,
          "start_s": STATS, "exit_s": STATS,
          "compute_s": STATS, "write_s": STATS, "read_s": STATS,
          "write_mb_s": num, "read_mb_s": num,
          "compute_overhead_pct": num, "write_overhead_pct": num, "read_overhead_pct": num,
          "memory": {"host_kib": STATS, "workload_kib": STATS, "overhead_kib": STATS,
                     "configured_mib": int|null, "host_processes": {"comm[pid]": kib}},
          "isolation": {"kernel", "same_kernel_as_host", "hostname", "hypervisor_flag",
                        "cpus", "mem_total_kib", "mounts", "pids_visible",
                        "host_pid_visible", "devices", "device_names": [str]},
          "caches": {"host_dropped": bool|null, "inside_dropped": bool|null,
                     "host_drop_s": num|null},
          "communication": {"how": str, "error": str|null, "rtt_s": STATS,
                            "mb_s": STATS, "mb": int|null}
        }, ...   (only the columns asked for with --only)
      },
      "course": {ROW: {"process": str, "container": str, "vm": str}},
      "rows": [[label, process_cell, container_cell, vm_cell], ...],
      "footnotes": [str]
    }
    STATS = {"median", "min", "max", "spread", "n", "values": [...]} or null
"""

from __future__ import annotations

from hv.compare.comm import PINGS, ROUNDS
from hv.compare.measure import median, overhead_pct, summarize, throughput

SCHEMA = "hv.compare/1"
COLUMNS = ("process", "container", "vm")
TITLES = {"process": "Process", "container": "Container", "vm": "VM (hv)"}

# The course's "Process vs Container vs VM" table (course-virtualization-docker.md).
COURSE = {
    "definition": {"process": "running instance of a program",
                   "container": "isolated group of processes managed by a shared kernel",
                   "vm": "an OS that shares host hardware through a supervisor"},
    "os": {"process": "same OS", "container": "same kernel", "vm": "multiple independent OS"},
    "isolation": {"process": "memory space and user privileges",
                  "container": "namespaces and cgroups", "vm": "full OS isolation"},
    "security": {"process": "-", "container": "improving", "vm": "higher"},
    "size": {"process": "user application", "container": "image = some MBs + user app",
             "vm": "image = some GBs + user app"},
    "lifecycle": {"process": "created by forking, generally short-lived",
                  "container": "runs on kernel with hardly any boot (1s), generally short lived",
                  "vm": "needs boot process (>10s), generally long lived"},
    "compute_overhead": {"process": "-", "container": "<5%", "vm": ">10%"},
    "disk_io_overhead": {"process": "-", "container": "generally 0", "vm": ">50%"},
    "communication": {"process": "inter-process (IPC)", "container": "IPC",
                      "vm": "network devices"},
    "support": {"process": "all OS", "container": "mostly linux", "vm": "all OS"},
}

FOOTNOTES = [
    "Start: host monotonic time from launching the column (Popen of chroot / `RUNTIME run` / "
    "Engine.create, i.e. `hv run --rm`) to the arrival of the workload's first output line "
    "(its first instruction: `echo`); exit: to the column being gone (process reaped / "
    "`RUNTIME run` returned after deleting the container / the VM powered off and QEMU "
    "reaped). Separate runs of a workload that only prints that line.",
    "Compute: host time between the arrivals of the markers around `dd if=/dev/zero bs=1M "
    "count=N | md5sum`, the image's own binaries in all three columns; overhead = "
    "median / the process's median - 1.",
    "Disk I/O: `dd ... conv=fsync` of N MB to /hvcmp-io.dat in the column's root filesystem "
    "(process and container: the unpacked rootfs on the host filesystem; VM: its qcow2 "
    "overlay on the same filesystem), then `sync`, caches dropped, `dd` read back. Caches: "
    "the workload writes 3 to /proc/sys/vm/drop_caches itself (the host's for the process, "
    "refused in the container's read-only /proc/sys, the guest's in the VM) and hv writes 3 "
    "to the host's /proc/sys/vm/drop_caches (as root) while the workload waits.",
    "Memory: sampled while the workload's shell idles after start-up. Workload = VmRSS of "
    "the workload's shell read from inside (/proc/$$/status). Host = VmRSS summed over the "
    "launched process tree (process: the shell itself; container: the runtime's `run` "
    "process + the container's processes; VM: the QEMU process). Overhead = host - "
    "workload. The VM's configured RAM is what the guest may use at most; QEMU's RSS is "
    "what it has touched so far (kernel, agent, page cache).",
    "Communication: two of the column's kind talking, measured in the same run. Process: "
    "two processes on pipes — round trip = a 1-byte ping-pong between a parent and its "
    "forked child over two pipes (mean of 2000), throughput = `head -c N /dev/zero | cat > "
    "/dev/null` in the chroot. Container: two network namespaces, a veth pair each into a "
    "Linux bridge without a host address (the image's busybox chroot'ed in each). VM: two "
    "hv VMs on one user-defined hv network (bridge, taps, virtio-net), through the engine "
    "facade. Container and VM: round trip = the average of `ping -A -c 20`, throughput = N "
    "MB (the disk I/O size) through busybox `nc` to a listener in the other one. Every "
    "transfer's time has the median of a no-op launched the same way (`true` via chroot / "
    "`ip netns exec` / the facade's exec) subtracted.",
    "Isolation: read by the workload itself: `uname -r`; host PIDs visible = /proc/PID of a "
    "marker process hv starts on the host exists and its cmdline carries hv's token; PIDs = "
    "numeric entries of /proc; hypervisor = the `hypervisor` flag in /proc/cpuinfo (a "
    "host that is itself a VM shows it in every column); devices = entries of /dev; mounts "
    "= lines of /proc/mounts (the process column's count includes the 3 binds of /proc, "
    "/dev, /sys into the chroot); memory = MemTotal.",
]


def _stats(values) -> dict | None:
    return summarize(list(values))


def _first(results, key):
    for r in results:
        v = r.transcript.value(key)
        if v is not None:
            return v
    return None


def _int(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _column(name, leg, life, full, error, notes, opts, host) -> dict:
    col = {
        "measured": error is None and bool(life or full), "error": error,
        "notes": list(notes), "how": leg.describe() if leg is not None else "",
        "runtime": getattr(leg, "runtime", None),
        "start_s": _stats(r.start_s for r in life),
        "exit_s": _stats(r.exit_s for r in life),
        "compute_s": _stats(r.transcript.span("compute-begin", "compute-end") for r in full),
        "write_s": _stats(r.transcript.span("write-begin", "write-end") for r in full
                          if r.transcript.status("write-end") == 0),
        "read_s": _stats(r.transcript.span("read-begin", "read-end") for r in full
                         if r.transcript.status("read-end") == 0),
    }
    col["write_mb_s"] = throughput(opts.io_mb, median(col["write_s"]))
    col["read_mb_s"] = throughput(opts.io_mb, median(col["read_s"]))
    workload = [r.transcript.number("rss_kib") for r in full]
    hostk = [r.host_kib for r in full]
    over = [h - w if h is not None and w is not None else None
            for h, w in zip(hostk, workload, strict=True)]
    col["memory"] = {
        "host_kib": _stats(hostk), "workload_kib": _stats(workload),
        "overhead_kib": _stats(over),
        "configured_mib": getattr(leg, "memory_mib", None) if name == "vm" else None,
        "host_processes": full[-1].host_detail if full else {},
    }
    kernel = _first(full, "kernel")
    hv_flag = _first(full, "hypervisor")
    hostpid = _first(full, "hostpid")
    devlist = _first(full, "devlist")
    col["isolation"] = {
        "kernel": kernel,
        "same_kernel_as_host": None if kernel is None else kernel == host["kernel"],
        "hostname": _first(full, "hostname"),
        "hypervisor_flag": None if hv_flag is None else hv_flag == "1",
        "cpus": _int(_first(full, "cpus")),
        "mem_total_kib": _int(_first(full, "memtotal_kib")),
        "mounts": _int(_first(full, "mounts")),
        "pids_visible": _int(_first(full, "pids")),
        "host_pid_visible": None if hostpid is None else hostpid == "1",
        "devices": _int(_first(full, "devices")),
        "device_names": devlist.split() if devlist else [],
    }
    inside = _first(full, "dropped_inside")
    col["caches"] = {
        "host_dropped": full[-1].host_dropped if full else None,
        "inside_dropped": None if inside is None else inside == "1",
        "host_drop_s": _stats(r.host_drop_s for r in full),
    }
    return col


def _communication(res) -> dict:
    """The Communication row's numbers of one column (hv/compare/comm.py's CommResult)."""
    if res is None:
        return {"how": "", "error": "not measured", "rtt_s": None, "mb_s": None, "mb": None}
    return {"how": res.how, "error": res.error, "rtt_s": _stats(res.rtt_s),
            "mb_s": _stats(throughput(res.mb, t) for t in res.xfer_s), "mb": res.mb}


def build(*, opts, image, accel, host, legs, life, full, errors, notes, injected, shell,
          comm=None) -> dict:
    results = {}
    for name in opts.only:
        results[name] = _column(name, legs.get(name), life.get(name, []), full.get(name, []),
                                errors.get(name), notes.get(name, []), opts, host)
        results[name]["communication"] = _communication((comm or {}).get(name))
    base = results.get("process")
    for col in results.values():
        for key, src in (("compute_overhead_pct", "compute_s"), ("write_overhead_pct", "write_s"),
                         ("read_overhead_pct", "read_s")):
            col[key] = overhead_pct(median(col[src]), median(base[src])) if base else None
    doc = {
        "schema": SCHEMA,
        "host": host,
        "accelerator": {"name": accel.name, "reason": accel.reason},
        "image": {"ref": opts.image, "id": image.id, "shell": list(shell),
                  "injected_busybox": injected},
        "repeats": opts.repeats,
        "params": {"io_mb": opts.io_mb, "compute_mb": opts.compute_mb, "warmup": opts.warmup,
                   "vm_wait_s": opts.wait_s, "net_mb": opts.io_mb, "pings": PINGS,
                   "pipe_rounds": ROUNDS,
                   "drop_caches": "host: echo 3 > /proc/sys/vm/drop_caches (root) at the "
                                  "workload's `drop` marker; inside: the workload tries the "
                                  "same on its own /proc"},
        "results": results,
        "course": COURSE,
        "footnotes": FOOTNOTES,
    }
    doc["rows"] = rows(doc)
    return doc


# --- the table ----------------------------------------------------------------------------


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    return f"{s:.2f} s"


def fmt_pct(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "±0%" if abs(p) < 0.5 else f"{p:+.0f}%"


def fmt_mib(kib: float | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def _spread(st: dict | None, fmt) -> str:
    if st is None:
        return "n/a"
    if st["n"] > 1:
        return f"{fmt(st['median'])} ({fmt(st['min'])}–{fmt(st['max'])})"
    return fmt(st["median"])


def _yes(v) -> str:
    return "n/a" if v is None else ("yes" if v else "no")


def fmt_rtt(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s * 1e6:.1f} µs" if s < 1e-3 else fmt_seconds(s) if s >= 1 else f"{s * 1e3:.2f} ms"


COMM_VIA = {"process": "a pipe", "container": "veth", "vm": "hv's network"}


def _comm_cell(name: str, comm: dict) -> str:
    if comm["error"]:
        return f"not measured: {comm['error']}"
    rate = median(comm["mb_s"])
    return (f"{COMM_VIA[name]}: round trip {fmt_rtt(median(comm['rtt_s']))}, "
            + ("n/a" if rate is None else f"{rate:.1f} MB/s") + f" ({comm['mb']} MB)")


def _measured_cells(doc: dict) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    host = doc["host"]
    for name, c in doc["results"].items():
        iso, mem = c["isolation"], c["memory"]
        cells: dict[str, str] = {}
        if iso["kernel"]:
            whose = "the host's" if iso["same_kernel_as_host"] else "its own"
            cells["os"] = f"{iso['kernel']} ({whose})"
        cells["isolation"] = c["how"] or "n/a"
        cells["lifecycle"] = (f"{_spread(c['start_s'], fmt_seconds)} to first instruction, "
                              f"{_spread(c['exit_s'], fmt_seconds)} to exit")
        comp = _spread(c["compute_s"], fmt_seconds)
        cells["compute_overhead"] = (comp if name == "process" else
                                     f"{fmt_pct(c['compute_overhead_pct'])} ({comp})")
        w, r = c["write_mb_s"], c["read_mb_s"]
        rate = (f"write {w:.0f} MB/s, read {r:.0f} MB/s" if w and r else "n/a")
        cells["disk_io_overhead"] = (rate if name == "process" else
                                     f"write {fmt_pct(c['write_overhead_pct'])}, read "
                                     f"{fmt_pct(c['read_overhead_pct'])} ({rate})")
        m = f"+{fmt_mib(median(mem['overhead_kib']))} beyond the workload's " \
            f"{fmt_mib(median(mem['workload_kib']))}"
        if mem["configured_mib"]:
            m += f"; RAM configured {mem['configured_mib']} MiB"
        cells["memory"] = m if median(mem["overhead_kib"]) is not None else "n/a"
        hp = iso["host_pid_visible"]
        cells["pids"] = "n/a" if hp is None else (
            f"{_yes(hp)} ({iso['pids_visible']} PID{'' if iso['pids_visible'] == 1 else 's'} "
            "in /proc)")
        cells["hypervisor"] = _yes(iso["hypervisor_flag"]) + (
            " (the host is a VM)" if iso["hypervisor_flag"] and host["hypervisor_flag"]
            and name != "vm" else "")
        cells["devices"] = "n/a" if iso["devices"] is None else str(iso["devices"])
        cells["mounts"] = "n/a" if iso["mounts"] is None else str(iso["mounts"])
        cells["communication"] = _comm_cell(name, c["communication"])
        cells["memtotal"] = fmt_mib(iso["mem_total_kib"])
        cells["cpus"] = "n/a" if iso["cpus"] is None else str(iso["cpus"])
        if c["error"]:
            cells = {k: "not measured" for k in cells}
            cells["isolation"] = f"not measured: {c['error']}"
        out[name] = cells
    return out


ROWS = [  # (key, label, in the course's table)
    ("definition", "Definition", True),
    ("os", "OS / kernel (uname -r)", True),
    ("isolation", "Isolation", True),
    ("lifecycle", "Start (lifecycle)", True),
    ("compute_overhead", "Compute overhead", True),
    ("disk_io_overhead", "Disk I/O overhead", True),
    ("memory", "Memory overhead", False),
    ("pids", "Host PIDs visible", False),
    ("hypervisor", "hypervisor CPU flag", False),
    ("devices", "Devices (/dev entries)", False),
    ("mounts", "Mounts (/proc/mounts)", False),
    ("memtotal", "Memory seen (MemTotal)", False),
    ("cpus", "CPUs seen", False),
    ("security", "Security", True),
    ("size", "Size", True),
    ("communication", "Communication", True),
    ("support", "Support", True),
]


def rows(doc: dict) -> list[list[str]]:
    """[label, process, container, vm] cells: the course's claim, then what was measured."""
    measured = _measured_cells(doc)
    out = []
    for key, label, in_course in ROWS:
        row = [label]
        for name in COLUMNS:
            if name not in doc["results"]:
                row.append("")
                continue
            claim = COURSE[key][name] if in_course else None
            value = measured[name].get(key)
            if claim and value and value.startswith("not measured"):
                row.append(f"{claim} (course) — {value}")
            elif claim and value:
                row.append(f"{claim} (course) — {value} (measured)")
            elif claim:
                row.append(f"{claim} (course)")
            else:
                row.append(value or "n/a")
        out.append(row)
    return out


def header_lines(doc: dict) -> list[str]:
    h, a = doc["host"], doc["accelerator"]
    lines = [
        f"host: {h['cpu']}, {h['cpus']} CPUs, {fmt_mib(h['mem_total_kib'])}, "
        f"{h['system']} {h['kernel']}"
        + (" (itself a VM: hypervisor flag set)" if h["hypervisor_flag"] else ""),
        f"accelerator: {a['name'].upper()} ({a['reason']})"
        + ("; TCG emulates every guest instruction, which inflates the VM's compute and I/O "
           "overhead far beyond what KVM shows" if a["name"] == "tcg" else ""),
        f"image: {doc['image']['ref']} ({doc['image']['id'][:19]}), workload shell "
        f"{' '.join(doc['image']['shell'])}"
        + (" (injected static busybox)" if doc["image"]["injected_busybox"] else ""),
        f"repeats: {doc['repeats']} (median, min–max); compute {doc['params']['compute_mb']} MB "
        f"md5sum; disk I/O {doc['params']['io_mb']} MB",
    ]
    return lines


def column_notes(doc: dict) -> list[str]:
    out = []
    for name, c in doc["results"].items():
        if c["error"]:
            out.append(f"{TITLES[name]}: not measured: {c['error']}")
        for n in c["notes"]:
            out.append(f"{TITLES[name]}: {n}")
        ca = c["caches"]
        if c["measured"] and ca["host_dropped"] is not None:
            out.append(f"{TITLES[name]}: page cache before the read: host "
                       f"{'dropped' if ca['host_dropped'] else 'NOT dropped (not root)'}, "
                       f"inside {'dropped' if ca['inside_dropped'] else 'not droppable'}")
    return out


def markdown(doc: dict) -> str:
    cols = [c for c in COLUMNS if c in doc["results"]]

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = [f"- {esc(x)}" for x in header_lines(doc)] + [""]
    lines.append("| | " + " | ".join(TITLES[c] for c in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for row in doc["rows"]:
        cells = [row[1 + COLUMNS.index(c)] for c in cols]
        lines.append(f"| **{esc(row[0])}** | " + " | ".join(esc(x) for x in cells) + " |")
    lines.append("")
    for i, n in enumerate(column_notes(doc) + doc["footnotes"], 1):
        lines.append(f"{i}. {esc(n)}")
    return "\n".join(lines) + "\n"


# --- the plot -----------------------------------------------------------------------------


def plot(doc: dict, path) -> None:
    """Bar charts of the measured numbers (matplotlib, imported here only)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from hv.errors import HvError

        raise HvError("--plot needs matplotlib",
                      hint="pip install 'hv[compare]' (make setup installs it)") from None
    cols = [c for c in COLUMNS if c in doc["results"]]
    res = doc["results"]
    panels = [
        ("Start to first instruction (s)", [median(res[c]["start_s"]) for c in cols]),
        ("Start to exit (s)", [median(res[c]["exit_s"]) for c in cols]),
        ("Compute overhead vs process (%)", [res[c]["compute_overhead_pct"] for c in cols]),
        ("Disk write overhead (%)", [res[c]["write_overhead_pct"] for c in cols]),
        ("Disk read overhead (%)", [res[c]["read_overhead_pct"] for c in cols]),
        ("Memory overhead (MiB)", [None if median(res[c]["memory"]["overhead_kib"]) is None
                                   else median(res[c]["memory"]["overhead_kib"]) / 1024
                                   for c in cols]),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    colors = {"process": "#4c72b0", "container": "#55a868", "vm": "#c44e52"}
    for ax, (title, values) in zip(axes.flat, panels, strict=True):
        vals = [0.0 if v is None else v for v in values]
        bars = ax.bar([TITLES[c] for c in cols], vals, color=[colors[c] for c in cols])
        for bar, v in zip(bars, values, strict=True):
            ax.annotate("n/a" if v is None else f"{v:.3g}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
        if title.startswith("Start") and all(v for v in vals):
            ax.set_yscale("log")  # milliseconds beside seconds
        ax.axhline(0, color="black", linewidth=0.5)
    a = doc["accelerator"]["name"].upper()
    fig.suptitle(f"hv compare {doc['image']['ref']} — {doc['host']['cpu']}, accelerator {a}, "
                 f"median of {doc['repeats']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
