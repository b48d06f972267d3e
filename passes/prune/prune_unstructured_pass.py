"""Unstructured magnitude pruning: zero the smallest weights of Conv, Gemm and MatMul.

Maths
    For a weight ``W`` and a ratio ``r``, the ``floor(r * W.size)`` entries of smallest ``|w|``
    become 0 (``layer`` scope: every layer reaches the ratio exactly; ``global`` scope: one
    ranking of all eligible weights, so large layers with many small weights lose more).
    With an ``N:M`` pattern (``2:4``), each run of ``M`` consecutive weights along the
    reduction axis (Conv input channels, the ``K`` axis of Gemm/MatMul) keeps its ``N``
    largest; a tail shorter than ``M`` stays dense, so the reached sparsity may fall slightly
    short of ``1 - N/M``.

What it is for
    The model stays dense: ONNX Runtime's CPU kernels multiply zeros as fast as anything else,
    so there is NO speed-up and no smaller ``.onnx`` file. What shrinks is the compressed
    file (zip/gzip for download or storage), which the result reports, and the pattern is
    the starting point of sparse kernels (N:M on GPUs with sparse tensor cores). For speed,
    use structured pruning.

Defaults and limits
    The first and last eligible layers (in graph order) are left dense by default
    (``protect_first_last``): they hold few weights and are the most sensitive. A weight must
    be an initializer (run Normalize first); a weight used by several eligible nodes is pruned
    once. Weights stored as int (quantized) are skipped. Nodes inside ``If`` / ``Loop`` /
    ``Scan`` bodies are pruned like the others (their weights may be main-graph initializers
    shared by several branches: pruned once, the same for every branch).
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_compress.errors import SettingError
from onnx_compress.model_io import EXTERNAL_DATA_THRESHOLD_BYTES, weights_nbytes
from onnx_compress.passes.base import CompressionPass, CompressionResult, PassSettings, check_strength
from onnx_compress.setting import SEARCHED, setting
from onnx_compress.table import format_table, human_count

__all__ = ["PruneUnstructured", "PruneUnstructuredSettings", "PruneUnstructuredResult", "LayerSparsity",
           "compressed_size", "parse_nm"]

logger = logging.getLogger(__name__)

_OP_TYPES = ("Conv", "Gemm", "MatMul")
_DEFAULT_RATIO = 0.5


def parse_nm(value: Any) -> tuple[int, int] | None:
    """``"2:4"`` / ``(2, 4)`` / ``[2, 4]`` -> ``(2, 4)``; None stays None; SettingError otherwise."""
    if value is None:
        return None
    try:
        if isinstance(value, str):
            n_text, _, m_text = value.partition(":")
            n, m = int(n_text), int(m_text)
        else:
            n, m = (int(v) for v in value)
    except (TypeError, ValueError):
        raise SettingError(f"nm must look like 2:4 (keep N of every M weights), got {value!r}") from None
    if not 0 < n < m:
        raise SettingError(f"nm must have 0 < N < M, got {n}:{m}")
    return n, m


@dataclasses.dataclass(frozen=True)
class PruneUnstructuredSettings(PassSettings):
    """Settings of :class:`PruneUnstructured` (each field's help text is its declaration below)."""

    ratio: float | None = setting(None, kind="float", range="[0, 1)", flag="--unstructured", metavar="R",
                                  role=SEARCHED, help="""
        fraction of each eligible Conv/Gemm/MatMul weight set to zero; None (default) means 0.5
        when nm is not given; give ratio or nm, not both""")
    nm: tuple[int, int] | None = setting(None, kind="any", metavar="N:M", help="""
        an N:M pattern (2:4): keep N of every M weights""")
    scope: str = setting("layer", choices=("layer", "global"), help="""
        layer: every layer reaches the ratio (default); global: one ranking across layers""")
    protect: tuple[str, ...] = setting((), metavar="NODE", help="names of nodes whose weights stay dense")
    protect_first_last: bool = setting(True, flag="--prune-first-last", negate=True, help="""
        keep the first and last eligible layers dense (default on; the flag --prune-first-last
        prunes them too)""")
    op_types: tuple[str, ...] = setting(_OP_TYPES, choices=_OP_TYPES, cli=False,
                                        help="the ops whose weights are pruned")

    def __post_init__(self) -> None:
        super().__post_init__()
        nm = parse_nm(self.nm)
        object.__setattr__(self, "nm", nm)
        if nm is not None and self.ratio is not None:
            raise SettingError("give either ratio or nm, not both (nm sets the sparsity to 1 - N/M)")
        if nm is not None and self.scope != "layer":
            raise SettingError("nm applies per weight; use scope='layer' with it")

    @property
    def effective_ratio(self) -> float:
        """The sparsity asked for: ``ratio``, ``1 - N/M`` with ``nm``, else the default 0.5."""
        if self.nm is not None:
            return 1 - self.nm[0] / self.nm[1]
        return _DEFAULT_RATIO if self.ratio is None else float(self.ratio)


@dataclasses.dataclass
class LayerSparsity:
    """The sparsity one weight reached."""

    node: str
    weight: str
    elements: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.elements if self.elements else 0.0


@dataclasses.dataclass
class PruneUnstructuredResult(CompressionResult):
    """Sparsity per layer and overall, and the compressed size of the model before/after."""

    layers: list[LayerSparsity] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    requested: float = 0.0
    pattern: str = ""
    size_bytes: int = 0
    compressed_before: int | None = None
    compressed_after: int | None = None

    @property
    def sparsity(self) -> float:
        """Zeros over all pruned weights' elements."""
        total = sum(layer.elements for layer in self.layers)
        return sum(layer.zeros for layer in self.layers) / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        payload = super().as_dict()
        payload["sparsity"] = self.sparsity
        for entry, layer in zip(payload["layers"], self.layers):
            entry["sparsity"] = layer.sparsity
        return payload

    def summary(self) -> str:
        text = f"{len(self.layers)} weights at {self.sparsity:.1%} sparsity ({self.pattern})"
        if self.compressed_before and self.compressed_after:
            text += (f"; gzip size {self.compressed_before:,} -> {self.compressed_after:,} bytes "
                     f"({self.compressed_after / self.compressed_before - 1:+.0%}); no speed-up in dense kernels")
        return text

    def lines(self) -> list[str]:
        """The human-readable report ("" = blank line): sparsity per layer, layers left dense and why."""
        out: list[str] = []
        if self.layers:
            out += ["", format_table(["layer", "weights", "sparsity"],
                                     [[layer.node, human_count(layer.elements), f"{layer.sparsity:.1%}"]
                                      for layer in self.layers])]
        if self.skipped:
            out += ["", "left dense (layer: reason):", *(f"  {name}: {reason}" for name, reason in self.skipped.items())]
        return out + ["", f"{self.sparsity:.1%} of the pruned weights are zero ({self.pattern}). Dense ONNX Runtime "
                          "kernels gain no speed from zeros; the gain is the compressed size."]


def compressed_size(model: ir.Model) -> int | None:
    """Bytes of the serialized model after gzip (level 6); None above the protobuf limit."""
    if weights_nbytes(model) > EXTERNAL_DATA_THRESHOLD_BYTES:
        return None
    data = ir.serde.serialize_model(model).SerializeToString()
    return len(gzip.compress(data, compresslevel=6, mtime=0))


def _weight_of(node: ir.Node) -> tuple[ir.Value, int] | None:
    """The constant weight of an eligible node and its reduction axis."""
    if node.op_type == "Conv":
        weight = node.inputs[1]
        return (weight, 1) if weight is not None and weight.is_initializer() else None
    if node.op_type == "Gemm":
        weight = node.inputs[1]
        if weight is None or not weight.is_initializer():
            return None
        return weight, 1 if node.attributes.get_int("transB", 0) else 0
    if node.op_type == "MatMul":
        weight = node.inputs[1]
        if weight is not None and weight.is_initializer() and weight.const_value is not None \
                and len(weight.const_value.shape) >= 2:
            return weight, len(weight.const_value.shape) - 2
        return None
    return None


def _nm_mask(array: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Keep mask: the ``n`` largest of every ``m`` consecutive weights along ``axis``."""
    moved = np.moveaxis(np.abs(array), axis, -1)
    k = moved.shape[-1]
    full = (k // m) * m
    keep = np.ones_like(moved, dtype=bool)
    if full:
        blocks = moved[..., :full].reshape(*moved.shape[:-1], full // m, m)
        order = np.argsort(-blocks, axis=-1, kind="stable")
        block_keep = np.zeros_like(blocks, dtype=bool)
        np.put_along_axis(block_keep, order[..., :n], True, axis=-1)
        keep[..., :full] = block_keep.reshape(*moved.shape[:-1], full)
    return np.moveaxis(keep, -1, axis)


def _smallest_mask(magnitudes: np.ndarray, count: int) -> np.ndarray:
    """Mask of exactly ``count`` entries of smallest magnitude (flat)."""
    mask = np.zeros(magnitudes.size, dtype=bool)
    if count > 0:
        mask[np.argpartition(magnitudes.reshape(-1), count - 1)[:count]] = True
    return mask


class PruneUnstructured(CompressionPass):
    """Magnitude sparsity of Conv/Gemm/MatMul weights; see the module docstring."""

    name = "prune_unstructured"
    Settings = PruneUnstructuredSettings
    settings: PruneUnstructuredSettings

    def scaled(self, strength: float) -> PruneUnstructured | None:
        check_strength(strength)
        if self.settings.nm is not None:
            return None  # a pattern has no intermediate strength
        return self.with_settings(dataclasses.replace(self.settings, ratio=self.settings.effective_ratio * strength))

    def _eligible(self, model: ir.Model) -> tuple[list[tuple[ir.Node, ir.Value, int]], dict[str, str]]:
        settings = self.settings
        nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))  # If / Loop / Scan bodies too
        names = {str(node.name) for node in nodes}
        unknown = [name for name in settings.protect if name not in names]
        if unknown:
            raise SettingError(f"protect: no node named {unknown} in the model")
        candidates: list[tuple[ir.Node, ir.Value, int]] = []
        skipped: dict[str, str] = {}
        for node in nodes:
            if node.op_type not in settings.op_types or node.domain not in ("", "ai.onnx"):
                continue
            found = _weight_of(node)
            label = str(node.name or node.op_type)
            if found is None:
                skipped[label] = "weight is not a constant initializer"
                continue
            weight, _axis = found
            if not np.issubdtype(weight.const_value.dtype.numpy(), np.floating):  # type: ignore[union-attr]
                skipped[label] = "weight is not floating point (quantized?)"
                continue
            candidates.append((node, *found))
        if settings.protect_first_last and candidates:
            for node, _, _ in {id(candidates[0][0]): candidates[0], id(candidates[-1][0]): candidates[-1]}.values():
                skipped[str(node.name or node.op_type)] = "first or last layer (protect_first_last)"
            candidates = candidates[1:-1]
        kept = []
        for node, weight, axis in candidates:
            if str(node.name) in settings.protect:
                skipped[str(node.name)] = "protected"
            else:
                kept.append((node, weight, axis))
        return kept, skipped

    def call(self, model: ir.Model) -> PruneUnstructuredResult:
        settings = self.settings
        work = self.copy_model(model)
        eligible, skipped = self._eligible(work)
        # a weight shared by several nodes is pruned once, and only when every use is eligible
        eligible_nodes = {id(node) for node, _, _ in eligible}
        weights: dict[int, tuple[ir.Node, ir.Value, int]] = {}
        for node, weight, axis in eligible:
            others = [use.node for use in weight.uses() if id(use.node) not in eligible_nodes]
            if others:
                other = others[0]
                skipped[str(node.name)] = f"its weight is also used by {other.op_type} '{other.name}'"
                continue
            weights.setdefault(id(weight), (node, weight, axis))

        arrays = {key: weight.const_value.numpy() for key, (_, weight, _) in weights.items()}  # type: ignore[union-attr]
        masks: dict[int, np.ndarray] = {}
        ratio = settings.effective_ratio
        if settings.nm is not None:
            n, m = settings.nm
            for key, (_, _, axis) in weights.items():
                masks[key] = ~_nm_mask(arrays[key], axis, n, m)
        elif settings.scope == "layer":
            for key, array in arrays.items():
                masks[key] = _smallest_mask(np.abs(array), int(ratio * array.size + 1e-9)).reshape(array.shape)
        else:
            keys = list(arrays)
            magnitudes = np.concatenate([np.abs(arrays[k]).reshape(-1) for k in keys]) if keys else np.zeros(0)
            flat = _smallest_mask(magnitudes, int(ratio * magnitudes.size + 1e-9))
            start = 0
            for key in keys:
                size = arrays[key].size
                masks[key] = flat[start:start + size].reshape(arrays[key].shape)
                start += size

        layers: list[LayerSparsity] = []
        modified = False
        for key, (node, weight, _axis) in weights.items():
            array = arrays[key]
            mask = masks[key] & (array != 0)
            if mask.any():
                pruned = np.where(mask, np.zeros((), dtype=array.dtype), array)
                weight.const_value = ir.Tensor(np.ascontiguousarray(pruned), name=weight.name)
                modified = True
                array = pruned
            layers.append(LayerSparsity(node=str(node.name or node.op_type), weight=str(weight.name),
                                        elements=int(array.size), zeros=int(np.count_nonzero(array == 0))))
        pattern = f"{settings.nm[0]}:{settings.nm[1]}" if settings.nm else f"{settings.scope} ratio"
        result = PruneUnstructuredResult(
            model=work,
            modified=modified,
            layers=layers,
            skipped=skipped,
            requested=ratio,
            pattern=pattern,
            size_bytes=int(ir.serde.serialize_model(work).ByteSize()) if weights_nbytes(work) < EXTERNAL_DATA_THRESHOLD_BYTES else weights_nbytes(work),
            compressed_before=compressed_size(model),
            compressed_after=compressed_size(work),
        )
        logger.info("prune_unstructured: %s", result.summary())
        return result
