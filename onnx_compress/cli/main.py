"""Make trained neural networks smaller and faster through ONNX.

The usual path: export a PyTorch or Keras model (parity-checked in ONNX Runtime), then `compress` it with
a preset or recipe under an accuracy budget (it proves the result with a report), then `deploy` or `serve`
it. The passes also run one at a time (prune, lowrank, quantize), and inspect / validate / bench check any
model. Data files are .npz archives keyed by the model's input names, plus an optional 'labels' array.
No command ever modifies its input. Results go to stdout (one JSON object with --json), logs to
stderr; a failure is one `error: ...` line and exit status 2 (a mistake you can fix), 1 (internal) or
130 (Ctrl-C); --debug shows the traceback.

  onnx-compress export torch net.py:make_model --input-shape 1x1x28x28 -o m.onnx
  onnx-compress compress m.onnx -o small.onnx --preset small --data calib.npz --val val.npz --max-drop 0.5
  onnx-compress serve small.onnx
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Sequence

from onnx_compress import __version__
from onnx_compress.cli.common import add_settings_flags, global_flags
from onnx_compress.errors import OnnxCompressError, one_line

__all__ = ["main", "build_parser"]

#: the modules onnx_compress.cli.NAME_cmd that declare the COMMANDS, in the order `--help` lists them
COMMAND_MODULES = "export measure compress serving pass train".split()


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the settings flags of the command named in ``argv`` (and of its framework) are
    generated (the others would import every pass's settings, seconds for a ``--help``)."""
    parser = argparse.ArgumentParser(prog="onnx-compress", description=__doc__, parents=[global_flags()],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"onnx-compress {__version__}")
    groups = {"": parser.add_subparsers(dest="command", metavar="COMMAND", required=True)}
    for module_name in COMMAND_MODULES:
        for command in importlib.import_module(f"onnx_compress.cli.{module_name}_cmd").COMMANDS:
            added = command.add_to(groups[command.name.rpartition(" ")[0]])
            if command.run is None:  # a group: "export torch", "export keras", ...
                groups[command.name] = added.add_subparsers(dest="framework", metavar="FRAMEWORK", required=True)
    group = ""  # the command named in argv, then its framework ("export torch")
    for word in sys.argv[1:] if argv is None else argv:
        if group in groups and word in groups[group].choices:
            add_settings_flags(groups[group].choices[word])
            group = f"{group} {word}".lstrip()
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser(argv).parse_args(argv)
    debug = getattr(args, "debug", False)
    level = logging.DEBUG if debug else logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in () if debug else ("tf2onnx", "onnxscript", "torch", "absl", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.WARNING)  # chatty at INFO: keep their warnings only
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except OnnxCompressError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"error: {one_line(exc, limit=2000)}\n")
        return exc.exit_code
    except MemoryError:
        sys.stderr.write("error: out of memory\n")
        return 1
    except Exception as exc:  # a bug or an unexpected third-party failure: still one line
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"error: unexpected {type(exc).__name__}: {one_line(exc)} (run with --debug for the "
                         "traceback)\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
