"""A table of bad inputs across hv's verbs (issue 15): each gets Docker's exit code, one
`Error:` line and one `hint:` line on stderr, and leaves nothing behind (no container,
volume, network, container folder or QEMU of its own). Nothing here reaches a registry or a
resolver: only names hv refuses before any network access, or that exist on this machine.

The summary line (`bad inputs: N tried, ...`) is what README quotes."""

from __future__ import annotations

import json
import shlex

import pytest

from tests.conftest import _qemu_pids

pytestmark = pytest.mark.vm

NO = "nosuch-ctr"
BAD = [
    # image references
    ("run --rm UPPERCASE", 125, "repository name must be lowercase"),
    ("run --rm busybox:bad:tag true", 125, "invalid reference format"),
    ("tag busybox BAD:tag", 1, "repository name must be lowercase"),
    ("tag nosuch-image new:tag", 1, "No such image: nosuch-image"),
    ("rmi nosuch-image", 1, "No such image: nosuch-image"),
    ("history nosuch-image", 1, "No such image: nosuch-image"),
    ("save -o /dev/null nosuch-image", 1, "No such image: nosuch-image"),
    ("load -i /nonexistent-hv.tar", 1, "cannot read the archive"),
    # names
    ("run --rm --name 'bad name' busybox true", 125, "Invalid container name (bad name)"),
    ("run --rm --name a busybox true", 125, "Invalid container name (a)"),
    ("run --rm --hostname -bad busybox true", 125, "invalid hostname format: -bad"),
    ("rename nosuch-ctr newname", 1, "No such container: nosuch-ctr"),
    # -v and --mount
    ("run --rm -v :/x busybox true", 125, "invalid volume specification: ':/x'"),
    ("run --rm -v /tmp:relative busybox true", 125, "mount path must be absolute"),
    ("run --rm -v /tmp:/x:zz busybox true", 125, "invalid mode: zz"),
    ("run --rm -v a:b:c:d busybox true", 125, "invalid volume specification: 'a:b:c:d'"),
    ("run --rm --mount type=bind,target=/x busybox true", 125, "field Source must not be empty"),
    ("run --rm --mount type=volume,source=v,target=/x,bogus=1 busybox true", 125,
     "unexpected key 'bogus'"),
    ("run --rm --mount type=bind,source=/nonexistent-hv,target=/x busybox true", 125,
     "bind source path does not exist"),
    ("run --rm --tmpfs relative busybox true", 125, "mount path must be absolute"),
    # -p
    ("run --rm -p 0:80 busybox true", 125, "invalid port 0"),
    ("run --rm -p 70000:80 busybox true", 125, "invalid port 70000"),
    ("run --rm -p abc busybox true", 125, "invalid port format: 'abc'"),
    ("run --rm -p 80/sctp busybox true", 125, "invalid proto: sctp"),
    ("run --rm -p 300.1.1.1:80:80 busybox true", 125, "invalid IP address: 300.1.1.1"),
    # -m, --cpus
    ("run --rm -m 1x busybox true", 125, 'invalid argument "1x" for "-m, --memory" flag'),
    ("run --rm -m -5m busybox true", 125, 'invalid argument "-5m"'),
    ("run --rm -m 1k busybox true", 125, "Minimum memory limit allowed is 64MB"),
    ("run --rm --cpus abc busybox true", 125, "failed to parse abc as a rational number"),
    ("run --rm --cpus -1 busybox true", 125, "range of CPUs is from 0.01"),
    # -e, --env-file, -u, -w, the command
    ("run --rm -e =x busybox true", 125, "invalid environment variable: =x"),
    ("run --rm --env-file /nonexistent-hv-env busybox true", 125,
     "open /nonexistent-hv-env: no such file or directory"),
    ("run --rm -u nosuchuser busybox true", 125, "nosuchuser"),
    ("run --rm -w relative/dir busybox true", 125, "it needs to be an absolute path"),
    ("run --rm busybox /nonexistent-cmd", 127, 'exec: "/nonexistent-cmd"'),
    ("run --rm busybox /etc", 126, 'exec: "/etc": permission denied'),
    # --restart, --label, --stop-signal
    ("run --rm --restart sometimes busybox true", 125, "invalid restart policy 'sometimes'"),
    ("run --rm --restart on-failure:x busybox true", 125, "invalid restart policy"),
    ("run --rm --restart always busybox true", 125, "Conflicting options: --restart and --rm"),
    ("run --rm --label =v busybox true", 125, 'invalid argument "=v" for "-l, --label"'),
    ("run --rm --stop-signal NOPE busybox true", 125, "invalid signal: NOPE"),
    ("kill -s NOPE nosuch-ctr", 1, "invalid signal: NOPE"),
    # networks and DNS
    ("run --rm --network host busybox true", 125, 'network mode "host" is not supported'),
    ("run --rm --network nosuchnet busybox true", 125, "network nosuchnet not found"),
    ("run --rm --ip 10.1.1.1 busybox true", 125, "supported on user defined networks only"),
    ("run --rm --dns bad busybox true", 125, 'invalid argument "bad" for "--dns" flag'),
    ("run --rm --add-host nohost busybox true", 125, "bad format for add-host: 'nohost'"),
    ("network create --subnet foo bi-n1", 1, "invalid subnet foo"),
    ("network create --subnet 10.0.0.0/8 --gateway 11.0.0.1 bi-n2", 1, "invalid gateway"),
    ("network create host", 1, 'network mode "host" is not supported'),
    ("network rm nosuch-net", 1, "network nosuch-net not found"),
    ("network connect nosuch-net nosuch-ctr", 1, "network nosuch-net not found"),
    # templates and filters
    ("inspect -f '{{.Nope' busybox", 64, "template: :1: unclosed action"),
    ("ps --format '{{.Bad'", 1, "template: :1: unclosed action"),
    ("ps -f bogus=1", 1, "invalid filter 'bogus'"),
    ("ps -f status=sleeping", 1, "invalid filter 'status=sleeping'"),
    # containers that do not exist
    ("exec nosuch-ctr true", 1, "No such container: nosuch-ctr"),
    ("exec -it nosuch-ctr sh", 1, "No such container: nosuch-ctr"),
    ("stop nosuch-ctr", 1, "No such container: nosuch-ctr"),
    ("start nosuch-ctr", 1, "No such container: nosuch-ctr"),
    ("rm nosuch-ctr", 1, "No such container: nosuch-ctr"),
    ("logs nosuch-ctr", 1, "No such container: nosuch-ctr"),
    ("pause nosuch-ctr", 1, "No such container: nosuch-ctr"),
    ("wait nosuch-ctr", 1, "No such container: nosuch-ctr"),
    ("top nosuch-ctr", 1, "No such container: nosuch-ctr"),
    ("port nosuch-ctr", 1, "No such container: nosuch-ctr"),
    ("checkpoint create nosuch-ctr cp1", 1, "No such container: nosuch-ctr"),
    ("inspect nosuch-ctr", 1, "No such object: nosuch-ctr"),
    # cp paths
    ("cp nosuch-ctr:/etc/hosts /tmp/bi-x", 1, "No such container: nosuch-ctr"),
    ("cp /nonexistent-hv-src nosuch-ctr:/tmp", 1, "No such container: nosuch-ctr"),
    ("cp a b", 1, "copying between containers or between two local paths is not supported"),
    # volumes
    ("volume create 'bad name'", 1, "includes invalid characters for a local volume name"),
    ("volume rm nosuch-vol", 1, "No such volume: nosuch-vol"),
    ("volume inspect nosuch-vol", 1, "No such volume: nosuch-vol"),
]
STDOUT_OK = {"inspect nosuch-ctr": "[]\n", "volume inspect nosuch-vol": "[]\n"}


