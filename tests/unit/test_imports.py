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


FRONT_ENDS = ("cli", "api")  # the CLI and the Engine API service
SEAMS = ("hv.runtime", "hv.guest", "hv.images", "hv.volumes", "hv.guestops", "hv.network")


def _reaches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_front_ends_use_the_facade():
    """Neither front end imports what lies below hv.engine (podman's cmd/ and pkg/api/
    over libpod): they parse, render and translate, the engine does."""
    found = {(module, dep) for module, deps in _graph().items() if _reaches(module, FRONT_ENDS)
             for dep in deps if _reaches(dep, SEAMS)}
    assert found == set()


def test_no_lower_module_imports_the_facade():
    """hv.engine is the top of hv: only the front ends, the processes hv starts (restart
    watcher) and hv compare (a user of the facade) import it."""
    allowed = FRONT_ENDS + ("hv.engine", "hv.restart_watcher", "hv.pool_refill", "hv.compare",
                            "tests", "bench")
    found = {module for module, deps in _graph().items()
             if not _reaches(module, allowed) and any(_reaches(d, ("hv.engine",)) for d in deps)}
    assert found == set()


def test_no_environment_reads_below_the_config():
    """One Config is built from the environment (hv.config); nothing below reads it."""
    import ast

    readers = set()
    for path in sorted((REPO / "hv").rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") \
                    and isinstance(node.value, ast.Name) and node.value.id == "os":
                readers.add(".".join(rel.parts))
    # config: builds the Config; connection: hands LIBVIRT_LOG_OUTPUTS to libvirt's C code
    assert readers == {"hv.config", "hv.runtime.connection"}


def test_api_takes_its_settings_as_parameters():
    """api/ reads no environment: `hv system service` (cli/service_cmd.py) passes values in."""
    for path in (REPO / "api").rglob("*.py"):
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, path
