"""The bridge to ONNX Runtime's quantization tools, through files in a temporary workspace.

ONNX Runtime's tools read and write ONNX files (or ModelProtos), not ``onnx_ir`` models. The
pass therefore writes its input once into a :class:`Workspace` (a temporary folder), runs every
ONNX Runtime step file to file, and loads only the final model back. Models whose weights
exceed 1.8 GB are written with external data and every tool is called with its external-data
option (``use_external_data_format``, ``save_as_external_data``); the final model's weights are
read into memory before the workspace is deleted.

What is ONNX Runtime's and what is ours
    Calibration (MinMax / Entropy / Percentile), QDQ and QOperator insertion, dynamic
    quantization, MatMulNBits 4-bit packing, fp16 conversion and the pre-processing tools are
    ONNX Runtime's, called with their public APIs. Ours: the :class:`QuantConfig` they are called
    with, the calibration data reader over a :class:`~onnx_compress.data.Dataset` (with a
    progress bar), and the calibration cache that lets sensitivity analysis and the speed guard
    re-quantize without calibrating again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnxruntime.quantization import CalibrationDataReader
from tqdm.auto import tqdm

from onnx_compress.data import Dataset
from onnx_compress.errors import PassRefusedError, one_line
from onnx_compress.model_io import EXTERNAL_DATA_THRESHOLD_BYTES, load_model, save_model

__all__ = [
    "QuantConfig",
    "Workspace",
    "DatasetReader",
    "quantize_file",
    "preprocess_ort",
    "preprocess_transformer",
    "STATIC_PASS_THROUGH",
]

logger = logging.getLogger(__name__)

#: ops that static QDQ quantization keeps in int8 between quantized layers (so that a chain
#: Conv -> Relu -> MaxPool -> Conv stays int8), when present in the model
STATIC_PASS_THROUGH: tuple[str, ...] = (
    "Relu", "Clip", "LeakyRelu", "Sigmoid", "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Mul",
    "Concat", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Split", "Slice", "Pad", "Resize",
)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """One fully resolved call of an ONNX Runtime quantizer.

    ``op_types`` are the weight op types to quantize (static mode adds the pass-through ops);
    ``exclude`` the nodes kept in float, including every candidate of an op type not chosen;
    ``only`` (when not empty) restricts quantization to those nodes (sensitivity analysis).
    """

    mode: str
    op_types: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    per_channel: bool = True
    reduce_range: bool = False
    activation_type: str = "uint8"
    weight_type: str = "int8"
    format: str = "qdq"
    calibration_method: str = "minmax"
    block_size: int = 32
    symmetric: bool = False
    fused: bool = False  # the model went through the transformer optimizer (contrib ops)
    large: bool = False  # weights over the external-data threshold
    #: every candidate node (to express ``only`` for the tools that lack it)
    all_candidates: tuple[str, ...] = ()
    #: static mode: ``(tensor, lo, hi)`` ranges that replace calibration's (QAT; see ``ranges.py``)
    activation_ranges: tuple[tuple[str, float, float], ...] = ()
    #: dynamic mode: pack fused attention into ``QAttention`` where provable (``attention_pack.py``)
    pack_attention: bool = True
    #: dynamic mode: run per-token layers on real tokens only where provable (``quantize/skip_padding.py``)
    skip_padding: bool = True


class Workspace:
    """A temporary folder for the pass's intermediate models, removed on close."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="onnx-compress-quantize-"))
        self._count = 0
        self.calibration_cache = self.dir / "calibration.json"
        self.calibrated_op_types: frozenset[str] = frozenset()
        #: float model file -> its padding-skipped form (``_skip_padding``), so the trials of one
        #: call that quantize the same float model prove and rewrite it once
        self.padding_skipped: dict[tuple[str, int, int], Path] = {}

    def path(self, stem: str) -> Path:
        """A fresh model path in the workspace."""
        self._count += 1
        return self.dir / f"{self._count:03d}-{stem}.onnx"

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- model <-> files
    def write(self, model: ir.Model, stem: str) -> Path:
        """Save an ``onnx_ir`` model here (external data above the threshold)."""
        path = self.path(stem)
        save_model(model, path)
        return path

    @staticmethod
    def read(path: Path) -> ir.Model:
        """Load a model written here, with every weight in memory (the folder may then go)."""
        model = load_model(path)
        if Path(str(path) + ".data").exists():
            model = ir.external_data.load_to_model(model)
        return model