def _qemu_not_pooled(root) -> list[int]:
    """This root's QEMUs but the warm pool's own (HV_POOL: refilled in the background)."""
    pooled = {p.name for p in (root / "pool").iterdir()} if (root / "pool").is_dir() else set()
    out = []
    for pid in _qemu_pids(root):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if not any(f"/pool/{i}/".encode() in cmd for i in pooled):
            out.append(pid)
    return out


def _state(hv) -> dict:
    return {
        "containers": hv("ps", "-aq", "--no-trunc", check=True).stdout.split(),
        "volumes": hv("volume", "ls", "-q", check=True).stdout.split(),
        "networks": hv("network", "ls", "-q", check=True).stdout.split(),
        "folders": sorted(p.name for p in (hv.root / "containers").iterdir())
        if (hv.root / "containers").is_dir() else [],
        "qemu": sorted(_qemu_not_pooled(hv.root)),
    }


def test_bad_inputs_get_one_line_a_hint_dockers_code_and_leave_nothing(hv, busybox):
    assert len(BAD) >= 60
    hv("run", "--rm", busybox, "true", check=True)  # the TCG notice, once per root, is out
    before = _state(hv)
    failures = []
    for line, code, text in BAD:
        p = hv(*shlex.split(line), input="")
        lines = p.stderr.strip().splitlines()
        ok = (p.returncode == code and len(lines) == 2 and lines[0].startswith("Error: ")
              and text in lines[0] and lines[1].startswith("hint: ")
              and p.stdout == STDOUT_OK.get(line, ""))
        if not ok:
            failures.append((line, p.returncode, p.stdout, p.stderr))
    after = _state(hv)
    leftovers = {k: sorted(set(after[k]) - set(before[k])) for k in before}
    leftovers = {k: v for k, v in leftovers.items() if v}
    print(f"\nbad inputs: {len(BAD)} tried, {len(failures)} failures, "
          f"{sum(map(len, leftovers.values()))} leftovers")
    assert failures == [], json.dumps(failures, indent=1)
    assert leftovers == {}
