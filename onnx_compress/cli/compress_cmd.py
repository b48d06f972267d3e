"""``onnx-compress compress``: a recipe of passes under an accuracy budget, with a report."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from onnx_compress.cli.common import (add_command, add_json_flag, add_session_flags, emit, protect_inputs,
                                      session_settings)
from onnx_compress.setting_cli import add_flags, given

__all__ = ["register"]

_DESCRIPTION = """\
Compress a model with a recipe of passes (prune -> low-rank -> quantize ...) and keep the
result within an accuracy budget: after every pass the model is validated on --val (held-out
data, never the calibration data) against the original; a pass that breaks the budget is
searched down to the most aggressive setting that holds (bisection of its strength) or rolled
back. The report gives, per stage, size, parameters, MACs, ONNX Runtime latency (median, p90,
speed-up against the original measured in the same run), the metric and its drop, and what each
pass did; --report DIR also writes report.json and report.html (with a plot).

Recipes are YAML or JSON:

  name: mine
  passes:
    - prune_structured: {ratio: 0.5}
    - lowrank: {energy: 0.95}
    - quantize: {mode: auto}

Passes a recipe can name: {passes}. An unknown pass or setting is an error naming the valid
ones; every pass's settings are in the README's settings reference.

examples:
  onnx-compress compress m.onnx -o small.onnx --preset small --data calib.npz --val val.npz --max-drop 0.5
  onnx-compress compress m.onnx -o out.onnx --recipe recipe.yaml --data calib.npz --val val.npz --metric cosine --max-drop 0.01
"""


def _compress(args: argparse.Namespace) -> int:
    from onnx_compress.pipeline import PipelineSettings, compress
    from onnx_compress.report.text import render_text

    protect_inputs(args)  # fail before hours of work, not after
    pipeline_log = logging.getLogger("onnx_compress.pipeline")
    if pipeline_log.getEffectiveLevel() > logging.INFO:
        pipeline_log.setLevel(logging.INFO)  # one progress line per stage, with its time, on stderr
    settings = PipelineSettings(**given(args, PipelineSettings), session=session_settings(args))
    outcome = compress(
        args.model,
        args.recipe if args.recipe is not None else args.preset,
        calib=args.data,
        val=args.val,
        metric=args.metric,
        max_drop=args.max_drop,
        report_dir=args.report,
        settings=settings,
        train=args.train,
    )
    outcome.save(args.output)
    payload = {"output": str(args.output), **outcome.report.as_dict()}
    human = render_text(outcome.report) + f"\nwrote {args.output}"
    if args.report is not None:
        human += f"; report in {args.report}/report.json and report.html"
    emit(args, payload, human)
    return 0


def _flags(parser: argparse.ArgumentParser) -> None:
    from onnx_compress.passes.registry import pass_names
    from onnx_compress.pipeline import PipelineSettings

    parser.description = _DESCRIPTION.replace("{passes}", ", ".join(pass_names()))
    add_session_flags(parser)
    add_flags(parser, PipelineSettings, "search_steps min_gain budget_margin objective time_budget bench_batch "
              "bench_runs")


def register(subparsers: Any) -> None:
    from onnx_compress.recipe import preset_names

    parser = add_command(subparsers, "compress", help="a recipe of passes under an accuracy budget, with a report",
                         description=_DESCRIPTION, handler=_compress, settings=_flags)
    parser.add_argument("model", type=Path, help="the ONNX model to compress (never modified)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the compressed ONNX file to write")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--recipe", type=Path, help="a YAML or JSON recipe file")
    which.add_argument("--preset", choices=preset_names(), help="a built-in recipe")
    parser.add_argument("--data", type=Path, default=None,
                        help="calibration .npz (quantization calibration, activation statistics)")
    parser.add_argument("--val", type=Path, default=None,
                        help="held-out validation .npz on which the budget is checked (needed with --max-drop)")
    parser.add_argument("--train", type=Path, default=None,
                        help="training .npz for a recover stage (inputs; labels optional; kept apart from --data/--val)")
    parser.add_argument("--metric", choices=["auto", "top1", "cosine", "max_abs"], default="auto",
                        help="budget metric (default auto: top1 when --val has labels, else cosine)")
    parser.add_argument("--max-drop", type=float, default=None,
                        help="budget: largest allowed drop of the metric (points for top1, 1-cosine for cosine)")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR",
                        help="write report.json and report.html (with a plot) into DIR")
    add_json_flag(parser)
