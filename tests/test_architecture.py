"""The shape of the code, checked from its source: imports run one way (cli -> verify ->
watermark), no module imports another that imports it back (every import counts: top-level,
inside functions, under TYPE_CHECKING), only cli imports typer, and no file needs scrolling."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Source folder -> the package it installs as.
PACKAGES = {"watermark": "distillmark.watermark", "verify": "distillmark.verify",
            "cli": "distillmark.cli"}
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for folder, pkg in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = list(rel.parts)
            if parts[0] == "_top":  # the top-level ``distillmark`` package
                parts, base = parts[1:], "distillmark"
            else:
                base = pkg
            if parts and parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([base, *parts])] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str, path: Path) -> set[str]:
    """Project modules ``name`` imports, anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if _is_package(name) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` imports the submodule ``pkg.sub`` when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_the_project():
    assert len(MODULES) > 60
    assert "distillmark.watermark.prf" in GRAPH["distillmark.watermark.greenlist"]
    assert "distillmark.verify.scan.scoring" in GRAPH["distillmark.verify.scan.shards"]


def test_no_import_cycle():
    assert _cycles() == []


def test_imports_run_one_way():
    rank = {"distillmark.watermark": 0, "distillmark.verify": 1, "distillmark.cli": 2}

    def layer(name: str) -> int:
        for prefix, r in rank.items():
            if name == prefix or name.startswith(prefix + "."):
                return r
        return 3  # the top-level package: python -m distillmark

    wrong = [(a, b) for a, targets in GRAPH.items() for b in targets if layer(b) > layer(a)]
    assert wrong == []


def test_only_the_command_line_imports_typer():
    users = []
    for name, path in MODULES.items():
        if name.startswith("distillmark.cli"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(m == "typer" or m.startswith("typer.") for m in mods):
                users.append(name)
    assert users == []


def test_no_file_needs_scrolling():
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_every_package_is_installed():
    """A subpackage missing from pyproject's package list works in a checkout and is absent
    from the installed wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {"distillmark." + ".".join(p.parent.relative_to(ROOT).parts)
             for top in ("watermark", "verify", "cli")
             for p in (ROOT / top).rglob("__init__.py") if "_top" not in p.parts}
    assert found - listed == set(), f"add to [tool.setuptools] packages: {found - listed}"
