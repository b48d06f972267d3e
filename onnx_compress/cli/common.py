"""Helpers shared by the CLI commands: argument parsing of shapes and dims, output, data."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from onnx_compress.errors import SettingError
from onnx_compress.jsonable import jsonable
from onnx_compress.setting_cli import add_flags, given

__all__ = [
    "Command",
    "add_command",
    "add_settings_flags",
    "parse_shape",
    "parse_dims",
    "add_json_flag",
    "add_session_flags",
    "session_settings",
    "emit",
    "protect_inputs",
    "run_pass",
    "normalize_notes",
]

#: a command's handler: takes the parsed arguments, returns the exit status
Command = Callable[[argparse.Namespace], int]


def _global_flags() -> argparse.ArgumentParser:
    """--debug and -v, accepted after the command name too (``onnx-compress inspect m.onnx --debug``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logs")
    parent.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show progress logs (INFO)")
    return parent


def add_command(subparsers: Any, name: str, *, help: str, description: str, handler: Command,
                settings: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.ArgumentParser:
    """Add a subcommand with the global flags, a raw-text description and its handler.

    ``settings(parser)`` adds the flags generated from settings declarations; it runs only for
    the command being parsed (:func:`add_settings_flags`).
    """
    parser = subparsers.add_parser(name, help=help, description=description, parents=[_global_flags()],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=handler, settings_flags=settings)
    return parser


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """Add the generated flags of a command made by :func:`add_command` (once)."""
    settings = parser.get_default("settings_flags")
    if settings is not None:
        parser.set_defaults(settings_flags=None)
        settings(parser)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1x1x28x28"`` -> ``(1, 1, 28, 28)``."""
    try:
        dims = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must look like 1x1x28x28, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"shape dimensions must be >= 1, got {text!r}")
    return dims


def parse_dims(items: list[str] | None) -> dict[str, int]:
    """``["sequence=64"]`` -> ``{"sequence": 64}`` (sizes of symbolic dimensions)."""
    dims: dict[str, int] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.isdigit() or int(value) < 1:
            raise SettingError(f"--dim must look like NAME=SIZE (e.g. sequence=64), got {item!r}")
        dims[name] = int(value)
    return dims


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object on stdout instead of a table"
    )


def add_session_flags(parser: argparse.ArgumentParser) -> None:
    """--provider and --threads, generated from SessionSettings (pass it as ``add_command(settings=)``)."""
    from onnx_compress.runtime.session import SessionSettings

    add_flags(parser, SessionSettings, "provider intra_op_threads")


def session_settings(args: argparse.Namespace) -> Any:
    from onnx_compress.runtime.session import SessionSettings

    return SessionSettings(**given(args, SessionSettings))


def emit(args: argparse.Namespace, payload: Mapping[str, Any], human: str) -> None:
    """Print ``payload`` as one JSON object with ``--json``, else the human-readable text."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(jsonable(payload), indent=2, allow_nan=True) + "\n")
    else:
        sys.stdout.write(human.rstrip("\n") + "\n")
    sys.stdout.flush()


def protect_inputs(args: argparse.Namespace, *others: Path) -> list[Path]:
    """The files of ``args.model`` (and ``others``), which ``-o`` must not overwrite: checked now,
    before any work, and returned for :func:`~onnx_compress.model_io.save_model`."""
    from onnx_compress.model_io import check_output_path, model_files

    protected = [file for path in (args.model, *others) for file in model_files(path)]
    check_output_path(args.output, protected)
    return protected


def run_pass(args: argparse.Namespace, compression_pass: Any, *, fold_batchnorm: bool = True,
             write_unchanged: bool = True) -> tuple[Any, Any]:
    """Normalize ``args.model`` (as ``compress`` does), run the pass on it and write the result to
    ``args.output`` (unless it is unchanged and ``write_unchanged`` is false).

    Returns the normalization result and the pass result; the input file is never modified.
    """
    from onnx_compress.model_io import load_model, save_model
    from onnx_compress.passes.normalize import Normalize

    protected = protect_inputs(args)
    normalization = Normalize(fold_batchnorm=fold_batchnorm)(load_model(args.model))
    result = compression_pass(normalization.model)
    if result.modified or write_unchanged:
        save_model(result.model, args.output, protected=protected)
    return normalization, result


def normalize_notes(payload: dict[str, Any], normalization: Any, size_before: int, size_after: int,
                    what: str) -> list[str]:
    """The lines about normalization and file growth (``NormalizeResult.lines``); adds the
    ``normalize`` summary and the ``warnings`` to the JSON ``payload``."""
    notes = normalization.lines(size_before, size_after, what)
    payload["normalize"] = normalization.summary()
    payload["warnings"] = [line for line in notes if line.startswith("WARNING")]
    return notes
