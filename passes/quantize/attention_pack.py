"""Pack fused attention into ONNX Runtime's ``Attention`` so dynamic int8 makes it one ``QAttention``.

Why
    After ``fuse`` a transformer layer's attention is three projection MatMuls (Q, K, V of one
    input) feeding a ``MultiHeadAttention`` node. Dynamic int8 quantizes the three MatMuls, but
    ONNX Runtime 1.32's CPU ``MultiHeadAttention`` kernel then transposes Q, K and V from
    ``BxSxNxH`` to ``BxNxSxH`` on the calling thread. ``QAttention`` (the quantized form of the
    packed ``Attention``) computes the projections with one int8 GEMM and writes each head's
    slice in place. all-MiniLM-L6-v2, sequence 64, 2 threads, AMD EPYC with AVX-512 VNNI, one
    side-by-side run per export (``python -m benchmarks profile``, 2026-12-01): batch 1 1.91x ->
    2.36x (TorchScript export) and 1.92x -> 2.39x (dynamo) the fp32 speed; batch 8 +3-4 %.

Maths
    ``MultiHeadAttention(X Wq, X Wk, X Wv, b, attention_bias=B)`` equals
    ``Attention(X, [Wq | Wk | Wv], b, mask_index=M)`` when ``B[n, h, i, j] = 0`` for the keys
    ``j`` with ``M[n, j] = 1`` and ``B[n, h, i, j] <= -1e4`` for those with ``M[n, j] = 0``
    (for every head ``h`` and query ``i``): ONNX Runtime adds ``mask_filter_value`` (-10000) to
    the masked keys' scores before the softmax, and ``exp(-1e4)`` is 0 in float32 exactly as
    ``exp`` of the exporter's ``finfo.min`` bias is. ``QAttention`` has no input for an additive
    bias, so the packing needs ``B`` to be such a key-padding bias (or absent).

Proof that a bias is the key-padding mask
    (1) Structure: ``B`` is computed from exactly one 2-D graph input ``M`` (the padding mask);
    any other graph input reaches it only through ``Shape`` (shape, not values); the computation
    has no control flow and no random ops. (2) Values: ONNX Runtime evaluates ``B`` on probe
    masks (random 0/1 rows, each with a kept and a masked key, at two batch sizes) and every
    element must match the rule above. A causal mask, a relative-position bias or ALiBi fails
    (2); a bias read from another input fails (1). The packed float model is then checked
    against the unpacked one on the probe inputs (1e-4 of the output range), or the layer stays
    as it was.

Limits
    Only ``MultiHeadAttention`` nodes (``com.microsoft``) without a key-padding-mask input, past
    state or ``unidirectional`` are packed, and only when their Q, K and V come from MatMuls of
    one input with constant 2-D float weights, each used once, with equal widths (ONNX
    Runtime's quantizer leaves an ``Attention`` with ``qkv_hidden_sizes`` float). A layer whose
    projections are not all being quantized (excluded for sensitivity, or outside a
    one-node-at-a-time trial) is left as it is. ONNX Runtime's quantizer gives the packed weight
    the same per-output-channel scales (and ``reduce_range``) as the three MatMuls would get, so
    the int8 model computes the same values (all-MiniLM-L6-v2, both exports: largest difference
    0.0 against the unpacked int8 model); ``QAttention`` runs in ONNX Runtime only (CPU kernel).
    Models with control flow (``If``/``Loop``/``Scan``) are left unpacked.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnx_compress.model_io import model_bytes

__all__ = ["PackedAttention", "key_padding_source", "pack_attention", "parity_problem", "probe_feeds"]

logger = logging.getLogger(__name__)

_MS = "com.microsoft"
#: a masked key's bias must be at most this (ONNX Runtime's ``mask_filter_value`` default)
_MASKED_AT_MOST = -1e4
#: ops that make a computation non-deterministic or hide one (never part of a provable mask)
_UNPROVABLE_OPS = frozenset({"If", "Loop", "Scan", "RandomNormal", "RandomUniform", "RandomNormalLike",
                             "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"})
_PROBE_SEED = 20261201


@dataclasses.dataclass(frozen=True)
class PackedAttention:
    """What :func:`pack_attention` did: the packed nodes' names, each layer left alone with why,
    and the graph input used as the padding mask (None: no layer had an attention bias)."""

    packed: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    mask: str | None = None


def _value_sources(value: ir.Value) -> tuple[set[ir.Value], str | None]:
    """The graph inputs whose VALUES reach ``value`` (inputs that reach it only through ``Shape``
    or ``Size`` do not count), and a reason when the computation cannot be proven (control flow,
    random ops)."""
    sources: set[ir.Value] = set()
    seen: set[int] = set()
    stack = [value]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        node = current.producer()
        if node is None:
            if current.const_value is None and current.is_graph_input():
                sources.add(current)
            continue
        if node.op_type in _UNPROVABLE_OPS:
            return sources, f"the bias is computed by {node.op_type}"
        if node.op_type in ("Shape", "Size"):
            continue  # reads a shape, not values (the probes bind every input's shape)
        stack.extend(v for v in node.inputs if v is not None)
    return sources, None


def probe_feeds(model: ir.Model, mask: ir.Value | None, batch: int, seq: int, rng: np.random.Generator, *,
                 random: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """Feeds for every graph input at ``batch`` x ``seq`` and the padding rows given to ``mask``
    (random 0/1, each row with a kept and a masked key); the other inputs are zeros, or with
    ``random`` token-like ids in [0, 100) and standard-normal floats. None if an input's shape
    cannot be bound (a symbolic axis not named like the mask's)."""
    names: dict[str, int] = {}
    if mask is not None and mask.shape is not None:
        for axis, size in zip(mask.shape, (batch, seq)):
            if not isinstance(axis, int):
                names[str(axis)] = size
    keep = rng.random((batch, seq)) < 0.6
    keep[:, 0], keep[:, -1] = True, False
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.inputs:
        if value.shape is None or value.type is None:
            return None
        dims = []
        for index, axis in enumerate(value.shape):
            if isinstance(axis, int):
                dims.append(axis)
            elif str(axis) in names:
                dims.append(names[str(axis)])
            elif mask is None:
                dims.append(batch if index == 0 else seq)
            else:
                return None
        dtype = value.type.dtype.numpy()
        if value is mask:
            feeds[value.name] = keep.astype(dtype)
        elif not random:
            feeds[value.name] = np.zeros(dims, dtype)
        elif np.issubdtype(dtype, np.floating):
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
        elif np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, 100, dims).astype(dtype)
        else:
            feeds[value.name] = np.zeros(dims, dtype)
    return feeds, keep


