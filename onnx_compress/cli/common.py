"""What the commands share: their declaration (:func:`command`, :func:`arg`), the inputs several of them
take (declared once in :data:`SHARED`), the session settings, output, and the check that -o spares the input."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from onnx_compress.errors import SettingError
from onnx_compress.jsonable import jsonable
from onnx_compress.setting_cli import add_flags, given, load

__all__ = ["Command", "command", "arg", "one_of", "add_input", "SHARED", "SESSION", "NOTHING_TO_DO_EXIT",
           "add_settings_flags", "global_flags", "parse_dims", "from_flags", "emit", "protect_inputs"]

#: the inputs several commands take, declared once: a command names them (``"--json"``) or rewords
#: one (``arg("--data", "calibration .npz ...")`` keeps the rest of its declaration)
SHARED: dict[str, dict[str, Any]] = {
    "model": {"type": Path, "help": "the ONNX model (never modified)"},
    "-o": {"flags": ("-o", "--output"), "type": Path, "required": True, "help": "the ONNX file to write"},
    "--data": {"type": Path, "help": "data .npz keyed by the model's input names"},
    "--val": {"type": Path, "help": "held-out validation .npz"},
    "--json": {"action": "store_true", "help": "print one JSON object on stdout instead of a table"},
    "--batch": {"type": int, "default": 1, "help": "batch size for the MAC count"},
    "--dim": {"action": "append", "metavar": "NAME=SIZE",
              "help": "size of a symbolic input dimension, e.g. sequence=128 (repeatable)"},
    "--metric": {"choices": ["auto", "top1", "cosine", "max_abs"], "default": "auto",
                 "help": "budget metric (default auto: top1 when the data has labels, else cosine)"},
    "--no-progress": {"action": "store_true", "help": "no progress bars on stderr"},
}
#: a command's handler: the parsed arguments -> the exit status
Handler = Callable[[argparse.Namespace], int]
#: the generated ONNX Runtime session flags (--provider, --threads)
SESSION = "onnx_compress.runtime.session:SessionSettings"
#: exit status when nothing was written: quantize left the model as it is (already quantized, nothing
#: quantizable, slower), recover found no epoch better than the compressed model
NOTHING_TO_DO_EXIT = 3


def arg(name: str, help: str | None = None, default: Any = None, **options: Any) -> dict[str, Any]:
    """One input of a command that is not a pass setting: a positional (``model``) or a flag (``--vs``),
    starting from its :data:`SHARED` declaration if it has one. The kind follows the default (``False``:
    a switch; an int or float: that type) unless ``type`` or ``action`` is given; the help gets
    ``(default X)`` unless it speaks of the default."""
    declared = {"flags": (name,), **SHARED.get(name, {}), **options, **({"help": help} if help else {})}
    if default is not None:
        declared["default"] = default
    value = declared.get("default")
    if value is False and "action" not in declared:
        declared["action"] = "store_true"
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and "type" not in declared:
        declared["type"] = type(value)
    if value is not None and value is not False and "default" not in declared["help"]:
        declared["help"] += f" (default {value})"
    return declared


def one_of(*args: dict[str, Any], required: bool = False) -> dict[str, Any]:
    """Inputs of which at most one (``required``: exactly one) may be given."""
    return {"one_of": args, "required": required}


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: its words (``"export torch"``); its text (the first line is its help in the command
    list, the rest its ``--help`` description: what it does, with an example); its handler (the parsed
    arguments -> the exit status; none for a group of commands); its inputs (:func:`arg`, :func:`one_of`,
    or a name of :data:`SHARED`); and its generated settings flags, added only when the command is
    parsed (importing every pass's settings costs seconds): ``"module:SettingsClass"`` (every setting
    declared with a flag), ``("module:SettingsClass", "field ...", {add_flags options})`` or a function
    of the parser. ``--json`` is added unless ``json=False``."""

    name: str
    text: str
    run: Handler | None = None
    inputs: tuple[Any, ...] = ()
    settings: tuple[Any, ...] = ()
    json: bool = True

    def add_to(self, subparsers: Any) -> argparse.ArgumentParser:
        help, _, description = self.text.strip("\n").partition("\n")
        parser = subparsers.add_parser(self.name.split()[-1], help=help, description=description.strip("\n") or help,
                                       parents=[global_flags()] if self.run else [],
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.set_defaults(handler=self.run, settings_flags=self.settings or None)
        for item in (*self.inputs, *(["--json"] if self.json and self.run else [])):
            add_input(parser, arg(item) if isinstance(item, str) else item)
        return parser


def command(name: str, text: str, inputs: tuple[Any, ...] = (), **options: Any) -> Callable[[Handler], Command]:
    """Declare the decorated handler as the :class:`Command` ``name`` (``options``: its ``settings``, ``json``)."""
    return lambda run: Command(name, text, run, inputs, **options)


def add_input(parser: Any, declared: dict[str, Any]) -> None:
    """Add an input declared with :func:`arg` or :func:`one_of` to ``parser``."""
    if "one_of" in declared:
        group = parser.add_mutually_exclusive_group(required=declared["required"])
        for item in declared["one_of"]:
            add_input(group, item)
    else:
        parser.add_argument(*declared["flags"], **{key: value for key, value in declared.items() if key != "flags"})


def global_flags() -> argparse.ArgumentParser:
    """--debug and -v, before the command or after it (``onnx-compress inspect m.onnx --debug``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logs")
    parent.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show progress logs (INFO)")
    return parent


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """Add the generated settings flags of a command's parser (once)."""
    for spec in parser.get_default("settings_flags") or ():
        if callable(spec):
            spec(parser)
        elif isinstance(spec, str):
            add_flags(parser, load(spec))
        else:
            add_flags(parser, load(spec[0]), spec[1], **(spec[2] if len(spec) > 2 else {}))
    parser.set_defaults(settings_flags=None)


def parse_dims(items: list[str] | None) -> dict[str, int]:
    """``["sequence=64"]`` -> ``{"sequence": 64}`` (sizes of symbolic dimensions)."""
    dims: dict[str, int] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.isdigit() or int(value) < 1:
            raise SettingError(f"--dim must look like NAME=SIZE (e.g. sequence=64), got {item!r}")
        dims[name] = int(value)
    return dims


def from_flags(args: argparse.Namespace, spec: str) -> Any:
    """The settings class ``spec`` (``"module:Class"``) built from its flags given (the rest: its defaults)."""
    cls = load(spec)
    return cls(**given(args, cls))


def emit(args: argparse.Namespace, payload: Mapping[str, Any], human: str, status: int = 0) -> int:
    """Print ``payload`` as one JSON object with ``--json``, else the human-readable text; returns ``status``."""
    if getattr(args, "json", False):
        human = json.dumps(jsonable(payload), indent=2, allow_nan=True)
    sys.stdout.write(human.rstrip("\n") + "\n")
    sys.stdout.flush()
    return status


def protect_inputs(args: argparse.Namespace, *others: Path) -> list[Path]:
    """The files of ``args.model`` (and ``others``), which ``-o`` must not overwrite: checked now,
    before any work, and returned for :func:`~onnx_compress.model_io.save_model`."""
    from onnx_compress.model_io import check_output_path, model_files

    protected = [file for path in (args.model, *others) for file in model_files(path)]
    check_output_path(args.output, protected)
    return protected
