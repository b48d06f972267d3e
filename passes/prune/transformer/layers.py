"""Depth pruning: remove whole encoder layers; the residual stream passes straight through.

Surgery: every reader of layer ``i``'s output reads its input instead (when the output is a
graph output, an ``Identity`` with the output's name takes its place), then the nodes nothing
reads any more are removed. The attention mask and other values shared by the remaining layers
stay. The model keeps its inputs, outputs and their shapes.

Which layers (``layer_importance``):

- ``skip`` (default): greedy, by the output itself. For every removable layer, the model with
  it removed (on top of the layers already chosen) is run on calibration data and scored by the
  mean cosine similarity of its first output to the original model's (per token over the
  attention mask for per-token outputs); the layer whose removal keeps the highest similarity
  goes; repeat. Costs one model run per candidate and step (MiniLM, 6 -> 3: 15 runs).
- ``cosine``: one run; a layer's importance is ``1 - cos(hidden_in, hidden_out)`` averaged over
  the valid tokens (how much the layer changes the residual stream; ShortGPT's Block
  Influence); the least important go.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnx_compress.data import Dataset
from onnx_compress.passes.prune.transformer.detect import EncoderLayer

__all__ = ["remove_layers", "similarity", "token_mask", "choose_layers"]

logger = logging.getLogger(__name__)


def remove_layers(model: ir.Model, layers: Sequence[EncoderLayer]) -> None:
    """Remove ``layers`` (found in ``model``) in place; each must have an input and an output."""
    graph = model.graph
    # last first, so that a removed layer's input is never a value that is replaced later
    for layer in sorted(layers, key=lambda item: -item.index):
        source, target = layer.input, layer.output
        assert source is not None and target is not None
        if target.is_graph_output():
            index = next(i for i, v in enumerate(graph.outputs) if v is target)
            name = target.name
            target.name = f"{name}_removed_layer{layer.index}"
            identity = ir.Node("", "Identity", [source], name=f"removed_layer{layer.index}_identity")
            graph.append(identity)
            out = identity.outputs[0]
            out.name, out.shape, out.type = name, target.shape, target.type
            for use in list(target.uses()):
                use.node.replace_input_with(use.idx, out)
            graph.outputs[index] = out
        else:
            target.replace_all_uses_with(source)
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.RemoveUnusedOpsetsPass()(model)
    graph.sort()


def token_mask(data: Dataset) -> np.ndarray | None:
    """The attention mask of ``data`` (batch x sequence, 1 = real token), when it has one."""
    for name in ("attention_mask", "input_mask", "mask"):
        if name in data.inputs:
            return np.asarray(data.inputs[name]) > 0
    return None


def similarity(reference: np.ndarray, candidate: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Cosine similarity per sample: per token averaged over ``mask`` for [batch, sequence, hidden]
    outputs that match the mask, else over the flattened sample."""
    ref = np.asarray(reference, np.float64)
    cand = np.asarray(candidate, np.float64)
    if ref.ndim == 3 and mask is not None and mask.shape == ref.shape[:2]:
        dots = (ref * cand).sum(-1)
        norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1)
        cos = dots / np.maximum(norms, 1e-12)
        weights = mask.astype(np.float64)
        return (cos * weights).sum(1) / np.maximum(weights.sum(1), 1)
    ref = ref.reshape(ref.shape[0], -1)
    cand = cand.reshape(cand.shape[0], -1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    return (ref * cand).sum(1) / np.maximum(norms, 1e-12)


def _first_output(model: ir.Model, data: Dataset) -> np.ndarray:
    from onnx_compress.runtime.session import Runner, SessionSettings

    runner = Runner(model, SessionSettings(provider="cpu"))
    outputs = runner.run_dataset(data)
    return np.asarray(outputs[runner.output_names[0]])


def choose_layers(model: ir.Model, layers: Sequence[EncoderLayer], count: int, data: Dataset, method: str,
                  reference: np.ndarray | None = None) -> tuple[list[int], dict[int, float]]:
    """The indices of the ``count`` layers to remove and a score per layer, whose sense depends on
    ``method``.

    ``skip``: the score is the similarity of the output with that layer removed (in the step it
    was considered last): higher = the layer matters less, the highest goes first; ``cosine``:
    ``1 - cos(in, out)``: higher = the layer changes the hidden state more, the lowest go.
    """
    mask = token_mask(data)
    candidates = [layer for layer in layers if not layer.depth_reason]
    if method == "cosine":
        from onnx_compress.runtime.activations import iter_activations

        names = list(dict.fromkeys(str(v.name) for layer in candidates for v in (layer.input, layer.output)))
        sums = {layer.index: 0.0 for layer in candidates}
        count_tokens = 0.0
        for batch, values in zip(data.batches(32), iter_activations(model, names, data, batch_size=32)):
            batch_mask = token_mask(Dataset(batch))
            for layer in candidates:
                a, b = values[str(layer.input.name)], values[str(layer.output.name)]  # type: ignore[union-attr]
                per = similarity(a, b, batch_mask)
                sums[layer.index] += float((1 - per).sum())
            count_tokens += len(next(iter(batch.values())))
        scores = {index: total / max(count_tokens, 1) for index, total in sums.items()}
        chosen = sorted(scores, key=lambda i: scores[i])[:count]
        return sorted(chosen), scores
    if reference is None:
        reference = _first_output(model, data)
    chosen: list[int] = []
    scores: dict[int, float] = {}
    for _ in range(count):
        best, best_score = None, -np.inf
        for layer in candidates:
            if layer.index in chosen:
                continue
            trial = model.clone()
            from onnx_compress.passes.prune.transformer.detect import find_structure

            trial_layers = {item.index: item for item in find_structure(trial).layers}
            remove_layers(trial, [trial_layers[i] for i in [*chosen, layer.index]])
            score = float(similarity(reference, _first_output(trial, data), mask).mean())
            scores[layer.index] = score
            logger.info("layer %d removed (with %s): output cosine %.4f", layer.index, chosen, score)
            if score > best_score:
                best, best_score = layer.index, score
        if best is None:
            break
        chosen.append(best)
    return sorted(chosen), scores