def key_padding_source(model: ir.Model, bias: ir.Value) -> tuple[ir.Value | None, str]:
    """The 2-D graph input that ``bias`` is the key-padding bias of (see the module docstring), or
    None with the reason it could not be proven."""
    values, problem = _value_sources(bias)
    if problem:
        return None, problem
    if len(values) != 1:
        return None, f"the bias depends on the values of {len(values)} graph inputs, not one mask"
    mask = next(iter(values))
    if mask.shape is None or len(mask.shape) != 2:
        return None, f"the bias is computed from {mask.name!r}, which is not a 2-D mask"
    static_seq = mask.shape[1] if isinstance(mask.shape[1], int) else None
    if static_seq is not None and static_seq < 2:
        return None, f"{mask.name!r} has {static_seq} positions"
    rng = np.random.default_rng(_PROBE_SEED)
    probes = [(2, static_seq or 7), (3, static_seq or 5)]
    if isinstance(mask.shape[0], int):
        probes = [(mask.shape[0], static_seq or 7)]
    try:
        session = _session_with_output(model, bias)
    except Exception as exc:  # ORT's own error types
        return None, f"ONNX Runtime could not load the model with the bias as an output ({type(exc).__name__})"
    for batch, seq in probes:
        probe = probe_feeds(model, mask, batch, seq, rng)
        if probe is None:
            return None, "an input's shape cannot be bound to the mask's batch and sequence axes"
        feeds, keep = probe
        try:
            out = session.run([bias.name], feeds)[0]
        except Exception as exc:  # ORT's own error types
            return None, f"ONNX Runtime could not evaluate the bias ({type(exc).__name__})"
        problem = _padding_problem(out, keep)
        if problem:
            return None, problem
    return mask, ""


def _padding_problem(out: np.ndarray, keep: np.ndarray) -> str | None:
    """Why ``out`` is not the additive key-padding bias of ``keep`` (None: it is)."""
    batch, seq = keep.shape
    if out.ndim != 4 or out.shape[0] not in (batch,) or out.shape[3] != seq or out.shape[2] not in (1, seq):
        return f"the bias has shape {list(out.shape)}, not [batch, heads or 1, seq or 1, seq]"
    kept = np.broadcast_to(keep[:, None, None, :], out.shape)
    if np.any(out[kept] != 0):
        return "the bias is not 0 on every kept key (a position or causal bias)"
    if np.any(out[~kept] > _MASKED_AT_MOST):
        return f"the bias is above {_MASKED_AT_MOST:g} on a masked key"
    return None


