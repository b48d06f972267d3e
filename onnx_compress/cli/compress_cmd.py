"""a recipe of passes under an accuracy budget, with a report

Compress a model with a recipe of passes: after every pass it is validated on --val against the original;
a pass that breaks the budget is searched down to the strongest setting that holds, or rolled back. The
report (also report.json/.html with --report) gives per stage size, parameters, MACs, latency and the
metric. A recipe (YAML or JSON) lists passes and their settings (README's settings reference), e.g.
`passes: [{prune_structured: {ratio: 0.5}}, {quantize: {mode: auto}}]`. Passes: {passes}.

example:
  onnx-compress compress m.onnx -o small.onnx --preset small --data calib.npz --val val.npz --max-drop 0.5
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from onnx_compress.cli.common import SESSION, arg, command, emit, from_flags, one_of, protect_inputs
from onnx_compress.recipe import preset_names
from onnx_compress.setting_cli import given


def _list_passes(parser: argparse.ArgumentParser) -> None:
    from onnx_compress.passes.registry import pass_names

    parser.description = (parser.description or "").replace("{passes}", ", ".join(pass_names()))


@command("compress", __doc__, (
    arg("model", "the ONNX model to compress (never modified)"),
    arg("-o", "the compressed ONNX file to write"),
    one_of(arg("--recipe", "a YAML or JSON recipe file", type=Path),
           arg("--preset", "a built-in recipe", choices=preset_names()), required=True),
    arg("--data", "calibration .npz (quantization calibration, activation statistics)"),
    arg("--val", "held-out validation .npz on which the budget is checked (needed with --max-drop)"),
    arg("--train", "training .npz for a recover stage (labels optional; kept apart from --data/--val)", type=Path),
    arg("--metric", "budget metric (default auto: top1 when --val has labels, else cosine)"),
    arg("--max-drop", "budget: largest allowed drop of the metric (points for top1, 1-cosine for cosine)", type=float),
    arg("--report", "write report.json and report.html (with a plot) into DIR", type=Path, metavar="DIR"),
), settings=(_list_passes, SESSION, "onnx_compress.pipeline:PipelineSettings"))
def _compress(args: argparse.Namespace) -> int:
    from onnx_compress.pipeline import PipelineSettings, compress
    from onnx_compress.report.text import render_text

    protect_inputs(args)  # fail before hours of work, not after
    pipeline_log = logging.getLogger("onnx_compress.pipeline")
    if pipeline_log.getEffectiveLevel() > logging.INFO:
        pipeline_log.setLevel(logging.INFO)  # one progress line per stage, with its time, on stderr
    settings = PipelineSettings(**given(args, PipelineSettings), session=from_flags(args, SESSION))
    outcome = compress(args.model, args.recipe if args.recipe is not None else args.preset, calib=args.data,
                       val=args.val, metric=args.metric, max_drop=args.max_drop, report_dir=args.report,
                       settings=settings, train=args.train)
    outcome.save(args.output)
    human = render_text(outcome.report) + f"\nwrote {args.output}"
    if args.report is not None:
        human += f"; report in {args.report}/report.json and report.html"
    return emit(args, {"output": str(args.output), **outcome.report.as_dict()}, human)


COMMANDS = [_compress]
