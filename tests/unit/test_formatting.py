"""Docker's sizes, durations, tables and --format templates."""

import io

import pytest

from cli.formatting import human_duration, human_size, render
from hv.errors import UsageError


@pytest.mark.parametrize("n, text", [
    (0, "0B"), (512, "512B"), (999, "999B"), (1000, "1kB"), (4_261_000, "4.26MB"),
    (77_800_000, "77.8MB"), (1_200_000_000, "1.2GB"), (123_456_789, "123MB"),
    (1_982_415, "1.98MB"), (10**13, "10TB"),
])
def test_human_size(n, text):
    assert human_size(n) == text


@pytest.mark.parametrize("seconds, text", [
    (0.5, "Less than a second"), (1, "1 second"), (3, "3 seconds"), (59, "59 seconds"),
    (60, "About a minute"), (119, "About a minute"), (300, "5 minutes"), (3599, "59 minutes"),
    (3600, "About an hour"), (5399, "About an hour"), (7200, "2 hours"), (47 * 3600, "47 hours"),
    (3 * 86400, "3 days"), (14 * 86400, "2 weeks"), (90 * 86400, "3 months"),
    (2 * 365 * 86400, "2 years"),
])
def test_human_duration(seconds, text):
    assert human_duration(seconds) == text


COLUMNS = [("REPOSITORY", "Repository"), ("TAG", "Tag"), ("IMAGE ID", "ID"),
           ("CREATED", "CreatedSince"), ("SIZE", "Size")]
ROWS = [
    {"Repository": "busybox", "Tag": "latest", "ID": "a416a98b71e2",
     "CreatedSince": "4 weeks ago", "Size": "4.26MB", "CreatedAt": "x"},
    {"Repository": "127.0.0.1:5000/long/name", "Tag": "<none>", "ID": "0123456789ab",
     "CreatedSince": "2 hours ago", "Size": "1.2GB", "CreatedAt": "y"},
]


def _render(fmt, rows=ROWS):
    out = io.StringIO()
    render(out, rows, COLUMNS, fmt)
    return out.getvalue()


def test_default_table_matches_docker_tabwriter():
    assert _render(None).splitlines() == [
        "REPOSITORY                 TAG       IMAGE ID       CREATED       SIZE",
        "busybox                    latest    a416a98b71e2   4 weeks ago   4.26MB",
        "127.0.0.1:5000/long/name   <none>    0123456789ab   2 hours ago   1.2GB",
    ]
    assert _render("table") == _render(None)


def test_table_template_headers():
    assert _render("table {{.ID}}\\t{{.CreatedAt}}") == (
        "IMAGE ID       CREATED AT\na416a98b71e2   x\n0123456789ab   y\n"
    )


def test_json_lines():
    lines = _render("json").splitlines()
    assert lines[1].startswith('{"CreatedAt":"y","CreatedSince":"2 hours ago","ID":')
    assert '"Tag":"\\u003cnone\\u003e"' in lines[1]


def test_template_functions_and_escapes():
    assert _render("{{.Repository}}:{{upper .Tag}}\\t{{json .Size}}") == (
        'busybox:LATEST\t"4.26MB"\n127.0.0.1:5000/long/name:<NONE>\t"1.2GB"\n'
    )
    assert _render("{{.ID}}") == "a416a98b71e2\n0123456789ab\n"
    assert _render("{{lower .Size}}", ROWS[:1]) == "4.26mb\n"


def test_unknown_field():
    with pytest.raises(UsageError, match=r"can't evaluate field Foo"):
        _render("{{.Foo}}")


def test_empty_rows_still_print_header():
    assert _render(None, []) == "REPOSITORY   TAG       IMAGE ID   CREATED   SIZE\n"
