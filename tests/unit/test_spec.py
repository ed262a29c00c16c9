"""Docker's rules for combining an image's config with run's flags."""

import pytest

from hv.errors import UsageError
from hv.spec import (
    DEFAULT_PATH,
    RunOptions,
    check_name,
    parse_cpus,
    parse_memory,
    process_spec,
)

IMG = {
    "Entrypoint": ["/entry.sh"],
    "Cmd": ["serve", "--port", "80"],
    "Env": ["PATH=/opt/bin:/bin", "A=image", "B=image"],
    "WorkingDir": "/srv",
    "User": "app",
}


def spec(config=IMG, **kw):
    return process_spec(config, RunOptions(image="x", **kw), host_env={"HOSTVAR": "fromhost"})


def test_image_defaults():
    s = spec()
    assert s.argv == ["/entry.sh", "serve", "--port", "80"]
    assert s.workdir == "/srv" and s.user == "app"
    assert s.env == ["PATH=/opt/bin:/bin", "A=image", "B=image"]


def test_args_replace_cmd_keep_entrypoint():
    assert spec(args=["debug"]).argv == ["/entry.sh", "debug"]


def test_entrypoint_flag_drops_image_cmd():
    s = spec(entrypoint="/bin/sh")
    assert s.argv == ["/bin/sh"]
    assert spec(entrypoint="/bin/sh", args=["-c", "true"]).argv == ["/bin/sh", "-c", "true"]


def test_empty_entrypoint_clears_it():
    assert spec(entrypoint="", args=["ls"]).argv == ["ls"]


def test_no_command_is_an_error():
    with pytest.raises(UsageError, match="No command specified"):
        spec(config={}, args=[])
    with pytest.raises(UsageError):
        spec(entrypoint="")


def test_env_order_and_overrides(tmp_path):
    f = tmp_path / "env"
    f.write_text("# comment\n\nB=file\nC=file\nHOSTVAR\n")
    s = spec(env=["C=flag", "D=flag", "HOSTVAR", "MISSING"], env_files=[str(f)])
    assert s.env == ["PATH=/opt/bin:/bin", "A=image", "B=file", "C=flag", "HOSTVAR=fromhost",
                     "D=flag"]


def test_default_path_added():
    s = spec(config={"Cmd": ["sh"]})
    assert s.env[0] == f"PATH={DEFAULT_PATH}"
    assert s.workdir == "/" and s.user == ""


@pytest.mark.parametrize("bad", ["=x", "", "A B=1"])
def test_bad_env(bad):
    with pytest.raises(UsageError, match="invalid environment variable"):
        spec(env=[bad])


def test_flags_override_workdir_user():
    s = spec(workdir="/tmp", user="0:0")
    assert (s.workdir, s.user) == ("/tmp", "0:0")
    with pytest.raises(UsageError, match="absolute"):
        spec(workdir="rel")


@pytest.mark.parametrize("text,mib", [("512m", 512), ("1g", 1024), ("1.5G", 1536),
                                      ("268435456", 256), ("300MB", 300), ("128M", 128)])
def test_memory(text, mib):
    assert parse_memory(text) == mib


@pytest.mark.parametrize("text", ["abc", "12x", "-5m", "1m", ""])
def test_bad_memory(text):
    with pytest.raises(UsageError):
        parse_memory(text)


def test_cpus():
    assert parse_cpus("1", host_cpus=2) == (1, 1.0)
    assert parse_cpus("1.5", host_cpus=2) == (2, 1.5)
    for bad in ("0", "3", "x", "nan", "-1"):
        with pytest.raises(UsageError):
            parse_cpus(bad, host_cpus=2)


def test_names():
    assert check_name("/web-1") == "web-1"
    for bad in ("a", "-x", "a b", "x/y", "ok?"):
        with pytest.raises(UsageError, match="Invalid container name"):
            check_name(bad)
