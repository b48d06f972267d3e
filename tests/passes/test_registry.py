"""The recipe registry: every listed pass imports and carries its own name."""

from __future__ import annotations

import pytest

from onnx_compress.errors import RecipeError
from onnx_compress.passes.registry import pass_class, pass_names


def test_registry_entries_import_and_match_their_names():
    for name in pass_names():
        assert pass_class(name).name == name
    with pytest.raises(RecipeError, match="valid passes: .*normalize"):
        pass_class("sparsify")


def test_budget_aware_passes_declare_it():
    """A pass keeps the budget itself only by declaring BudgetAwareSettings (with both fields);
    no other pass has a field the pipeline would mistake for the budget."""
    import dataclasses

    from onnx_compress.passes.base import BudgetAwareSettings

    aware = set()
    for name in pass_names():
        cls = pass_class(name)
        fields = {f.name for f in dataclasses.fields(cls.Settings)}
        if issubclass(cls.Settings, BudgetAwareSettings):
            aware.add(name)
            assert {"max_drop", "metric"} <= fields, name
        else:
            assert "max_drop" not in fields, name
    assert aware == {"quantize"}


def test_with_budget_fills_only_what_the_user_left_unset():
    from onnx_compress.passes.prune import PruneStructured
    from onnx_compress.passes.quantize import Quantize

    given = Quantize().with_budget(0.25, "cosine")
    assert given.keeps_budget and (given.settings.max_drop, given.settings.metric) == (0.25, "cosine")
    own = Quantize(max_drop=0.1, metric="top1").with_budget(0.25, "cosine")
    assert (own.settings.max_drop, own.settings.metric) == (0.1, "top1")
    prune = PruneStructured(ratio=0.5)
    assert not prune.keeps_budget and prune.with_budget(0.25, "cosine") is prune


def test_the_registry_imports_a_pass_only_when_a_recipe_names_it():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from onnx_compress.passes.registry import pass_class\n"
        "before = [m for m in sys.modules if m.startswith('onnx_compress.passes.')]\n"
        "pass_class('prune_structured')\n"
        "after = [m for m in sys.modules if m.startswith('onnx_compress.passes.')]\n"
        "print(sorted(before)); print('onnx_compress.passes.prune.prune_structured_pass' in after, "
        "'onnx_compress.passes.quantize' in after, 'onnx_compress.passes.fuse' in after)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = out.stdout.strip().splitlines()
    assert before == "['onnx_compress.passes.base', 'onnx_compress.passes.registry']"
    assert after == "True False False"
