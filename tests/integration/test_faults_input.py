"""Issue 11 through the real CLI: bad templates and filters exit non-zero with Go's/Docker's
words, non-UTF-8 argv and env bytes reach a real guest byte for byte, names libvirt cannot
hold and memory the host does not have are refused on one line."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.vm

FF = os.fsdecode(b"\xff")  # what Python's argv holds for the byte 0xff (PEP 383)


def _one_error(p, message: str, code: int) -> None:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert lines[0] == f"Error: {message}", p.stderr
    assert len(lines) == 2 and lines[1].startswith("hint: "), p.stderr
    assert "internal error" not in p.stderr


@pytest.mark.parametrize("args, message, code", [
    (["ps", "-a", "--format", "{{.Bad"], "template: :1: unclosed action", 1),
    (["ps", "--format", "table {{.ID}}\\t{{range .Names}}"], "template: :1: unexpected EOF", 1),
    (["images", "--format", "{{range .X}}"], "template: :1: unexpected EOF", 1),
    (["volume", "ls", "--format", "{{end}}"], "template: :1: unexpected {{end}}", 1),
    (["inspect", "-f", "{{.Bad", "busybox"], "template: :1: unclosed action", 64),
])
def test_bad_templates_are_refused_by_every_verb(hv, busybox, args, message, code):
    p = hv(*args)
    _one_error(p, f"template parsing error: {message}", code)
    assert p.stdout == ""


def test_inspect_template_features(hv, busybox):
    p = hv("inspect", "-f", "{{range $i, $e := .Config.Env}}{{if $i}},{{end}}{{$e}}{{end}}",
           busybox, check=True)
    assert p.stdout.startswith("PATH=")


def test_ps_filters_are_checked(hv, busybox):
    _one_error(hv("ps", "-f", "bogus=1"), "invalid filter 'bogus'", 1)
    _one_error(hv("ps", "-a", "-f", "status=sleeping"), "invalid filter 'status=sleeping'", 1)
    _one_error(hv("volume", "ls", "-f", "bogus=1"), "invalid filter 'bogus'", 1)


def test_env_file_with_a_non_utf8_byte_is_refused_as_docker_does(hv, busybox, tmp_path):
    env_file = tmp_path / "env"
    env_file.write_bytes(b"V=\xff\n")
    _one_error(hv("run", "--rm", "--env-file", str(env_file), busybox, "true"),
               f"env file {env_file} contains invalid utf8 bytes at line 1: [86 61 255]", 125)


def test_non_utf8_argv_comes_back_byte_exact(hv, busybox):
    name = "faults-bytes"
    try:
        p = hv("run", "--name", name, busybox, "echo", FF, input=b"")
        assert (p.returncode, p.stdout) == (0, b"\xff\n"), p.stderr
        p = hv("ps", "-a", "--no-trunc", "-f", f"name=^{name}$", "--format", "{{.Command}}")
        assert (p.returncode, p.stdout) == (0, '"echo \'\\xff\'"\n'), p.stderr  # shell-quoted
    finally:
        hv("rm", "-f", name)
    try:  # exec carries argv and -e as bytes too (the agent's session arguments)
        hv("run", "-d", "--name", name, busybox, "sleep", "600", check=True)
        p = hv("exec", "-e", f"V={FF}", name, "sh", "-c", f'echo {FF}; printf %s "$V"',
               input=b"")
        assert (p.returncode, p.stdout) == (0, b"\xff\n\xff"), p.stderr
    finally:
        hv("rm", "-f", name)
    p = hv("run", "--rm", "-e", f"V={FF}\xfe", busybox, "sh", "-c", 'printf %s "$V"', input=b"")
    assert (p.returncode, p.stdout) == (0, b"\xff\xc3\xbe"), p.stderr


def test_container_names_libvirt_can_hold(hv, busybox):
    p = hv("run", "--rm", "--name", "a" * 247, busybox, "true")  # the measured maximum
    assert p.returncode == 0, p.stderr
    _one_error(hv("run", "--rm", "--name", "a" * 300, busybox, "true"),
               f"Invalid container name ({'a' * 20}..., 300 characters): at most 247 "
               "characters are allowed", 125)
    _one_error(hv("run", "--rm", "--name", "web\nx", busybox, "true"),
               "Invalid container name ('web\\nx'), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
               125)


def test_memory_above_the_host_is_refused(hv, busybox):
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    too_much = f"{total // (1 << 30) * 2 + 2}g"
    p = hv("run", "--rm", "-m", too_much, busybox, "true")
    assert p.returncode == 125, p.stderr
    assert p.stderr.startswith(f"Error: memory limit {too_much} is more than the host's total "
                               "memory (")
    assert len(p.stderr.splitlines()) == 2
