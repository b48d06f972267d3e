"""Compression recipes: an ordered list of passes with their settings, and the presets.

A recipe file is YAML or JSON::

    name: small                 # optional
    passes:
      - prune_structured: {ratio: 0.5, importance: l1}
      - lowrank: {energy: 0.95}
      - quantize: {mode: auto}

Each entry of ``passes`` is a mapping with exactly one key, the pass's recipe name (see
``onnx_compress.passes.registry``), whose value is the pass's settings (may be empty). Loading a
recipe builds every pass, so an unknown pass, an unknown setting or a bad value is reported at
once, naming it and the valid choices, before any model is touched.

Data is not part of a recipe: the pipeline gives each pass the calibration data and, where a
pass checks the budget itself (quantization's sensitivity analysis), the validation data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onnx_compress.errors import RecipeError, SettingError

__all__ = ["PassStep", "Recipe", "PRESETS", "load_recipe", "preset_names", "recipe_schema"]


@dataclasses.dataclass(frozen=True)
class PassStep:
    """One entry of a recipe: a registered pass name and its settings."""

    name: str
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def build(self, index: int) -> Any:
        """The configured pass (validates the name and every setting)."""
        from onnx_compress.passes.registry import pass_class

        where = f"recipe step {index + 1} ({self.name})"
        try:
            cls = pass_class(self.name)
            return cls.from_dict(self.settings, where=where)
        except RecipeError as exc:
            raise RecipeError(f"{where}: {exc}" if not str(exc).startswith(where) else str(exc)) from exc
        except SettingError as exc:
            raise RecipeError(f"{where}: {exc}") from exc
        except TypeError as exc:  # a value of the wrong type reaching the dataclass
            raise RecipeError(f"{where}: {exc}") from exc


def recipe_schema() -> dict[str, Any]:
    """A JSON Schema of recipe files, generated from every registered pass's setting declarations."""
    from onnx_compress.passes.registry import pass_class, pass_names
    from onnx_compress.setting import json_schema

    steps = [{"type": "object", "properties": {name: json_schema(pass_class(name).Settings)},
              "required": [name], "additionalProperties": False} for name in pass_names()]
    return {"type": "object", "properties": {"name": {"type": "string"},
                                             "passes": {"type": "array", "items": {"oneOf": steps}}},
            "required": ["passes"], "additionalProperties": False}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """An ordered list of pass steps."""

    steps: tuple[PassStep, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        if not self.steps:
            raise RecipeError(f"recipe {self.name!r} has no passes")

    def build(self) -> list[Any]:
        """Instantiate every pass (raises RecipeError naming the first bad step)."""
        return [step.build(i) for i, step in enumerate(self.steps)]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passes": [{s.name: dict(s.settings)} for s in self.steps]}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "recipe") -> Recipe:
        """Parse the mapping form (see the module docstring)."""
        if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
            data = {"passes": data}
        if not isinstance(data, Mapping):
            raise RecipeError(f"{source}: expected a mapping with a 'passes' list, got {type(data).__name__}")
        unknown = sorted(set(data) - {"name", "passes"})
        if unknown:
            raise RecipeError(f"{source}: unknown key(s) {unknown}; a recipe has 'name' and 'passes'")
        entries = data.get("passes")
        if not isinstance(entries, Sequence) or isinstance(entries, (str, bytes)):
            raise RecipeError(f"{source}: 'passes' must be a list of {{pass_name: settings}} entries")
        steps = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or len(entry) != 1:
                raise RecipeError(
                    f"{source}: step {index + 1} must be a mapping with one key, the pass name "
                    f"(e.g. '- quantize: {{mode: dynamic}}'), got {entry!r}"
                )
            (name, settings), = entry.items()
            if settings is None:
                settings = {}
            if not isinstance(settings, Mapping):
                raise RecipeError(f"{source}: settings of step {index + 1} ({name}) must be a mapping, got {settings!r}")
            steps.append(PassStep(name=str(name), settings=dict(settings)))
        recipe = cls(steps=tuple(steps), name=str(data.get("name", "custom")))
        recipe.build()  # validate every pass and setting now
        return recipe

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Recipe:
        """Read a YAML (.yaml/.yml) or JSON (.json) recipe file."""
        file = Path(path)
        if not file.is_file():
            raise RecipeError(f"recipe file not found: {file}")
        text = file.read_text(encoding="utf-8", errors="replace")
        try:
            if file.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                data = _load_yaml(text)
        except Exception as exc:  # yaml.YAMLError, json.JSONDecodeError
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RecipeError(f"unreadable recipe {file}: {first}") from exc
        return cls.from_dict(data, source=str(file))


#: built-in recipes; the pipeline fills data and budget into them
PRESETS: dict[str, dict[str, Any]] = {
    "normalize-only": {"name": "normalize-only", "passes": [{"normalize": {}}]},
    # int8 for CPUs: static with calibration data, dynamic otherwise; op types and exclusions chosen
    # by measurement and sensitivity (see passes/quantize)
    # objective balanced: a slower int8 model is kept only when its size gain is at least the square of
    # its loss in speed
    "cpu-int8": {"name": "cpu-int8", "passes": [{"quantize": {"mode": "auto", "objective": "balanced"}}]},
    # smaller and faster: fewer channels (the layers reading them re-fitted on the calibration
    # data), factored layers, then int8. The prune ratio is an upper bound: the budget search
    # bisects it down. Seed CNNs, val drop at full strength: PyTorch 0 at 0.75 (plain pruning
    # had to back off to 0.375 of a 0.5 ratio), Keras 1.1 points at 0.75 -> searched to ~0.56.
    # Needs calibration data, as lowrank's max_error does.
    "small": {
        "name": "small",
        "passes": [
            # reconstruction fitted on up to 1,024 calibration samples: on the seed CNN (conv1 16 of 32, conv2 32
            # of 64 channels kept) 256 samples left 2 of 269 validation predictions flipped, 1,024 none
            {"prune_structured": {"ratio": 0.75, "round_to": "auto", "reconstruct": True, "calibration_samples": 1024}},
            {"lowrank": {"max_error": 0.03}},
            # 4-bit embedding tables in blocks of 128 (MiniLM: 5.1x smaller with int8 after, where blocks
            # of 32 gave 4.8x; cosine 0.998 for the tables alone); a no-op without one. Then int8.
            {"quantize": {"mode": "weight_only", "op_types": ["Gather"], "block_size": 128, "guard": "warn"}},
            # int8 where it is faster (latency): static int8 of the original seed CNN, dynamic int8 of the
            # fused transformer. After pruning the convolutions are small and QDQ around them made the seed
            # CNNs 2x slower (0.47x) for 2x smaller; static int8 of the dense layers alone 0.79x for 1.7x.
            {"quantize": {"mode": "auto", "objective": "latency"}},
            # then the dense layers that stayed float, int8 per call: the same ~1.8x in size at 0.97x the speed
            # (seed CNN after pruning and factoring); nothing to do after an int8 step above ("already quantized")
            {"quantize": {"mode": "dynamic", "op_types": ["Gemm", "MatMul"], "min_weight_elements": 0,
                          "objective": "balanced"}},
        ],
    },
    # for users with training data (compress --train): prune hard and factor, recover by distillation
    # from the original (the cut strength is searched WITH recovery in the loop), then int8.
    # The learning rate suits small CNNs; transformers want ~5e-5 (a recipe file).
    "tiny": {
        "name": "tiny",
        "passes": [
            {"prune_structured": {"ratio": 0.8, "round_to": "auto", "reconstruct": True}},
            {"lowrank": {"rank_ratio": 0.5}},
            # quantization-aware: trains the int8 model the quantize step below writes. Every epoch runs
            # (patience = epochs: the reconstructed cut starts better than the first epochs at the peak
            # learning rate, and patience 4 stopped there); labels, when the data has them, weigh 0.7
            # (seed CNNs, 10 recoveries each: the full cut held the 0.5-point budget on validation in
            # 3 of 10 at 0.5, 8 of 10 at 0.7: the student also wins back images the teacher gets wrong)
            {"recover": {"epochs": 20, "lr": 0.001, "patience": 20, "label_weight": 0.7, "qat": True}},
            # int8 weights of the dense layers, quantized per call (after the cut the convolutions are
            # small: QDQ around them costs more than it saves). Balanced: kept when not measurably slower
            # (the seed CNNs' dense layers: ~1.7x smaller at 0.97-1.0x the speed, which latency refused)
            {"quantize": {"mode": "dynamic", "op_types": ["Gemm", "MatMul"], "min_weight_elements": 0,
                          "objective": "balanced"}},
        ],
    },
    # transformer encoders, for users with training data (compress --train): attention heads, FFN neurons and
    # one whole layer cut (prune_transformer), recovered by distillation from the original (the pooled/per-token
    # output plus every kept encoder layer's output against the teacher's same layer, per real token; batches
    # padded to their longest sentence; AdamW 3e-4 over a fixed time, validated every 50 steps), then small's
    # int8 steps. The budget search bisects the cut with recovery in the loop: each trial trains max_minutes;
    # strength s cuts heads and FFN by s * 25 % and the layer only at s = 1. Heads and FFN together because,
    # with int8 running the per-token layers on real tokens only, attention (which still sees the padded
    # layout) is a large share of the time: on the TorchScript MiniLM, heads 25 % + FFN 25 % recovered 20 min
    # + int8 gave cosine 0.965 at 1.43x the int8-only model at batch 8 (Xeon, AVX-512 VNNI), FFN 50 % 0.949
    # at 1.34x (AMD EPYC, AVX-512 VNNI, before padding skipping).
    "prune-recover": {
        "name": "prune-recover",
        "passes": [
            {"prune_transformer": {"heads": 0.25, "ffn": 0.25, "layers": 1}},
            {"recover": {"epochs": 10000, "steps_per_epoch": 50, "patience": 10000, "lr": 0.0003, "batch_size": 16,
                         "match": ["layers"], "max_minutes": 18}},
            {"quantize": {"mode": "weight_only", "op_types": ["Gather"], "block_size": 128, "guard": "warn"}},
            {"quantize": {"mode": "auto", "objective": "balanced"}},
        ],
    },
    # half precision for GPUs (float inputs and outputs kept)
    # (objective size: the CPU timing of the guard says nothing about a GPU)
    "gpu-fp16": {"name": "gpu-fp16", "passes": [{"quantize": {"mode": "fp16", "objective": "size"}}]},
}


def _load_yaml(text: str) -> Any:
    """YAML with only ``true`` / ``false`` as booleans.

    YAML 1.1 (PyYAML) also reads unquoted ``on``, ``off``, ``yes``, ``no`` as booleans, so
    ``guard: off`` would arrive as ``False``; here they stay strings, as a reader expects.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for first in "tTfF":
        Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                     [first])
    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def preset_names() -> list[str]:
    return sorted(PRESETS)


def load_recipe(recipe: Recipe | str | os.PathLike[str] | Mapping[str, Any] | Sequence[Any]) -> Recipe:
    """A Recipe from a Recipe, a preset name, a file path, or the mapping/list form."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, str) and recipe in PRESETS:
        return Recipe.from_dict(PRESETS[recipe], source=f"preset {recipe}")
    if isinstance(recipe, (str, os.PathLike)):
        path = Path(recipe)
        if not path.exists() and isinstance(recipe, str) and path.suffix == "":
            raise RecipeError(f"unknown preset {recipe!r}; presets: {', '.join(preset_names())}")
        return Recipe.from_file(path)
    return Recipe.from_dict(recipe)
