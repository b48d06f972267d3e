"""The layout rules of docs/architecture.md, checked on the source tree."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"converters": "onnx_compress.converters", "passes": "onnx_compress.passes",
          "runtime": "onnx_compress.runtime", "training": "onnx_compress.training",
          "onnx_compress": "onnx_compress"}
FRAMEWORKS = ("torch", "tensorflow", "keras", "tf2onnx")


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node that can run (``if TYPE_CHECKING:`` blocks left out), function bodies included."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not _is_type_checking(child))


def _required(node: ast.AST) -> str | None:
    """The module of ``require("torch", ...)`` / ``optional.require("torch", ...)``: how the project
    imports a framework."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    first = node.args[0]
    if name == "require" and isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def _imports(path: Path) -> set[str]:
    """Modules a file imports: import statements anywhere (functions too) and ``require`` calls."""
    names: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif (required := _required(node)) is not None:
            names.add(required)
    return names


def _is_framework(module: str) -> bool:
    return module.split(".")[0] in FRAMEWORKS


def _source_files():
    for top in MAPPED:
        yield from (ROOT / top).rglob("*.py")


def _module_level_imports(path: Path) -> set[str]:
    """Imports executed when the module is imported (not inside functions or ``if TYPE_CHECKING``)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                break
            if isinstance(inner, ast.Import):
                names.update(alias.name for alias in inner.names)
            elif isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                names.add(inner.module)
    return names


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = set()
    for top, package in MAPPED.items():
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([package, *rel.parts]))
    assert found == listed


def test_the_lazy_training_folders_exist_and_require_frameworks():
    """The lazy rule above checks real files: distill/ and narrow/ exist and do require frameworks."""
    required = {_required(n) for folder in LAZY_TRAINING for path in folder.rglob("*.py")
                for n in ast.walk(ast.parse(path.read_text()))} - {None}
    assert {"torch", "tensorflow", "keras"} <= required


def test_the_layering_test_sees_require():
    tree = ast.parse("def f():\n    torch = require('torch', 'x')\n    tf = optional.require('tensorflow', 'y')\n")
    assert {_required(n) for n in ast.walk(tree)} >= {"torch", "tensorflow"}


def test_the_core_reaches_the_training_room_only_lazily():
    """The training room (torch) is imported inside functions only: pipeline, recipe, CLI and API
    name it lazily (the registry by a "module:Class" string), never at module level."""
    for path in (ROOT / "onnx_compress").rglob("*.py"):
        bad = [n for n in _module_level_imports(path) if n.startswith("onnx_compress.training")]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad} at module level"
    for path in (ROOT / "training").rglob("*.py"):
        bad = [n for n in _module_level_imports(path) if n.split(".")[0] in ("torch", "tensorflow", "keras", "tf2onnx")]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad} at module level (use optional.require)"


def test_passes_and_runtime_never_import_frameworks_or_converters():
    for top in ("passes", "runtime"):
        for path in (ROOT / top).rglob("*.py"):
            bad = [n for n in _imports(path) if _is_framework(n)
                   or n.startswith(("onnx_compress.converters", "onnx_compress.training"))]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


#: the training room's folders whose modules require their framework inside functions only (like
#: converters/): distillation and narrow students, for torch and tensorflow alike
LAZY_TRAINING = (ROOT / "training" / "distill", ROOT / "training" / "narrow")
#: the sample models shared by samples/, tests and benchmarks: they require their framework at
#: import (a class derives from torch.nn.Module); no library module imports them
SAMPLES_PACKAGE = ROOT / "onnx_compress" / "samples"


def test_frameworks_are_imported_only_through_require_and_only_lazily():
    """Outside converters/ no import statement names a framework (``require`` it); outside the
    recovery modules of the training room, ``require`` of a framework runs inside a function, never
    when a module is imported (recovery's modules require torch at import: the core reaches them
    only lazily, see the test above). The training room's distill/ and narrow/ are held to the
    lazy rule."""
    for path in _source_files():
        tree = ast.parse(path.read_text())
        if path.is_relative_to(ROOT / "training") and not any(path.is_relative_to(p) for p in LAZY_TRAINING):
            continue
        if not path.is_relative_to(ROOT / "converters"):
            statements = {n for n in _imports(path) if _is_framework(n)} - {
                _required(n) for n in ast.walk(tree) if _required(n)}
            assert not statements, f"{path.relative_to(ROOT)} imports {statements} without require()"
        if path.is_relative_to(SAMPLES_PACKAGE):
            continue
        for node in tree.body:
            module_level = [r for n in ast.walk(node) if (r := _required(n)) and _is_framework(r)
                            and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            assert not module_level, f"{path.relative_to(ROOT)} requires {module_level} at import time"


def test_only_converters_and_the_cli_front_door_require_frameworks():
    """The CLI loads a user's PyTorch module / checkpoint (``export``, ``distill``) before handing
    it to converters/; every other core module reaches a framework only through converters/."""
    for top in ("onnx_compress",):
        for path in (ROOT / top).rglob("*.py"):
            if path.is_relative_to(ROOT / "onnx_compress" / "cli") or path.is_relative_to(SAMPLES_PACKAGE):
                continue
            bad = [n for n in _imports(path) if _is_framework(n)]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_no_library_module_imports_the_samples():
    """``onnx_compress.samples`` is for samples/, tests and benchmarks: the library never imports it."""
    for path in _source_files():
        if path.is_relative_to(SAMPLES_PACKAGE):
            continue
        bad = [n for n in _imports(path) if n.startswith("onnx_compress.samples")]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def _module_files() -> dict[str, Path]:
    found = {}
    for top, package in MAPPED.items():
        for path in (ROOT / top).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / top).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports, at module level or inside functions.

    ``from X import y`` depends on X (its ``__init__`` runs and must have defined ``y``) and,
    when ``X.y`` is a module, on ``X.y``; ``import X.y`` depends on ``X.y``. Imports under
    ``if TYPE_CHECKING:`` never run and are left out; ``importlib.import_module`` of a computed
    name (the lazy public API, the pass registry) is not seen.
    """
    found = _module_files()
    edges: dict[str, set[str]] = {}
    for name, path in found.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        targets: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                targets.add(module)
                targets.update(f"{module}.{alias.name}" for alias in node.names)
        edges[name] = {t for t in targets if t in found and t != name}
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_cycle_finder_finds_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_function_level_and_package_imports():
    edges = import_graph()
    # a function-level import: a recipe step reaches the pass registry lazily
    assert "onnx_compress.passes.registry" in edges["onnx_compress.recipe"]
    assert "onnx_compress.passes.quantize.quantize_pass" in edges["onnx_compress.passes.quantize"]


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_import_onnx_compress_does_not_import_frameworks():
    import subprocess
    import sys

    code = "import sys, onnx_compress, onnx_compress.runtime, onnx_compress.passes; " \
           "print([m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