def _session_with_output(model: ir.Model, value: ir.Value) -> ort.InferenceSession:
    """An ONNX Runtime session of ``model`` with ``value`` as an extra output (the model is left
    as it was)."""
    model.graph.outputs.append(value)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        return ort.InferenceSession(model_bytes(model), options, providers=["CPUExecutionProvider"])
    finally:
        model.graph.outputs.pop()


def _projections(node: ir.Node) -> tuple[list[ir.Node], str]:
    """The Q, K and V MatMuls of one input feeding ``node``, or why they cannot be packed."""
    mms = [value.producer() if value is not None else None for value in node.inputs[:3]]
    if any(mm is None or mm.op_type != "MatMul" or mm.domain not in ("", "ai.onnx") for mm in mms):
        return [], "Q, K and V are not all MatMul outputs"
    if len({id(mm.inputs[0]) for mm in mms}) != 1:
        return [], "Q, K and V are projections of different inputs"
    weights = [mm.inputs[1].const_value if mm.inputs[1] is not None else None for mm in mms]
    if any(w is None or len(w.shape) != 2 or w.dtype != ir.DataType.FLOAT for w in weights):
        return [], "a Q/K/V weight is not a constant 2-D float32 matrix"
    if len({tuple(w.shape) for w in weights}) != 1:
        return [], "Q, K and V have different widths"
    if any(len(list(mm.outputs[0].uses())) != 1 for mm in mms):
        return [], "a Q/K/V projection has other readers"
    return mms, ""


def _attention_problem(node: ir.Node) -> str | None:
    inputs = list(node.inputs) + [None] * (8 - len(node.inputs))
    if inputs[4] is not None:
        return "it already has a key-padding mask input"
    if inputs[6] is not None or inputs[7] is not None or any(len(list(v.uses())) for v in node.outputs[1:]):
        return "it has past or present key/value state"
    if "unidirectional" in node.attributes and node.attributes["unidirectional"].value:
        return "it is unidirectional (causal)"
    if inputs[3] is not None and inputs[3].const_value is None:
        return "its Q/K/V bias is not a constant"
    return None


def _pack_one(model: ir.Model, node: ir.Node, mms: list[ir.Node], mask_index: ir.Value | None) -> ir.Node:
    """Replace ``node`` and its projections by one ``Attention`` node (see the module docstring)."""
    weights = np.concatenate([mm.inputs[1].const_value.numpy() for mm in mms], axis=1)
    packed = ir.Value(name=f"{node.name}_qkv_weight", const_value=ir.tensor(weights))
    model.graph.register_initializer(packed)
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    if bias is None:  # Attention's bias input is required: zeros are the same projections
        bias = ir.Value(name=f"{node.name}_qkv_bias", const_value=ir.tensor(np.zeros(weights.shape[1], np.float32)))
        model.graph.register_initializer(bias)
    attributes = {"num_heads": node.attributes["num_heads"].value}
    if "scale" in node.attributes:
        attributes["scale"] = node.attributes["scale"].value
    out = node.outputs[0]
    attention = ir.node("Attention", [mms[0].inputs[0], packed, bias, mask_index],
                        attributes=attributes, domain=_MS, name=f"{node.name}_packed",
                        outputs=[ir.Value(name=f"{out.name}_packed", type=out.type, shape=out.shape)])
    model.graph.insert_before(node, attention)
    ir.convenience.replace_all_uses_with(out, attention.outputs[0])
    if out.is_graph_output():
        index = model.graph.outputs.index(out)
        model.graph.outputs[index] = attention.outputs[0]
        attention.outputs[0].name, out.name = out.name, f"{out.name}_unpacked"
    model.graph.remove(node, safe=True)
    for mm in mms:
        model.graph.remove(mm, safe=True)
    return attention


