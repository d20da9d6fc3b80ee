"""The package's import graph: no cycle, and layers that import one way (downward).

Every `import` and `from ... import` under adaptermerge/ counts, inside functions too, so a lazy
import cannot hide a cycle or an upward reach. Edges are resolved to the module that defines what
is imported: `from . import x` is submodule x when there is one, else the package's __init__.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "adaptermerge"
ROOT = "adaptermerge"
TOP = 8

# Module prefix -> layer, bottom (1) to top (8). A module imports only from its own layer or lower
# ones; the longest matching prefix decides, and a package's __init__ sits in its package's layer.
LAYERS = {
    # leaf utilities
    "errors": 1, "registry": 1, "lazy": 1, "fileio": 1, "stwriter": 1, "workers": 1, "cputhreads": 1, "charts": 1,
    "quiet": 1, "provenance": 1, "progress": 1, "modelcard": 1, "validate": 1,
    # io and shared data
    "adapter": 2, "basemodel": 2, "base": 2, "quantization": 2, "chat": 2,
    # math
    "methods": 3, "lowrank": 3, "calibration": 3,
    # engine
    "engine": 4, "diagnostics": 4, "model_output": 4, "qlora": 4, "inspection": 4, "mergeconfig": 4,
    # training and evaluation
    "training": 5, "evalsuite": 5,
    # the pipeline
    "recipe": 6,
    # the public front door
    "api": 7,
    # entry points
    "cli": TOP, "__main__": TOP,
}


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """{dotted module name: file} of every module in `package` (a package is named by its __init__)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.with_suffix("").relative_to(package.parent).parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _targets(node: ast.AST, name: str, is_package: bool, modules: set[str]) -> list[str]:
    """The package modules one import statement of module `name` loads explicitly."""
    if isinstance(node, ast.Import):
        found = []
        for alias in node.names:
            parts = alias.name.split(".")
            # `import a.b.c` loads the deepest of a.b.c, a.b, a that is a module here
            deepest = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in modules), None)
            if deepest:
                found.append(deepest)
        return found
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        anchor = name.split(".") if is_package else name.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        source = ".".join(anchor + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    found = []
    for alias in node.names:
        if f"{source}.{alias.name}" in modules:
            found.append(f"{source}.{alias.name}")  # a submodule
        elif source in modules:
            found.append(source)  # a name defined in that module (or package __init__)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the package modules it imports}, counting imports anywhere in the file."""
    files = module_files(package)
    modules = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(_targets(node, name, is_package, modules))
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def layer(module: str) -> int | None:
    """The layer of a module of the package (None: not in LAYERS)."""
    if module == ROOT:
        return TOP
    rest = module[len(ROOT) + 1 :].split(".")
    for n in range(len(rest), 0, -1):
        if ".".join(rest[:n]) in LAYERS:
            return LAYERS[".".join(rest[:n])]
    return None


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} (layer {layer(a)}) -> {b} (layer {layer(b)})"
        for a, targets in graph.items() for b in targets
        if layer(a) is not None and layer(b) is not None and layer(b) > layer(a)
    )


# ---------------------------------------------------------------- the package


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in import_graph() if layer(m) is None)
    assert not unplaced, f"modules without a layer (add their prefix to LAYERS): {', '.join(unplaced)}"


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (imports inside functions count):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_modules_import_only_their_own_layer_or_lower_ones():
    upward = upward_edges(import_graph())
    assert not upward, "imports reaching a higher layer:\n" + "\n".join(upward)


def test_no_module_imports_the_package_root():
    offenders = sorted(m for m, targets in import_graph().items() if ROOT in targets and m != ROOT)
    assert not offenders, f"these modules import the package root (import the defining module instead): {', '.join(offenders)}"


def test_chat_is_a_leaf_that_training_evaluation_and_calibration_share():
    """chat/ sits beside the io modules but needs none of them: records, tokens and generation
    work on any model and tokenizer handed in."""
    allowed = {f"{ROOT}.errors", f"{ROOT}.fileio"}
    reach = sorted(f"{m} -> {t}" for m, targets in import_graph().items() if m.startswith(f"{ROOT}.chat")
                   for t in targets if not t.startswith(f"{ROOT}.chat") and t not in allowed)
    assert not reach, "chat/ imports beyond itself, errors and fileio:\n" + "\n".join(reach)


# ---------------------------------------------------------------- the checker itself


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_an_import_inside_a_function_still_closes_a_cycle(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import g\n",
        "pkg/b.py": "def g():\n    from . import a\n",
        "pkg/sub/__init__.py": "from .c import h\n",
        "pkg/sub/c.py": "from . import d\nfrom .. import a\nfrom ..sub import h\n",
        "pkg/sub/d.py": "import pkg.sub.c\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.b"] == {"pkg.a"}
    # `from . import d` is the submodule d; `from ..sub import h` a name of sub's __init__
    assert graph["pkg.sub.c"] == {"pkg.sub.d", "pkg.a", "pkg.sub"}
    assert graph["pkg.sub.d"] == {"pkg.sub.c"}
    assert cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.sub", "pkg.sub.c", "pkg.sub.d"]]
