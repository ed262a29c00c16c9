"""`make bench` section "versus": this tree against an earlier revision, in the same run.

`hv run --rm busybox true` and `hv exec c true`, the whole CLI each time, alternating the
two trees run by run (so drift of the machine hits both alike), each tree with a state
root of its own. The baseline is HV_BENCH_BASE (default: the last commit before the engine
facade refactor); it is checked out into a temporary git worktree and run with the same
Python and packages. Prints medians and new/old ratios; exits 1 when a ratio is above
HV_BENCH_MAX_RATIO (default 1.10: "no slower", with room for TCG's noise).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE = os.environ.get("HV_BENCH_BASE", "8c4772d")
REPEATS = int(os.environ.get("HV_BENCH_REPEATS", "7"))
MAX_RATIO = float(os.environ.get("HV_BENCH_MAX_RATIO", "1.10"))


class Tree:
    def __init__(self, label: str, src: Path, root: Path) -> None:
        self.label, self.src = label, src
        self.env = dict(os.environ, HV_ROOT=str(root), PYTHONPATH=str(src))
        # bytecode caches as a user's install has them: without, every command compiles
        # the tree's sources again, and the tree with more code pays more (not what it does)
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)

    def hv(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", *args], cwd=self.src, env=self.env,
                              capture_output=True, text=True, check=check)

    def timed(self, *args: str) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli", *args], cwd=self.src, env=self.env,
                       check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        return time.perf_counter() - t


def main() -> int:
    images = Path(os.environ.get("HV_TEST_IMAGES", "/var/cache/hv/images/out"))
    work = Path(tempfile.mkdtemp(prefix="hvv-", dir="/tmp"))
    base_src = work / "base"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach",
                    str(base_src), BASE], check=True)
    trees = [Tree("new", REPO, work / "r-new"), Tree(f"base {BASE}", base_src, work / "r-old")]
    results: dict[str, dict[str, list[float]]] = {t.label: {} for t in trees}
    try:
        for t in trees:
            t.hv("load", "-i", str(images / "busybox.oci.tar"))
            t.hv("run", "-d", "--name", "hvv-c", "busybox", "sleep", "3600")
            t.timed("run", "--rm", "busybox", "true")  # warm-ups
            t.timed("exec", "hvv-c", "true")
        for _ in range(REPEATS):
            for t in trees:
                results[t.label].setdefault("run --rm busybox true", []).append(
                    t.timed("run", "--rm", "busybox", "true"))
                results[t.label].setdefault("exec c true", []).append(
                    t.timed("exec", "hvv-c", "true"))
    finally:
        for t in trees:
            t.hv("rm", "-f", "hvv-c", check=False)
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_src)],
                       check=False)
        shutil.rmtree(work, ignore_errors=True)
    new, old = (results[t.label] for t in trees)
    worst = 0.0
    print(f"versus {BASE} (medians of {REPEATS}, alternating, seconds):")
    for key in new:
        a, b = statistics.median(new[key]), statistics.median(old[key])
        worst = max(worst, a / b)
        print(f"  {key:<24} new {a:6.3f}   base {b:6.3f}   new/base {a / b:5.2f}")
    return 0 if worst <= MAX_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
