"""The layers of tuner and the probe, checked on the import graph (issue 17).

Every import in tuner/ and probes/ counts: at module level, inside functions (an
import moved into a function to dodge a cycle is still the cycle), under
TYPE_CHECKING, and importlib.import_module / __import__ of a literal name.  The graph
is built with the standard library's `ast`, from the files, without importing them.

LAYERS is the picture CONTRIBUTING.md draws ("Layers"): a module may import modules of
its own layer and of the layers listed before it, never of a later one; and no module
imports itself back through any chain (no cycle), inside a layer or across them.
"""
from __future__ import annotations

import ast
import json
import os
from typing import Dict, List, Set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("tuner", "probes")

# Lowest first.  A module belongs to the first layer with a name that is it or a package
# holding it.
LAYERS = [
    # stdlib-level helpers (pyroute2's netlink messages at most) that read the kernel and
    # format numbers: the homes of the host's /proc and /sys readers and of one process's,
    # sock_diag, network namespaces, a namespace's local addresses, the numbers' format,
    # the exit codes.
    ("bottom", ["tuner.host"]),
    # The connection probe: runs in a lean interpreter and in its forked workers.
    ("probe", ["probes"]),
    # The knob table, the model, the commands (which may start the probe).
    ("tuner", ["tuner"]),
]

# Cycles known today, each with the issue that removes it: a cycle among these modules
# only is tolerated until then (the change that removes it drops its line here).
KNOWN_CYCLES: dict = {}   # {"package.prefix": "the issue that removes it"}


def module_files() -> Dict[str, str]:
    """{dotted module name: path} of every module of PACKAGES."""
    found = {}
    for package in PACKAGES:
        for top, dirs, files in os.walk(os.path.join(REPO, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for f in files:
                if f.endswith(".py"):
                    parts = os.path.relpath(os.path.join(top, f), REPO)[:-3].split(os.sep)
                    found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = os.path.join(top, f)
    return found


def _absolute(module: str, path: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not path.endswith("__init__.py"):
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _literal_import(node: ast.Call):
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def imported_names(module: str, path: str, files) -> List[str]:
    """Every dotted name `module` imports: "from a import b" gives a.b when that is a
    module, else a (the package's own __init__, which every module of it runs anyway,
    counts only for the names it defines)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path, node)
            names += [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
        elif isinstance(node, ast.Call) and _literal_import(node):
            names.append(_literal_import(node))
    return names


def graph(files: Dict[str, str]) -> Dict[str, Set[str]]:
    """{module: modules of PACKAGES it imports}: each name resolved to the longest
    known module it names (a.b.c -> a.b when c is a function of a.b)."""
    edges: Dict[str, Set[str]] = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(module, path, files):
            if name.split(".")[0] not in PACKAGES:
                continue
            while name not in files and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in files and name != module:
                targets.add(name)
        edges[module] = targets
    return edges


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int:
    for rank, (_, members) in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _known(cycle: List[str]) -> bool:
    return any(all(m == p or m.startswith(p + ".") for m in cycle) for p in KNOWN_CYCLES)


# ---------------------------------------------------------------- the tests

def test_the_graph_sees_every_kind_of_import():
    """Not vacuous: a function-level import, a relative one, a literal import_module and
    a cycle on a toy graph are all found."""
    files = module_files()
    edges = graph(files)
    assert {"tuner.cli", "tuner.host.netns", "probes.classify", "probes.config"} <= set(edges)
    assert "tuner.host.conns" in edges["tuner.knobs"]        # from .host.conns import ...
    assert "tuner.host.netns" in edges["tuner.readings"]          # from .netns import ...
    assert "tuner.host.errors" in edges["tuner.host.netns"]
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(toy) == [["a", "b", "c"]]
    tree = {"tuner.x": os.path.join(REPO, "tuner", "x.py")}
    source = "def f():\n    from . import procfs\n    importlib.import_module('tuner.host.numfmt')\n"
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names.append(_absolute("tuner.x", tree["tuner.x"], node))
        elif isinstance(node, ast.Call) and _literal_import(node):
            names.append(_literal_import(node))
    assert names == ["tuner", "tuner.host.numfmt"]


def test_no_import_cycle():
    found = cycles(graph(module_files()))
    unknown = [c for c in found if not _known(c)]
    assert not unknown, f"import cycles (every import counts, those inside functions too): {unknown}"


def test_each_layer_imports_only_itself_and_the_layers_below():
    edges = graph(module_files())
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
              for m, targets in sorted(edges.items()) for t in sorted(targets)
              if layer_of(t) > layer_of(m)]
    assert not upward, "imports of a higher layer (see LAYERS, CONTRIBUTING.md 'Layers'):\n" + "\n".join(upward)


def test_contributing_draws_the_same_layers():
    with open(os.path.join(REPO, "CONTRIBUTING.md")) as f:
        text = f.read()
    section = text[text.index("## Layers"):]
    for _, members in LAYERS:
        for m in members:
            shown = m.replace(".", "/") + ("/" if m in PACKAGES or os.path.isdir(os.path.join(REPO, *m.split("."))) else ".py")
            assert shown in section, f"CONTRIBUTING.md's Layers section does not name {shown}"


def test_the_probe_signs_are_the_knob_tables():
    """probes/signs.json is generated from tuner/knobs.py (the probe reads the table's
    answers without importing it): stale after a change to the table until
    `python -m tuner.probing.signs` writes it again."""
    from tuner.probing import signs as probe_signs

    with open(probe_signs.PATH) as f:
        assert json.load(f) == json.loads(probe_signs.text()), \
            "probes/signs.json is stale: run python -m tuner.probing.signs"
