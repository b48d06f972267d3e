"""Settings are declared once (onnx_compress/setting.py): validation, CLI flags, recipe schema and
the README's settings reference all come from the declarations."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from onnx_compress.cli.main import build_parser
from onnx_compress.errors import SettingError
from onnx_compress.passes.base import BudgetAwareSettings
from onnx_compress.passes.lowrank.settings import LowRankSettings
from onnx_compress.passes.prune.prune_structured_pass import PruneStructuredSettings
from onnx_compress.passes.quantize.settings import QuantizeSettings
from onnx_compress.setting import BUDGET, declared, json_schema, setting
from onnx_compress.setting_cli import given, reference
from onnx_compress.training.recover import RecoverySettings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_settings_reference_is_generated():
    text = README.read_text(encoding="utf-8")
    block = text[text.index("<!-- settings:begin -->"):text.index("<!-- settings:end -->") + len("<!-- settings:end -->")]
    assert block == reference(), "run `python -m onnx_compress.setting_cli README.md`"


@pytest.mark.parametrize(("cls", "values", "message"), [
    (PruneStructuredSettings, {"ratio": 1.0}, "ratio must be a number in [0, 1), got 1.0"),
    (PruneStructuredSettings, {"round_to": 0}, "round_to must be 'auto' or an integer >= 1, got 0"),
    (PruneStructuredSettings, {"importance": "l3"}, "importance must be one of l1, l2, bn, activation"),
    (LowRankSettings, {"energy": 0.0}, "energy must be a number in (0, 1] or None, got 0.0"),
    (LowRankSettings, {"op_types": ("Conv", "Add")}, "op_types must be a list of names from MatMul, Gemm, Conv"),
    (QuantizeSettings, {"smooth": 1.0}, "smooth must be 'auto', 'off' or a number in (0, 1), got 1.0"),
    (QuantizeSettings, {"per_channel": "yes"}, "per_channel must be true or false"),
    (RecoverySettings, {"epochs": 2.5}, "epochs must be an integer >= 1, got 2.5"),
])
def test_validation_comes_from_the_declaration(cls, values, message):
    with pytest.raises(SettingError) as info:
        cls(**values)
    assert str(info.value).startswith(message)


def test_flags_are_generated_with_the_dataclass_defaults():
    parser = build_parser(["quantize"])
    command = parser._subparsers._group_actions[0].choices["quantize"]
    actions = {a.dest: a for a in command._actions}
    assert actions["block_size"].default is None and "(default 32)" in actions["block_size"].help
    assert actions["batch"].option_strings == ["--batch"]  # benchmark_batch's declared flag
    assert actions["calibration_method"].choices == ("minmax", "entropy", "percentile")
    args = parser.parse_args(["quantize", "m.onnx", "-o", "q.onnx", "--block-size", "64", "--no-per-channel",
                              "--smooth", "0.5", "--exclude", "auto", "fc1"])
    assert given(args, QuantizeSettings) == {"block_size": 64, "per_channel": False, "smooth": 0.5,
                                             "exclude": ("auto", "fc1")}
    bad = parser.parse_args(["quantize", "m.onnx", "-o", "q.onnx", "--smooth", "2"])
    with pytest.raises(SettingError, match=r"--smooth must be 'auto', 'off' or a number in \(0, 1\), got 2.0"):
        given(bad, QuantizeSettings)
    recover = build_parser(["recover"]).parse_args(["recover", "m", "--teacher", "t", "--data", "d", "--val", "v",
                                                     "-o", "o", "--loss", "cosine"])
    assert RecoverySettings(**given(recover, RecoverySettings)) == RecoverySettings(loss="cosine")
    with pytest.raises(SystemExit):
        build_parser(["recover"]).parse_args(["recover", "m", "--teacher", "t", "--data", "d", "--val", "v", "-o",
                                              "o", "--device", "tpu"])


def test_recipe_schema_comes_from_the_declaration():
    schema = json_schema(PruneStructuredSettings)
    assert schema["additionalProperties"] is False
    ratio = schema["properties"]["ratio"]
    assert ratio["minimum"] == 0 and ratio["exclusiveMaximum"] == 1 and ratio["default"] == 0.5
    assert schema["properties"]["round_to"]["anyOf"][1] == {"enum": ["auto"]}
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(PruneStructuredSettings)}


def test_budget_aware_settings_declare_their_budget_fields():
    assert {f.name for f, meta in declared(QuantizeSettings) if meta.role == BUDGET} == {
        "max_drop", "metric", "budget_margin", "objective"}
    filled = QuantizeSettings().with_budget(0.5, "cosine", margin=0.0, objective="size")
    assert (filled.max_drop, filled.metric, filled.budget_margin, filled.objective) == (0.5, "cosine", 0.0, "size")
    assert QuantizeSettings(max_drop=0.1, metric="top1").with_budget(0.5, "cosine").max_drop == 0.1

    @dataclasses.dataclass(frozen=True)
    class Incomplete(BudgetAwareSettings):
        max_drop: float | None = setting(None, kind="float", role=BUDGET, help="the budget")

    with pytest.raises(TypeError, match="must declare exactly"):
        Incomplete()


def test_recipe_schema_covers_every_pass_and_preset():
    from onnx_compress.passes.registry import pass_names
    from onnx_compress.recipe import PRESETS, recipe_schema

    steps = {next(iter(step["properties"])): step["properties"] for step in
             recipe_schema()["properties"]["passes"]["items"]["oneOf"]}
    assert sorted(steps) == sorted(pass_names())
    for name, schema in steps.items():
        assert schema[name]["properties"], f"{name} declares no settings"
    for preset in PRESETS.values():
        for entry in preset["passes"]:
            (name, settings), = entry.items()
            assert set(settings or {}) <= set(steps[name][name]["properties"]), (name, settings)


def test_overridden_puts_keyword_settings_on_top_and_checks_them_again():
    from onnx_compress.converters.settings import ExportSettings
    from onnx_compress.setting import overridden

    base = ExportSettings(opset=17)
    changed = overridden(base, {"atol": 1e-3, "input_names": ["x"]}, where="export_keras()")
    assert (changed.opset, changed.atol, changed.input_names) == (17, 1e-3, ("x",))  # lists become tuples
    assert overridden(base, {}, where="export_keras()") is base
    with pytest.raises(TypeError, match=r"export_keras\(\) got unexpected keyword arguments \['opset_version'\]"):
        overridden(base, {"opset_version": 18}, where="export_keras()")
    with pytest.raises(SettingError, match="atol must be a number >= 0, got -1"):
        overridden(base, {"atol": -1.0}, where="export_keras()")


def test_distill_takes_settings_and_keyword_settings_and_refuses_unknown_ones_before_training():
    from onnx_compress.training.distill import tensorflow as keras_distill, torch as torch_distill
    from onnx_compress.training.distill.common import DistillSettings

    assert torch_distill.DEFAULTS == DistillSettings()  # the class defaults are the PyTorch trainer's
    assert keras_distill.DEFAULTS.batch_size != DistillSettings().batch_size  # Keras declares its own once
    for distill in (torch_distill.distill, keras_distill.distill):
        with pytest.raises(TypeError, match=r"unexpected keyword arguments \['epoch'\]"):
            distill(object(), object(), {}, epoch=3)
        with pytest.raises(SettingError, match="alpha must be a number in"):
            distill(object(), object(), {}, DistillSettings(epochs=1), alpha=2.0)
