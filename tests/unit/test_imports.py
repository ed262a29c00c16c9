"""The module graph: no import cycles (a function-level import counts as much as a top one)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

def _graph() -> dict[str, set[str]]:
    mods: dict[str, set[str]] = {}
    for top in ("hv", "cli", "api"):
        for path in (REPO / top).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            deps: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    deps.add(node.module)
                    deps.update(f"{node.module}.{a.name}" for a in node.names)
                elif isinstance(node, ast.Import):
                    deps.update(a.name for a in node.names)
            mods[name] = deps
    return {m: {d for d in deps if d in mods and d != m} for m, deps in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(frozenset(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == set()


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}


# What a front end may still reach below the facade; issue "One engine facade for two front
# ends" removes these two (attach frames behind an attach stream, the libvirt pre-open).
FRONT_ENDS = ("cli", "api")  # the `hv` command and the Engine API (`hv system service`)
FRONT_END_BYPASSES = {("cli.streams", "hv.guest"), ("cli.entry", "hv.runtime")}


def test_front_ends_use_the_facade():
    seams = ("hv.runtime", "hv.guest", "hv.images")
    found = set()
    for module, deps in _graph().items():
        if module.split(".")[0] in FRONT_ENDS:
            for dep in deps:
                for seam in seams:
                    if dep == seam or dep.startswith(seam + "."):
                        found.add((module, seam))
    assert found == FRONT_END_BYPASSES


def test_api_takes_its_settings_as_parameters():
    """api/ reads no environment: `hv system service` (cli/service_cmd.py) passes values in."""
    for path in (REPO / "api").rglob("*.py"):
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, path