def file_bytes(path: Path) -> int:
    """Bytes of a model file plus its external data file."""
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def is_large(path: Path) -> bool:
    return file_bytes(path) > EXTERNAL_DATA_THRESHOLD_BYTES


# --------------------------------------------------------------------------- logging hygiene
class _DropOrtRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        path = record.pathname.replace("\\", "/")
        if "/onnxruntime/" in path:
            logger.debug("onnxruntime: %s", record.getMessage())
            return False
        return True


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """Silence ONNX Runtime's Python tools (they log on the root logger and print) for one call;
    their messages go to this module's DEBUG log."""
    root = logging.getLogger()
    record_filter = _DropOrtRecords()
    root.addFilter(record_filter)
    handlers = list(root.handlers)
    for handler in handlers:
        handler.addFilter(record_filter)
    ort_loggers = [logging.getLogger(name) for name in ("onnxruntime", "onnx_model", "fusion_utils")]
    levels = [lg.level for lg in ort_loggers]
    for lg in ort_loggers:
        lg.setLevel(logging.ERROR)
    stdout = io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout):
            yield
    finally:
        root.removeFilter(record_filter)
        for handler in handlers:
            handler.removeFilter(record_filter)
        for lg, level in zip(ort_loggers, levels):
            lg.setLevel(level)
        if stdout.getvalue().strip():
            logger.debug("onnxruntime printed: %s", stdout.getvalue().strip())


