"""The package's import graph runs one way (DEVELOPERS.md: config at the floor; perf and ops low; models, data and
parallel above them; training above those; profiling, launch and the CLI on top). Every import is read with ast,
those inside functions included, since a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

ROOT = Path(__file__).resolve().parents[2] / "megatron_llm"

FORBIDDEN = {  # importer package -> packages it must never import
    "models": {"training", "launch", "profiling", "cli"},
    "data": {"training", "launch", "profiling", "cli"},
    "ops": {"training", "launch", "profiling", "cli"},
    "parallel": {"training", "launch", "profiling", "cli"},
    "perf": {"training", "launch", "profiling", "cli", "models", "data", "ops", "parallel"},
    "config": {"data", "models", "ops", "parallel", "training", "launch", "profiling", "cli", "perf"},
    "training": {"profiling", "launch", "cli"},
    "launch": {"training", "profiling", "models", "ops", "cli"},
    # The planner runs on login nodes: arithmetic over config + perf only (calibrate.py imports torch lazily).
    "planner": {"training", "launch", "profiling", "cli", "models", "data", "ops", "parallel"},
    "inference": {"profiling", "cli", "convert"},
    "convert": {"profiling", "cli"},
}


def _package(module: str) -> str:
    """megatron_llm.data.corpus -> data; top-level modules (megatron_llm.fileio) are their own package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> Set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    out: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                base = me.split(".")[: len(me.split(".")) - node.level + (1 if path.name == "__init__.py" else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # `from megatron_llm import training`
    return {m for m in out if m == "megatron_llm" or m.startswith("megatron_llm.")}


def package_graph() -> Dict[str, Dict[str, Set[str]]]:
    """package -> imported package -> the files that import it."""
    graph: Dict[str, Dict[str, Set[str]]] = {}
    modules = {_module_name(p) for p in ROOT.rglob("*.py")}
    for path in ROOT.rglob("*.py"):
        src = _package(_module_name(path))
        for mod in _imports(path):
            # keep only names that are modules or packages of ours (drop `from x import function`)
            while mod not in modules and "." in mod:
                mod = mod.rsplit(".", 1)[0]
            dst = _package(mod)
            if dst and dst != src:
                graph.setdefault(src, {}).setdefault(dst, set()).add(str(path.relative_to(ROOT)))
    return graph


def _cycle(graph: Dict[str, Dict[str, Set[str]]]):
    state: Dict[str, int] = {}
    stack: list = []

    def visit(n: str):
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, {}):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if not state.get(m):
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in list(graph):
        if not state.get(n):
            found = visit(n)
            if found:
                return found
    return None


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    f = ROOT / "data" / "_probe_for_test.py"
    f.write_text("def f():\n    from megatron_llm.training import pretrain\n    from ..launch import local\n")
    try:
        graph = package_graph()
        assert "training" in graph["data"] and "launch" in graph["data"]
        assert str(f.relative_to(ROOT)) in graph["data"]["training"]
    finally:
        f.unlink()


def test_no_import_cycle_between_packages():
    cycle = _cycle(package_graph())
    assert cycle is None, " -> ".join(cycle)


def test_no_import_points_up():
    graph = package_graph()
    bad = [f"{src} imports {dst} in {sorted(files)}" for src, deps in graph.items() for dst, files in deps.items()
           if dst in FORBIDDEN.get(src, set())]
    assert not bad, "\n".join(bad)


def test_perf_has_no_module_level_torch():
    for path in (ROOT / "perf").glob("*.py"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in top if isinstance(n, ast.ImportFrom)}
        assert not any(n and n.split(".")[0] == "torch" for n in names), path


def test_readme_layout_names_every_package():
    import re

    readme = (ROOT.parent / "README.md").read_text()
    block = readme[readme.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    listed = set()
    for line in block.split("tools/")[0].splitlines():  # "megatron_llm/  config/  ..." then "   perf/  ..."
        words = [w for w in line.split() if w != "megatron_llm/"]
        if words and re.fullmatch(r"[a-z_]+/", words[0]):
            listed.add(words[0].rstrip("/"))
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert listed == packages, (listed ^ packages)
