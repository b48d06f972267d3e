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
