"""Settings on the command line and in the README, generated from their declarations.

:func:`add_flags` turns the :func:`~onnx_compress.setting.setting` declarations of a settings
dataclass into argparse flags: the flag name (``--rank-ratio`` for ``rank_ratio``, or the
declared ``flag``), the help text with the dataclass's default, the choices, a converter for
the kind (``auto|N`` words, lists of names). A flag that is not given stays ``None``, so the
dataclass's own default applies: defaults are written in the dataclass only.
:func:`given` collects what was given, checked against the declaration with the flag's name
in the message. :func:`reference` writes the settings reference of the README; run
``python -m onnx_compress.setting_cli README.md`` after changing a declaration
(``tests/test_setting.py`` fails while the README block differs from it).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from onnx_compress.setting import BUDGET, SEARCHED, Setting, declared

__all__ = ["add_flags", "given", "flag_name", "load", "reference", "REFERENCE_CLASSES"]

#: the settings classes in the README's reference, by the name a recipe or command uses for them
REFERENCE_CLASSES = {
    "normalize": "onnx_compress.passes.normalize:NormalizeSettings",
    "fuse": "onnx_compress.passes.fuse:FuseSettings",
    "prune_structured": "onnx_compress.passes.prune.prune_structured_pass:PruneStructuredSettings",
    "prune_unstructured": "onnx_compress.passes.prune.prune_unstructured_pass:PruneUnstructuredSettings",
    "prune_transformer": "onnx_compress.passes.prune.transformer.prune_transformer_pass:PruneTransformerSettings",
    "lowrank": "onnx_compress.passes.lowrank.settings:LowRankSettings",
    "quantize": "onnx_compress.passes.quantize.settings:QuantizeSettings",
    "recover": "onnx_compress.training.recover:RecoverySettings",
    "compress (the pipeline)": "onnx_compress.pipeline:PipelineSettings",
    "distill": "onnx_compress.training.distill.common:DistillSettings",
    "export": "onnx_compress.converters.settings:ExportSettings",
    "deploy (Triton)": "onnx_compress.runtime.deploy.triton:TritonSettings",
}
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def flag_name(field: dataclasses.Field[Any], meta: Setting) -> str:
    return meta.flag or "--" + field.name.replace("_", "-")


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _default_text(field: dataclasses.Field[Any]) -> str:
    default = field.default
    if default is dataclasses.MISSING or default is None or default == ():
        return ""
    if isinstance(default, tuple):
        return " ".join(map(str, default))
    return "on" if default is True else "off" if default is False else str(default)


def _converter(meta: Setting) -> Any:
    number = {"int": int, "float": float}.get(meta.kind, str)
    if not meta.words:
        return number

    def convert(text: str) -> Any:
        if text in meta.words:
            return text
        try:
            return number(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {meta.allowed()}, got {text!r}") from None

    return convert


def add_flags(parser: Any, cls: Any, names: str | None = None, *, exclusive: bool = False, required: bool = False,
              title: str | None = None) -> None:
    """Add the flags of the fields ``names`` (space-separated; by default every field declared with a flag)
    of ``cls`` to ``parser``.

    A flag the parser already has (a setting two classes share, ``--scope``) is not added again.
    ``exclusive``: the flags form a mutually exclusive group (``required``: one must be given);
    ``title``: a group of their own in ``--help``.
    """
    fields = {field.name: (field, meta) for field, meta in declared(cls)}
    target = (parser.add_mutually_exclusive_group(required=required) if exclusive
              else parser.add_argument_group(title) if title else parser)
    known = {option for action in parser._actions for option in action.option_strings}
    for name in names.split() if names else [field.name for field, meta in declared(cls) if meta.cli]:
        field, meta = fields[name]
        flag = flag_name(field, meta)
        if flag in known:
            continue
        default = _default_text(field)
        # a searched strength is chosen; a negated switch's flag is the opposite of its field's default
        shown = default and meta.role != SEARCHED and not meta.negate and "default" not in meta.help
        help_text = meta.help + (f" (default {default})" if shown else "")
        options: dict[str, Any] = {"dest": _dest(flag), "default": None, "help": help_text.replace("%", "%%")}
        if meta.kind == "bool" and not meta.words:
            action = "store_false" if meta.negate else "store_true"
            options["action"] = argparse.BooleanOptionalAction if field.default is True and not meta.negate else action
        else:
            options["metavar"] = meta.metavar or ("N" if meta.kind == "int" else "X" if meta.kind == "float" else None)
            if meta.kind == "names":
                options.update(nargs="+", action="extend")
            elif meta.choices and not meta.words:
                options.update(choices=meta.choices, metavar=None)
            else:
                options["type"] = _converter(meta)
        target.add_argument(flag, **options)


def given(args: argparse.Namespace, cls: Any) -> dict[str, Any]:
    """The settings of ``cls`` given on the command line, checked (the message names the flag)."""
    values = {}
    for field, meta in declared(cls):
        flag = flag_name(field, meta)
        value = getattr(args, _dest(flag), None) if meta.cli else None
        if value is not None:
            values[field.name] = meta.check(flag, value)
    return values


def load(spec: str) -> Any:
    """The class ``"module:Name"`` (imported on first use)."""
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def reference() -> str:
    """The README's settings reference: every declared setting, its flag, default, values and role."""
    lines = [BEGIN, "<!-- generated by `python -m onnx_compress.setting_cli README.md`; do not edit -->"]
    for title, spec in REFERENCE_CLASSES.items():
        cls = load(spec)
        lines += ["", f"**{title}** (`{cls.__name__}`)", ""]
        for field, meta in declared(cls):
            flag = f"`{flag_name(field, meta)}`" if meta.cli else "recipe only"
            default = _default_text(field) or ("none" if field.default is None else "empty")
            role = f"; {meta.role}" if meta.role in (SEARCHED, BUDGET) else ""
            lines.append(f"- `{field.name}` ({flag}; default `{default}`; {meta.allowed()}{role}): {meta.help}")
    return "\n".join([*lines, "", END])


def write_reference(readme: Path) -> bool:
    """Replace the README's settings block with :func:`reference`; True when it changed."""
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} block")
    updated = pattern.sub(lambda _: reference(), text)
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
    return updated != text


if __name__ == "__main__":  # pragma: no cover
    for path in sys.argv[1:] or ["README.md"]:
        print(f"{path}: {'updated' if write_reference(Path(path)) else 'up to date'}")
