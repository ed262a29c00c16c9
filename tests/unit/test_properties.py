"""Property-based tests (hypothesis) of hv's parsers against Docker's documented grammars:
image references (distribution/reference), `-p`, `-v`, `--format` templates, the log frame
decoder and `cp`'s CONTAINER:PATH rule. Each parser either returns what the grammar says or
raises UsageError (one line + hint at the CLI) — never anything else — for any input."""

from __future__ import annotations

import re
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.formatting import TemplateError, parse_template
from hv.copy import parse_target
from hv.errors import UsageError
from hv.guest.logstream import HEADER, LogDecoder
from hv.images.reference import Reference
from hv.mounts import parse_volume
from hv.ports import parse as parse_port

FAST = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# --- image references: distribution/reference's grammar -------------------------------------

alnum = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=6)
separator = st.sampled_from([".", "_", "__", "-", "--"])
component = st.builds(lambda a, rest: a + "".join(s + b for s, b in rest), alnum,
                      st.lists(st.tuples(separator, alnum), max_size=2))
label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domain = st.one_of(
    st.builds(lambda labels, port: ".".join(labels) + (f":{port}" if port else ""),
              st.lists(label, min_size=2, max_size=3), st.none() | st.integers(1, 65535)),
    st.builds(lambda port: f"localhost:{port}", st.integers(1, 65535)),
    st.just("localhost"))
tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
digest = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h)


@st.composite
def references(draw) -> tuple[str, str | None, str, str | None, str | None]:
    dom = draw(st.none() | domain)
    path = "/".join(draw(st.lists(component, min_size=1, max_size=3)))
    t, d = draw(st.none() | tag), draw(st.none() | digest)
    text = (f"{dom}/" if dom else "") + path + (f":{t}" if t else "") + (f"@{d}" if d else "")
    return text, dom, path, t, d


@FAST
@given(references())
def test_every_reference_of_the_grammar_parses_and_round_trips(ref):
    text, dom, path, t, d = ref
    if dom is None and len(path) == 64 and all(c in "0123456789abcdef" for c in path):
        return  # Docker refuses a bare 64-hex name (it would read as an image id)
    first, _, rest = path.partition("/")
    if dom is None and rest and ("." in first or first == "localhost"):
        dom, path = first, rest  # Docker's rule: such a first component is a registry
        if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*",
                            dom):
            try:
                Reference.parse(text)
            except UsageError:
                return  # not a valid domain: refused, as Docker does
            raise AssertionError(f"{text!r} parsed")
    r = Reference.parse(text)
    assert r.digest == d
    assert r.tag == (t if t or d else "latest")
    if dom is None or dom in ("docker.io", "index.docker.io"):
        assert r.registry == "docker.io"
        assert r.repository == (path if "/" in path else "library/" + path)
    else:
        assert (r.registry, r.repository) == (dom, path)
    assert Reference.parse(str(r)) == r
    assert Reference.parse(r.familiar()) == r


@FAST
@given(st.text(max_size=40))
def test_any_text_is_a_reference_or_a_usage_error(text):
    try:
        r = Reference.parse(text)
    except UsageError as e:
        assert "\n" not in e.message.strip() and e.hint
        return
    assert Reference.parse(str(r)) == r


@FAST
@given(st.sampled_from(["UPPER", "a:b:c", "a@sha256:12", "-a", "a//b", "a/", ":x", "a:",
                        "a b", "a\n"]))
def test_near_misses_are_refused(bad):
    try:
        Reference.parse(bad)
    except UsageError:
        return
    raise AssertionError(f"{bad!r} parsed")


# --- -p [IP:][HOSTPORT:]CONTAINERPORT[/PROTO] ------------------------------------------------

ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
port = st.integers(1, 65535)


@FAST
@given(st.none() | ipv4, st.none() | port, port, st.none() | st.sampled_from(["tcp", "udp"]))
def test_every_port_spec_of_the_grammar_parses(ip, host, cport, proto):
    if ip is not None and host is None:
        spec = f"{ip}::{cport}"
    else:
        spec = (f"{ip}:" if ip else "") + (f"{host}:" if host else "") + str(cport)
    spec += f"/{proto}" if proto else ""
    p = parse_port(spec)
    assert (p.container_port, p.proto, p.host_ip, p.host_port) == (
        cport, proto or "tcp", ip or "0.0.0.0", host or 0)


@FAST
@given(st.text(string.digits + ":/.abctcpud[]-", max_size=24))
def test_any_port_text_is_a_spec_or_a_usage_error(text):
    try:
        p = parse_port(text)
    except UsageError as e:
        assert e.hint
        return
    assert 1 <= p.container_port <= 65535 and 0 <= p.host_port <= 65535
    assert p.proto in ("tcp", "udp")


