"""Recipes: YAML/JSON files and presets, validated against the passes' typed settings."""

from __future__ import annotations

import json

import pytest

from onnx_compress.errors import RecipeError
from onnx_compress.recipe import PRESETS, Recipe, load_recipe, preset_names


def test_yaml_and_json_recipes(tmp_path):
    (tmp_path / "r.yaml").write_text("name: mine\npasses:\n  - normalize: {fold_batchnorm: false}\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.name == "mine" and recipe.steps[0].settings == {"fold_batchnorm": False}
    assert recipe.build()[0].settings.fold_batchnorm is False
    (tmp_path / "r.json").write_text(json.dumps(recipe.as_dict()))
    assert load_recipe(tmp_path / "r.json") == recipe
    # YAML 1.1 would read an unquoted `off` as False; a recipe means the word
    (tmp_path / "q.yaml").write_text("passes:\n  - quantize: {mode: dynamic, guard: off}\n")
    assert load_recipe(tmp_path / "q.yaml").build()[0].settings.guard == "off"


def test_every_preset_builds():
    for name in preset_names():
        assert load_recipe(name).build(), name
    assert set(PRESETS) >= {"normalize-only"}


@pytest.mark.parametrize("text, fragment", [
    ("passes:\n  - quantise: {}\n", "unknown pass 'quantise'; valid passes:"),
    ("passes:\n  - normalize: {fold: 1}\n", "unknown setting(s) ['fold']"),
    ("passes:\n  - normalize: {iterations: 0}\n", "iterations must be an integer >= 1, got 0"),
    ("passes: []\n", "has no passes"),
    ("passes:\n  - normalize: {}\n    quantize: {}\n", "one key"),
    ("steps: []\n", "unknown key(s) ['steps']"),
    ("passes: [normalize: {\n", "unreadable recipe"),
])
def test_bad_recipes_name_the_problem(tmp_path, text, fragment):
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "r.yaml")
    assert fragment in str(info.value)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match="unknown preset 'teeny'; presets:"):
        load_recipe("teeny")
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(RecipeError):
        Recipe.from_dict("passes")