# --------------------------------------------------------------------------- calibration data
class DatasetReader(CalibrationDataReader):
    """An ONNX Runtime ``CalibrationDataReader`` over a Dataset, in batches, with a progress bar."""

    def __init__(self, data: Dataset, input_names: Sequence[str], batch: int, *, progress: bool = True,
                 desc: str = "calibration") -> None:
        self._feeds = [
            {name: np.ascontiguousarray(feeds[name]) for name in input_names}
            for feeds in data.batches(batch)
        ]
        self._index = 0
        self._progress = progress
        self._desc = desc
        self._bar = None

    def __len__(self) -> int:
        return len(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._bar is None and self._progress:
            self._bar = tqdm(total=len(self._feeds), desc=self._desc, unit="batch", leave=False)
        if self._index >= len(self._feeds):
            if self._bar is not None:
                self._bar.close()
            return None
        feeds = self._feeds[self._index]
        self._index += 1
        if self._bar is not None:
            self._bar.update(1)
        return feeds


# --------------------------------------------------------------------------- pre-processing
def preprocess_ort(src: Path, dst: Path) -> None:
    """ONNX Runtime's quantization pre-processing (symbolic shape inference, basic optimization,
    ONNX shape inference). Graph optimization is skipped above the external-data threshold."""
    from onnxruntime.quantization import quant_pre_process

    large = is_large(src)
    # ONNX Runtime's symbolic shape inference saves a debug model (sym_shape_infer_temp.onnx and
    # a data file) into the working folder when it cannot infer every shape (dynamic H and W):
    # run it from a scratch folder so the user's folder stays clean
    with quiet_ort(), tempfile.TemporaryDirectory(prefix="onnx-compress-prep-") as scratch, \
            contextlib.chdir(scratch):
        quant_pre_process(
            str(src),
            str(dst),
            skip_optimization=large,
            save_as_external_data=large,
            all_tensors_to_one_file=True,
            external_data_location=dst.name + ".data" if large else None,
        )


def preprocess_transformer(src: Path, dst: Path, threads: int | None = None,
                           layer_norm: str = "auto") -> tuple[dict[str, int], str]:
    """Transformer fusions for quantization: :class:`~onnx_compress.passes.fuse.Fuse` (attention
    core -> ``MultiHeadAttention`` with the Q/K/V MatMuls left quantizable, GELU, skip
    LayerNorm), then ONNX Runtime's transformer optimizer (model type bert, heads and width
    detected from the graph, Python fusions only) for the patterns it knows that ``Fuse`` does
    not; returns the fused-op counts of the result and how the residual norms were written
    (``layer_norm``: see :class:`~onnx_compress.passes.fuse.FuseSettings`; its ``auto`` times
    both forms on this CPU, so GPU-bound modes pass ``fused``)."""
    from onnxruntime.transformers.optimizer import optimize_model

    from onnx_compress.passes.fuse import Fuse

    fused = Fuse(threads=threads, layer_norm=layer_norm)(load_model(src))
    with tempfile.TemporaryDirectory(prefix="onnx-compress-fuse-") as scratch:
        source = src
        if fused.modified:
            source = Path(scratch) / "fused.onnx"
            save_model(fused.model, source)
        with quiet_ort():
            optimized = optimize_model(str(source), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
            optimized.save_model_to_file(str(dst), use_external_data_format=is_large(source))
            stats = optimized.get_fused_operator_statistics()
    norms = f"residual norms {fused.layer_norm} ({fused.layer_norm_reason})" if fused.layer_norm else ""
    return {op: int(n) for op, n in stats.items() if n}, norms


# --------------------------------------------------------------------------- quantization
def _expand_gemm_names(names: Sequence[str]) -> list[str]:
    """Node names plus the names ONNX Runtime gives a Gemm it rewrites as MatMul (+ Add).

    ONNX Runtime's dynamic and 4-bit quantizers only handle MatMul: a Gemm ``NAME`` becomes
    ``NAME_MatMul`` (+ ``NAME_Add``) first, so an exclusion must name both.
    """
    return [*names, *(f"{name}_MatMul" for name in names)]


def _gemm_as_matmul(op_types: Sequence[str]) -> list[str]:
    types = [op for op in op_types if op != "Gemm"]
    if "Gemm" in op_types and "MatMul" not in types:
        types.append("MatMul")
    return types


def _quant_type(name: str):
    from onnxruntime.quantization import QuantType

    return {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[name]


#: the opset where DequantizeLinear gained ``axis`` (per-channel QDQ weights)
PER_CHANNEL_QDQ_OPSET = 13

#: control-flow ops: ONNX Runtime's dynamic quantizer descends into their bodies with EnableSubgraph
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})


def _per_channel_opset(src: Path, workspace: Workspace) -> Path:
    """``src``, or a copy upgraded to opset 13 when it is older: ONNX Runtime's static quantizer
    writes per-channel ``DequantizeLinear(axis=...)`` into an opset-11 model (paddle2onnx's
    default), which ONNX Runtime then refuses to load (INVALID_GRAPH: unrecognized attribute axis)."""
    proto = onnx.load(str(src), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= PER_CHANNEL_QDQ_OPSET:
        return src
    from onnx_compress.passes.normalize import upgrade_opset

    upgraded = upgrade_opset(load_model(src), PER_CHANNEL_QDQ_OPSET)
    logger.info("static per-channel: opset %d -> %d for DequantizeLinear axis", opset, PER_CHANNEL_QDQ_OPSET)
    return workspace.write(upgraded, f"opset{PER_CHANNEL_QDQ_OPSET}")


def _static(src: Path, dst: Path, config: QuantConfig, reader_factory, workspace: Workspace,
            present_ops: frozenset[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    if config.per_channel and config.format == "qdq":
        src = _per_channel_opset(src, workspace)

    weight_types = set(config.op_types)
    pass_through = [op for op in STATIC_PASS_THROUGH if op in present_ops]
    op_types = sorted(weight_types) + pass_through
    cache = workspace.calibration_cache
    if cache.exists() and not set(op_types) <= workspace.calibrated_op_types:
        cache.unlink()  # calibrated for fewer op types: calibrate again
    calibrating = not cache.exists()
    extra: dict[str, object] = {"MatMulConstBOnly": True}
    if config.fused:
        extra["DefaultTensorType"] = onnx.TensorProto.FLOAT
    if config.activation_ranges:
        from onnx_compress.passes.quantize.ranges import tensor_overrides

        graph = onnx.load(str(src), load_external_data=False).graph
        extra["TensorQuantOverrides"] = tensor_overrides(graph, {n: (lo, hi) for n, lo, hi in config.activation_ranges})
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration_method]
    quantize_static(
        str(src),
        str(dst),
        calibration_data_reader=reader_factory() if calibrating else None,
        quant_format=QuantFormat.QDQ if config.format == "qdq" else QuantFormat.QOperator,
        op_types_to_quantize=op_types,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        activation_type=_quant_type(config.activation_type),
        weight_type=_quant_type(config.weight_type),
        nodes_to_quantize=list(config.only) or None,
        nodes_to_exclude=list(config.exclude) or None,
        use_external_data_format=config.large,
        calibrate_method=method,
        extra_options=extra,
        calibration_cache_path=str(cache),
    )
    if calibrating:
        workspace.calibrated_op_types = frozenset(op_types)


def _pack_attention(src: Path, config: QuantConfig, workspace: Workspace) -> tuple[Path, tuple[str, ...]]:
    """``src`` with its fused attention packed for ``QAttention`` (``attention_pack.py``) and the
    packed nodes' names; ``src`` itself and none when no layer qualifies or the packed float model
    does not compute the same outputs (logged)."""
    from onnx_compress.passes.quantize.attention_pack import pack_attention, parity_problem

    excluded, only = set(config.exclude), set(config.only)
    quantizable = "MatMul" in _gemm_as_matmul(config.op_types)

    def quantized(name: str) -> bool:
        return quantizable and name not in excluded and (not only or name in only)

    model = workspace.read(src)
    done = pack_attention(model, quantized)
    for name, why in done.skipped:
        logger.debug("attention %s not packed: %s", name, why)
    if not done.packed:
        return src, ()
    problem = parity_problem(workspace.read(src), model, done.mask)
    if problem is not None:
        logger.warning("attention not packed for QAttention: the packed model %s", problem)
        return src, ()
    return workspace.write(model, "packed-attention"), done.packed


def _skip_padding(src: Path, workspace: Workspace) -> Path:
    """``src`` rewritten to run its per-token layers on real tokens only (``quantize/skip_padding.py``);
    ``src`` itself when that cannot be proven or the rewritten float model does not compute the
    same outputs on real tokens (logged)."""
    from onnx_compress.passes.quantize.skip_padding import parity_problem, skip_padding

    stat = src.stat()
    key = (str(src), stat.st_size, stat.st_mtime_ns)
    if key in workspace.padding_skipped and workspace.padding_skipped[key].exists():
        return workspace.padding_skipped[key]
    model = workspace.read(src)
    done = skip_padding(model)
    outcome = src
    if not done.nodes:
        logger.info("padding not skipped: %s", done.reason)
    elif (problem := parity_problem(workspace.read(src), model, done.mask or "")) is not None:
        logger.warning("padding not skipped: the rewritten model %s", problem)
    else:
        outcome = workspace.write(model, "skip-padding")
    workspace.padding_skipped[key] = outcome
    return outcome


def _dynamic(src: Path, dst: Path, config: QuantConfig, present_ops: frozenset[str] = frozenset(),
             packed: tuple[str, ...] = ()) -> None:
    from onnxruntime.quantization import quantize_dynamic

    extra: dict[str, object] = {"MatMulConstBOnly": True}
    if present_ops & CONTROL_FLOW_OPS:
        extra["EnableSubgraph"] = True  # quantize the weight ops inside If / Loop / Scan bodies too
    if config.fused:
        extra["DefaultTensorType"] = onnx.TensorProto.FLOAT
    op_types = _gemm_as_matmul(config.op_types)
    if packed and "Attention" not in op_types:
        op_types.append("Attention")
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=op_types,
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        weight_type=_quant_type(config.weight_type),
        nodes_to_quantize=_expand_gemm_names(tuple(config.only) + (packed if config.only else ())) or None,
        nodes_to_exclude=_expand_gemm_names(config.exclude) or None,
        use_external_data_format=config.large,
        extra_options=extra,
    )


def _weight_only(src: Path, dst: Path, config: QuantConfig) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    from onnxruntime.quantization.onnx_model import ONNXModel

    model = onnx.load(str(src))
    exclude = set(config.exclude)
    if config.only:
        exclude |= {name for name in config.all_candidates if name not in config.only}
    if "Gemm" in config.op_types:
        ONNXModel(model).replace_gemm_with_matmul()  # the quantizer packs MatMul weights only
    algo = DefaultWeightOnlyQuantConfig(
        block_size=config.block_size,
        is_symmetric=config.symmetric,
        op_types_to_quantize=tuple(_gemm_as_matmul(config.op_types)),
    )
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=config.block_size, is_symmetric=config.symmetric,
                                     nodes_to_exclude=_expand_gemm_names(sorted(exclude)), algo_config=algo)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=config.large)


