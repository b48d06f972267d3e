"""The layout rules of docs/architecture.md, checked on the source tree."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"converters": "onnx_compress.converters", "passes": "onnx_compress.passes",
          "runtime": "onnx_compress.runtime", "training": "onnx_compress.training", "onnx_compress": "onnx_compress"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


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


def test_passes_and_runtime_never_import_frameworks_or_converters():
    forbidden = ("torch", "tensorflow", "keras", "tf2onnx")
    rooms = ("onnx_compress.converters", "onnx_compress.training")
    for top in ("passes", "runtime"):
        for path in (ROOT / top).rglob("*.py"):
            bad = [n for n in _imports(path) if n.split(".")[0] in forbidden or n.startswith(rooms)]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_core_reaches_the_training_room_only_lazily():
    """The training room (torch) is imported inside functions only: pipeline, recipe, CLI and API
    name it lazily (the registry by a "module:Class" string), never at module level."""
    for path in (ROOT / "onnx_compress").rglob("*.py"):
        bad = [n for n in _module_level_imports(path) if n.startswith("onnx_compress.training")]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad} at module level"
    for path in (ROOT / "training").rglob("*.py"):
        bad = [n for n in _module_level_imports(path) if n.split(".")[0] in ("torch", "tensorflow", "keras", "tf2onnx")]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad} at module level (use optional.require)"


def test_frameworks_are_imported_only_in_converters():
    for top in ("onnx_compress", "passes", "runtime"):
        for path in (ROOT / top).rglob("*.py"):
            bad = [n for n in _imports(path) if n.split(".")[0] in ("torch", "tensorflow", "keras", "tf2onnx")]
            assert not bad, f"{path.relative_to(ROOT)} imports {bad} at module level"


def test_import_onnx_compress_does_not_import_frameworks():
    import subprocess
    import sys

    code = "import sys, onnx_compress, onnx_compress.runtime, onnx_compress.passes; " \
           "print([m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
