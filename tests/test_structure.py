"""The shape of the code: pijax's modules import each other in one direction, with no cycles.

The import graph is read from the source with `ast`, every import counted, including those inside functions and
under `if TYPE_CHECKING:` (a lazy import is still a dependency: it only moves the failure to run time). An import
`from pijax.a import b` depends on the module `pijax.a.b` when that file exists, else on `pijax.a`.

Layers, lowest first; a module may import its own layer and those below it:
    base -> io -> model ops -> model -> sparsity -> index -> layout -> engine -> bench -> tasks
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "pijax"

# The first component under pijax/ (a subpackage or a top-level module) -> its layer.
LAYERS: list[tuple[str, frozenset[str]]] = [
    ("base", frozenset({"errors", "paths", "configure", "results", "validate"})),
    ("io", frozenset({"io", "config", "corpus", "tracking"})),
    ("model ops", frozenset({"kernels"})),
    # api: load_model and the dense Model (io + model); its sparse/hybrid views delegate upward (see EXCEPTIONS).
    # eval: perplexity and agreement of any logits function.
    ("model", frozenset({"model", "api", "eval"})),
    ("sparsity", frozenset({"sparsity"})),
    ("index", frozenset({"index"})),
    ("layout", frozenset({"layout"})),
    ("engine", frozenset({"engine"})),
    ("bench", frozenset({"bench"})),
    # run_config gathers every stage's config dataclass; run is the Hydra entry point; `pijax` the package root.
    ("tasks", frozenset({"tasks", "run", "run_config", ""})),
]

# (importer prefix, imported layer unit, reason). Allowed only for imports inside a function body, so that importing
# the importer never loads the upper layer.
EXCEPTIONS: list[tuple[str, str, str]] = [
    (
        "pijax.api",
        unit,
        "Model.sparse()/Model.hybrid() are the public entry points of the upper stages: thin methods that import "
        "and call them on use, so `pijax.load_model` stays the one public loader",
    )
    for unit in ("sparsity", "index", "layout", "engine")
]


def module_files() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = module_files()


def resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported pijax module, line, inside a function) for each import in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        seen = set()
        for t in targets:
            r = resolve(t) if t == "pijax" or t.startswith("pijax.") else None
            # a package's own parent __init__ and the root package are not dependencies worth an edge
            if r and r != name and not name.startswith(r + ".") and r != "pijax" and r not in seen:
                seen.add(r)
                out.append((r, node.lineno, id(node) in in_function))
    return out


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return out


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(module: str) -> int | None:
    unit = unit_of(module)
    return next((i for i, (_, units) in enumerate(LAYERS) if unit in units), None)


def test_the_walker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    src = "from . import b\nfrom .c import d\ndef f():\n    import pijax.errors\n"
    path = tmp_path / "a.py"
    path.write_text(src)
    MODULES.update({"pijax.zz.a": path, "pijax.zz.b": path, "pijax.zz.c": path})
    try:
        got = imports_of("pijax.zz.a", path)
    finally:
        for k in ("pijax.zz.a", "pijax.zz.b", "pijax.zz.c"):
            MODULES.pop(k)
    assert ("pijax.zz.b", 1, False) in got and ("pijax.zz.c", 2, False) in got and ("pijax.errors", 4, True) in got
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_pijax_has_no_import_cycles():
    found = cycles({name: {m for m, _, _ in deps} for name, deps in GRAPH.items()})
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_module_belongs_to_a_layer():
    loose = sorted(m for m in MODULES if layer_of(m) is None)
    assert not loose, f"modules in no layer of tests/test_structure.py (add them to LAYERS): {loose}"


def test_imports_go_down_the_layers():
    bad = []
    for name, deps in sorted(GRAPH.items()):
        mine = layer_of(name)
        for dep, line, lazy in deps:
            theirs = layer_of(dep)
            if mine is None or theirs is None or theirs <= mine:
                continue
            allowed = any(
                lazy and (name == who or name.startswith(who + ".")) and unit_of(dep) == unit
                for who, unit, _ in EXCEPTIONS
            )
            if not allowed:
                rel = MODULES[name].relative_to(ROOT.parent)
                bad.append(f"{rel}:{line}: {name} ({LAYERS[mine][0]}) imports {dep} ({LAYERS[theirs][0]})")
    assert not bad, "imports up the layers:\n" + "\n".join(bad)