def _fp16(src: Path, dst: Path, config: QuantConfig, present_ops: frozenset[str]) -> None:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    block_nodes = set(config.exclude)
    if config.only:
        block_nodes |= {node.name for node in model.graph.node if node.name not in config.only}
    op_block = list(DEFAULT_OP_BLOCK_LIST)
    if config.op_types:
        op_block += [op for op in present_ops if op not in config.op_types and op not in op_block]
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        disable_shape_infer=config.large or config.fused,
        op_block_list=op_block,
        node_block_list=sorted(block_nodes) or None,
    )
    onnx.save_model(converted, str(dst), save_as_external_data=config.large, all_tensors_to_one_file=True,
                    location=dst.name + ".data" if config.large else None)


def quantize_file(src: Path, dst: Path, config: QuantConfig, *, workspace: Workspace,
                  reader_factory=None, present_ops: frozenset[str] = frozenset()) -> Path:
    """Run the ONNX Runtime tool of ``config.mode`` from ``src`` to ``dst``.

    Raises:
        PassRefusedError: the tool failed on this model (its message, on one line).
    """
    try:
        with quiet_ort():
            if config.mode == "static":
                _static(src, dst, config, reader_factory, workspace, present_ops)
            elif config.mode == "dynamic":
                packed: tuple[str, ...] = ()
                if config.pack_attention and "MultiHeadAttention" in present_ops:
                    src, packed = _pack_attention(src, config, workspace)
                if config.skip_padding and present_ops & {"MultiHeadAttention", "Attention"}:
                    src = _skip_padding(src, workspace)
                _dynamic(src, dst, config, present_ops, packed)
            elif config.mode == "weight_only":
                _weight_only(src, dst, config)
            elif config.mode == "fp16":
                _fp16(src, dst, config, present_ops)
            else:  # pragma: no cover - settings validation prevents it
                raise ValueError(f"unknown mode {config.mode!r}")
    except PassRefusedError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise PassRefusedError(
            f"ONNX Runtime's {config.mode} quantizer failed on this model: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
    if not dst.exists():
        raise PassRefusedError(f"ONNX Runtime's {config.mode} quantizer wrote no model")
    return dst


def cleanup(paths: Sequence[Path]) -> None:
    """Delete intermediate models (and their data files) no longer needed."""
    for path in paths:
        for item in (path, Path(str(path) + ".data")):
            with contextlib.suppress(OSError):
                os.unlink(item)
