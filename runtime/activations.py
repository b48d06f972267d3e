"""Intermediate activations of a model, streamed batch by batch from ONNX Runtime.

Data-aware passes (low-rank factorization against input statistics, activation-based pruning
importance) need the values flowing into particular nodes. :func:`iter_activations` exposes the
requested intermediate values as extra graph outputs on a *copy* of the model (the model passed
in is never modified), runs the copy over a data set in batches and yields, per batch, the
requested values by name. Callers accumulate what they need (a Gram matrix ``X^T X``, channel
norms) and drop the batch, so memory stays one batch of activations, whatever the data size.

A requested value that is a graph input is taken from the feeds; one that is already a graph
output is read as it is. A requested value that no node produces and no input provides is a
``KeyError`` (a bug in the caller, not a user error).

Limits: values inside control-flow subgraphs (If/Loop bodies) cannot be exposed this way and are
refused with a ``KeyError``. ONNX Runtime keeps exposed values intact (it never fuses a node
whose output is a graph output), so the statistics are those of the unfused model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import onnx_ir as ir

from onnx_compress.data import Dataset
from onnx_compress.runtime.session import Runner, SessionSettings

__all__ = ["iter_activations", "expose_values"]

logger = logging.getLogger(__name__)


def expose_values(model: ir.Model, names: Sequence[str]) -> ir.Model:
    """A copy of ``model`` whose graph also outputs the named intermediate values.

    Graph inputs and existing outputs are not added again. A value whose element type shape
    inference left unknown is declared float32 (ONNX Runtime needs typed graph outputs); callers
    should run shape inference (``Normalize``) first for other types.
    """
    work = model.clone()
    graph = work.graph
    by_name: dict[str, ir.Value] = {}
    for node in graph:
        for value in node.outputs:
            if value.name:
                by_name[value.name] = value
    input_names = {value.name for value in graph.inputs}
    output_names = {value.name for value in graph.outputs}
    for name in names:
        if name in input_names or name in output_names:
            continue
        if name not in by_name:
            raise KeyError(f"no node of the main graph produces a value named {name!r}")
        value = by_name[name]
        if value.type is None:
            value.dtype = ir.DataType.FLOAT
        graph.outputs.append(value)
        output_names.add(name)
    return work


def iter_activations(
    model: ir.Model,
    names: Sequence[str],
    data: Dataset,
    *,
    batch_size: int = 32,
    settings: SessionSettings | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{name: array}`` for every requested value, one data batch at a time.

    Args:
        model: the model to run (not modified).
        names: the values to read (node outputs or graph inputs of the main graph).
        data: the input data; checked against the model's inputs before anything runs.
        batch_size: samples per ONNX Runtime call.
        settings: session settings (default: CPU, ONNX Runtime's thread choice).
    """
    wanted = list(dict.fromkeys(names))
    exposed = expose_values(model, wanted)
    runner = Runner(exposed, settings or SessionSettings(provider="cpu"))
    data.check_against(runner.input_specs, what="calibration data")
    input_names = [spec.name for spec in runner.input_specs]
    fetched = [name for name in wanted if name not in input_names]
    logger.info("reading %d intermediate values over %d samples", len(wanted), len(data))
    for feeds in data.batches(batch_size):
        feeds = {name: feeds[name] for name in input_names}
        values = dict(zip(fetched, runner.run(feeds, fetched))) if fetched else {}
        yield {name: feeds[name] if name in feeds else values[name] for name in wanted}