def pack_attention(model: ir.Model, quantized: Callable[[str], bool]) -> PackedAttention:
    """Pack (in place) every ``MultiHeadAttention`` of ``model`` whose three projections are all
    ``quantized`` (by node name) and whose bias is provably the key-padding mask (module docstring).

    Every layer that cannot be packed is listed in the result with its reason; nothing is changed
    for it. The caller checks the packed float model against the original (see
    :func:`~onnx_compress.passes.quantize.backend.quantize_file`).
    """
    packed: list[str] = []
    skipped: list[tuple[str, str]] = []
    casts: dict[int, ir.Value] = {}
    proofs: dict[int, tuple[ir.Value | None, str]] = {}
    if any(node.op_type in ("If", "Loop", "Scan") for node in model.graph):
        attentions: list[ir.Node] = []  # subgraphs read outer values: leave the model as it is
    else:
        attentions = [n for n in model.graph if n.op_type == "MultiHeadAttention" and n.domain == _MS]
    for node in attentions:
        problem = _attention_problem(node)
        mms, why = _projections(node) if problem is None else ([], problem)
        if not mms:
            skipped.append((node.name or "MultiHeadAttention", why))
            continue
        if not all(quantized(mm.name or "") for mm in mms):
            skipped.append((node.name or "MultiHeadAttention", "not all of its Q/K/V projections are quantized"))
            continue
        bias = node.inputs[5] if len(node.inputs) > 5 else None
        mask_index = None
        if bias is not None:
            if id(bias) not in proofs:
                proofs[id(bias)] = key_padding_source(model, bias)
            mask, why = proofs[id(bias)]
            if mask is None:
                skipped.append((node.name or "MultiHeadAttention", why))
                continue
            if id(mask) not in casts:
                cast = ir.node("Cast", [mask], attributes={"to": ir.DataType.INT32},
                               outputs=[ir.Value(name=f"{mask.name}_mask_index")])
                model.graph.insert_before(mms[0], cast)
                casts[id(mask)] = cast.outputs[0]
            mask_index = casts[id(mask)]
        packed.append(_pack_one(model, node, mms, mask_index).name or "")
    if packed:
        import onnx_ir.passes.common as common_passes

        common_passes.RemoveUnusedNodesPass()(model)
        for value in list(model.graph.initializers.values()):
            if not list(value.uses()) and not value.is_graph_output():
                model.graph.initializers.pop(value.name)
        logger.info("packed %d attention layer(s) into Attention for QAttention", len(packed))
    masks = [value for value in model.graph.inputs if id(value) in casts]
    return PackedAttention(packed=tuple(packed), skipped=tuple(skipped), mask=masks[0].name if masks else None)


def parity_problem(original: ir.Model, packed: ir.Model, mask: str | None, *, tolerance: float = 1e-4,
                   real_tokens: bool = False) -> str | None:
    """Why ``packed`` does not compute ``original``'s outputs (None: it does, within ``tolerance``
    of each output's range), on random probe inputs with padded rows in ``mask``. With
    ``real_tokens``, outputs of rank >= 3 whose first two axes are the mask's are compared at
    its real positions only (``skip_padding.py`` writes 0 at the padded ones), the others
    everywhere."""
    rng = np.random.default_rng(_PROBE_SEED + 1)
    mask_value = next((v for v in original.graph.inputs if v.name == mask), None)
    seq = mask_value.shape[1] if mask_value is not None and mask_value.shape is not None \
        and isinstance(mask_value.shape[1], int) else 9
    probe = probe_feeds(original, mask_value, 2, seq, rng, random=True)
    if probe is None:
        return "no probe inputs fit the model's input shapes"
    feeds, keep = probe
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        expected = ort.InferenceSession(model_bytes(original), options, providers=["CPUExecutionProvider"]).run(
            None, feeds)
        got = ort.InferenceSession(model_bytes(packed), options, providers=["CPUExecutionProvider"]).run(
            None, feeds)
    except Exception as exc:  # ORT's own error types
        return f"ONNX Runtime could not run the rewritten model ({type(exc).__name__}: {str(exc)[:200]})"
    for index, (e, g) in enumerate(zip(expected, got)):
        if e.shape != g.shape:
            return f"output {index} has shape {list(g.shape)} instead of {list(e.shape)}"
        where = ""
        if real_tokens and e.ndim >= 3 and e.shape[:2] == keep.shape:
            e, g, where = e[keep], g[keep], " on real tokens"
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        scale = scale or 1.0
        diff = float(np.max(np.abs(e.astype(np.float64) - g))) if e.size else 0.0
        if diff > tolerance * scale:
            return f"output {index} changed by {diff:.3g}{where} ({diff / scale:.2g} of its range)"
    return None