@FAST
@given(st.sampled_from(["0", "65536", "99999", "a", "", "1:2:3:4", "80/sctp", "::1::80"]))
def test_bad_port_specs_are_refused(spec):
    try:
        parse_port(spec)
    except UsageError:
        return
    raise AssertionError(f"{spec!r} parsed")


# --- -v SOURCE:TARGET[:MODE] -----------------------------------------------------------------

volume_name = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{1,20}", fullmatch=True)
abs_path = st.lists(st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True), min_size=1,
                    max_size=3).map(lambda parts: "/" + "/".join(parts))


@FAST
@given(st.one_of(volume_name, abs_path), abs_path, st.none() | st.sampled_from(["ro", "rw"]))
def test_every_volume_spec_of_the_grammar_parses(source, target, mode):
    raw = f"{source}:{target}" + (f":{mode}" if mode else "")
    m = parse_volume(raw, cwd="/")
    assert m.type == ("bind" if source.startswith("/") else "volume")
    assert m.source == source and m.target == target
    assert m.readonly is (mode == "ro")


@FAST
@given(st.text(string.ascii_letters + string.digits + ":/._-,=", max_size=30))
def test_any_volume_text_is_a_spec_or_a_usage_error(raw):
    try:
        m = parse_volume(raw, cwd="/")
    except UsageError as e:
        assert e.hint
        return
    assert m.target.startswith("/") and m.type in ("bind", "volume")


# --- --format templates (Go text/template) ---------------------------------------------------

field_value = st.text(string.printable.replace("{", "").replace("}", ""), max_size=20)


@FAST
@given(st.from_regex(r"[A-Z][A-Za-z0-9]{0,10}", fullmatch=True), field_value,
       st.text(string.ascii_letters + " \t", max_size=10))
def test_a_field_renders_its_value(name, value, text):
    out = parse_template(f"{text}{{{{.{name}}}}}{text}").execute({name: value})
    assert out == f"{text}{value}{text}"


@FAST
@given(st.text(string.ascii_letters + "{}.|() \"$:=", max_size=30))
def test_any_template_text_parses_or_is_a_template_error(text):
    try:
        t = parse_template(text)
    except TemplateError as e:
        assert e.message.startswith("template: ") and "\n" not in e.message
        return
    try:
        t.execute({"Name": "n", "ID": "i"})
    except TemplateError:
        pass  # Go's execution errors (a missing key, a bad pipeline): the same class


# --- the log frame decoder -------------------------------------------------------------------

records = st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.integers(0, 2**64 - 1),
                             st.binary(max_size=300)), max_size=12)


@FAST
@given(records, st.lists(st.integers(1, 64), min_size=1, max_size=40))
def test_frames_decode_the_same_however_they_are_split(recs, cuts):
    stream = b"".join(HEADER.pack(s, len(d), ts) + d for s, ts, d in recs)
    dec, got, pos, i = LogDecoder(), [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += dec.feed(stream[pos:pos + step])
        pos += step
        i += 1
    assert [(r.stream, r.ts_ns, r.data) for r in got] == recs
    assert dec.pending == 0 and dec.consumed == len(stream)


@FAST
@given(records, st.integers(1, HEADER.size + 10))
def test_a_cut_stream_keeps_its_partial_record_pending(recs, cut):
    stream = b"".join(HEADER.pack(s, len(d), ts) + d for s, ts, d in recs)
    extra = HEADER.pack(1, 10, 0) + b"0123456789"
    dec = LogDecoder()
    got = dec.feed(stream + extra[:cut])
    assert len(got) == len(recs) + (1 if cut >= len(extra) else 0)
    assert dec.pending == (0 if cut >= len(extra) else cut)


# --- cp's CONTAINER:PATH ---------------------------------------------------------------------

container_name = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{1,20}", fullmatch=True)


@FAST
@given(container_name, abs_path)
def test_container_paths_are_split(name, path):
    assert parse_target(f"{name}:{path}") == (name, path)


@FAST
@given(st.sampled_from(["/", "./", "../"]), st.text(string.ascii_letters + ":/._", max_size=20))
def test_host_paths_stay_host_paths_even_with_a_colon(prefix, rest):
    text = prefix + rest
    assert parse_target(text) == (None, text)


@FAST
@given(container_name)
def test_a_container_without_a_path_is_a_usage_error(name):
    try:
        parse_target(f"{name}:")
    except UsageError as e:
        assert e.hint
        return
    raise AssertionError("parsed")
