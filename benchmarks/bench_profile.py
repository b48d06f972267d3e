"""Where all-MiniLM-L6-v2's int8 time goes, and what the remaining graph-level candidates buy.

Run:  python -m benchmarks profile [--only minilm|minilm-ts] [--threads 2] [--small PATH]

For each export (``minilm``: the sample's dynamo export, pooled ``embedding``; ``minilm-ts``: the
TorchScript exporter's encoder, per-token ``last_hidden_state``), sequence 64:

1. ONNX Runtime's profiler (``onnx_compress.runtime.profile``) on fp32 and on dynamic int8 after
   ``fuse`` (the kernels ``compress --preset small`` ends with, without its smoothing ``Mul``s
   and 4-bit embedding tables; ``--small PATH`` profiles a real ``small`` output too): kernel
   time per operator type at batch 8 and the share in matrix products.
2. Candidates built on the fused fp32 graph by hand, each then quantized the same way, to see
   whether a rule is worth writing (they are experiments here, not passes):
   ``Q/K/V in one MatMul`` (concatenated weights + ``Split``: one int8 GEMM of width 3 x 384
   per layer instead of three), ``tanh GELU`` (``BiasGelu`` -> ``FastGelu``: the tanh
   approximation, max error 4.7e-4 per element) and ``key-padding mask`` (``MultiHeadAttention``
   reads ``attention_mask`` as its key-padding mask instead of the exporter's additive
   ``[batch, 1, seq, seq]`` bias; valid for this encoder, whose only mask is padding), both, and
   ``QAttention`` (Q/K/V packed into ONNX Runtime's ``Attention`` with that mask, which the
   dynamic quantizer turns into one int8 ``QAttention`` per layer).
3. Speed of fp32, int8 and each candidate: all in ONE ``compare_many`` run at batch 1 and 8
   (``--threads`` intra-op threads, settled blocks, medians), and the CPU time per call on ONE
   thread without spinning (``time.process_time``; the work a call costs, far less sensitive to
   other jobs on a shared machine than wall time at 2 threads). Quality: cosine to fp32 on 64
   held-out sentences (per real token for ``last_hidden_state``).

Writes ``artifacts/benchmarks/profile.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import environment, parser as benchmark_parser, write_results
from benchmarks.bench_quantize import cosines, export_minilm_variant



# ----------------------------------------------------------------------------- candidates
def _replace(model: Any, old: Any, new: Any) -> None:
    import onnx_ir as ir

    model.graph.insert_before(old, new)
    for value_old, value_new in zip(old.outputs, new.outputs):
        ir.convenience.replace_all_uses_with(value_old, value_new)
    model.graph.remove(old, safe=True)


def tanh_gelu(model: Any) -> int:
    """``BiasGelu(x, b)`` -> ``FastGelu(x, b)`` (the tanh approximation); returns how many."""
    import onnx_ir as ir

    count = 0
    for node in list(model.graph):
        if node.op_type == "BiasGelu" and node.domain == "com.microsoft":
            out = node.outputs[0]
            _replace(model, node, ir.node("FastGelu", list(node.inputs), domain="com.microsoft",
                                          outputs=[ir.Value(name=out.name + "_tanh", type=out.type, shape=out.shape)]))
            count += 1
    return count


def packed_qkv(model: Any) -> int:
    """Q/K/V MatMuls of one input feeding a ``MultiHeadAttention`` -> one MatMul with the weights
    concatenated along the output axis, then ``Split``; returns how many attention blocks."""
    import onnx_ir as ir

    count = 0
    for node in list(model.graph):
        if node.op_type != "MultiHeadAttention":
            continue
        mms = [value.producer() if value is not None else None for value in node.inputs[:3]]
        if any(mm is None or mm.op_type != "MatMul" or mm.inputs[1].const_value is None for mm in mms):
            continue
        if len({id(mm.inputs[0]) for mm in mms}) != 1 or any(len(list(mm.outputs[0].uses())) != 1 for mm in mms):
            continue
        weights = [mm.inputs[1].const_value.numpy() for mm in mms]
        packed = ir.Value(name=f"{node.name}_qkv_weight", const_value=ir.tensor(np.concatenate(weights, axis=1)))
        sizes = ir.Value(name=f"{node.name}_qkv_sizes",
                         const_value=ir.tensor(np.array([w.shape[1] for w in weights], np.int64)))
        model.graph.register_initializer(packed)
        model.graph.register_initializer(sizes)
        matmul = ir.node("MatMul", [mms[0].inputs[0], packed], outputs=[ir.Value(name=f"{node.name}_qkv")])
        split = ir.node("Split", [matmul.outputs[0], sizes], attributes={"axis": -1}, num_outputs=3)
        for index, value in enumerate(split.outputs):
            value.name = f"{node.name}_qkv_{index}"
        model.graph.insert_before(mms[0], [matmul, split])
        for index, mm in enumerate(mms):
            ir.convenience.replace_all_uses_with(mm.outputs[0], split.outputs[index])
            model.graph.remove(mm, safe=True)
        count += 1
    for value in list(model.graph.initializers.values()):
        if not list(value.uses()) and not value.is_graph_output():
            model.graph.initializers.pop(value.name)
    return count


def key_padding_mask(model: Any) -> int:
    """Every ``MultiHeadAttention`` reads ``Cast(attention_mask, int32)`` as its key-padding mask
    instead of its additive attention bias; returns how many. Valid only where that bias is the
    padding mask (a bidirectional encoder), which the cosine check of this benchmark confirms."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes

    mask = next((value for value in model.graph.inputs if value.name == "attention_mask"), None)
    attentions = [node for node in model.graph if node.op_type == "MultiHeadAttention" and len(node.inputs) > 5
                  and node.inputs[5] is not None]
    if mask is None or not attentions:
        return 0
    cast = ir.node("Cast", [mask], attributes={"to": ir.DataType.INT32}, outputs=[ir.Value(name="key_padding_mask")])
    model.graph.insert_before(attentions[0], cast)
    for node in attentions:
        inputs = list(node.inputs)
        inputs[4], inputs[5] = cast.outputs[0], None
        out = node.outputs[0]
        _replace(model, node, ir.node("MultiHeadAttention", inputs, attributes=node.attributes,
                                      domain="com.microsoft",
                                      outputs=[ir.Value(name=out.name + "_kpm", type=out.type, shape=out.shape)]))
    common_passes.RemoveUnusedNodesPass()(model)
    return len(attentions)


def packed_attention(model: Any) -> int:
    """Q/K/V MatMuls + ``MultiHeadAttention`` -> ONNX Runtime's packed ``Attention`` (weights
    concatenated, ``attention_mask`` as its raw 2-D mask index), which the dynamic quantizer
    turns into ``QAttention`` (one int8 op per layer: the projections, written per head, and the
    attention core); returns how many. Valid where the additive bias is the padding mask."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes

    mask = next((value for value in model.graph.inputs if value.name == "attention_mask"), None)
    if mask is None:
        return 0
    cast = ir.node("Cast", [mask], attributes={"to": ir.DataType.INT32}, outputs=[ir.Value(name="mask_index")])
    count = 0
    for node in list(model.graph):
        if node.op_type != "MultiHeadAttention" or len(node.inputs) < 4 or node.inputs[3] is None:
            continue
        mms = [value.producer() if value is not None else None for value in node.inputs[:3]]
        if any(mm is None or mm.op_type != "MatMul" or mm.inputs[1].const_value is None for mm in mms):
            continue
        if len({id(mm.inputs[0]) for mm in mms}) != 1:
            continue
        if count == 0:
            model.graph.insert_before(mms[0], cast)
        weights = ir.Value(name=f"{node.name}_qkv_weight", const_value=ir.tensor(
            np.concatenate([mm.inputs[1].const_value.numpy() for mm in mms], axis=1)))
        model.graph.register_initializer(weights)
        out = node.outputs[0]
        _replace(model, node, ir.node("Attention", [mms[0].inputs[0], weights, node.inputs[3], cast.outputs[0]],
                                      attributes={"num_heads": node.attributes["num_heads"].value},
                                      domain="com.microsoft",
                                      outputs=[ir.Value(name=out.name + "_packed", type=out.type, shape=out.shape)]))
        for mm in mms:
            model.graph.remove(mm, safe=True)
        count += 1
    common_passes.RemoveUnusedNodesPass()(model)
    for value in list(model.graph.initializers.values()):
        if not list(value.uses()) and not value.is_graph_output():
            model.graph.initializers.pop(value.name)
    return count


CANDIDATES = {"Q/K/V in one MatMul": [packed_qkv], "tanh GELU (FastGelu)": [tanh_gelu],
              "key-padding mask": [key_padding_mask],
              "tanh GELU + key-padding mask": [tanh_gelu, key_padding_mask],
              "QAttention (packed, key-padding mask)": [packed_attention]}


# ----------------------------------------------------------------------------- measurements
def cpu_ms_per_call(paths: list[Path], feeds: dict[str, np.ndarray], runs: int) -> list[float]:
    """Median CPU time per call on ONE intra-op thread without spinning, models interleaved."""
    import onnxruntime as ort

    sessions = []
    for path in paths:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions.append(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
    for session in sessions:
        session.run(None, feeds)
    samples: list[list[float]] = [[] for _ in sessions]
    for round_ in range(runs):
        order = range(len(sessions)) if round_ % 2 == 0 else reversed(range(len(sessions)))
        for index in order:
            start = time.process_time()
            sessions[index].run(None, feeds)
            samples[index].append((time.process_time() - start) * 1e3)
    return [float(np.median(s)) for s in samples]


def bench_export(args: argparse.Namespace, export: str) -> dict[str, Any]:
    from onnx_compress.samples import minilm

    from onnx_compress.model_io import load_model, save_model
    from onnx_compress.passes import Fuse, Normalize, Quantize
    from onnx_compress.runtime import Runner, SessionSettings, compare_many
    from onnx_compress.runtime.profile import profile_ops

    folder = args.out / "profile" / ("minilm" if export == "dynamo" else "minilm_ts")
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = folder / "minilm.onnx"
    output = export_minilm_variant(fp32, export)
    normalized = Normalize()(load_model(fp32)).model
    fused_path = folder / "fused.onnx"
    save_model(Fuse()(normalized).model, fused_path)
    models: dict[str, Path] = {"fp32": fp32}

    def quantize(model: Any, stem: str) -> Path:
        step = Quantize(mode="dynamic", smooth="off", guard="off")
        step.progress = False
        path = folder / f"{stem}.onnx"
        save_model(step(model).model, path)
        return path

    models["int8 after fuse (small's kernels)"] = quantize(normalized, "int8")
    applied: dict[str, dict[str, int]] = {}
    for label, rewrites in CANDIDATES.items():
        candidate = load_model(fused_path)
        applied[label] = {rewrite.__name__: rewrite(candidate) for rewrite in rewrites}
        models[f"int8, {label}"] = quantize(candidate, "int8_" + "_".join(r.__name__ for r in rewrites))
    if args.small is not None:
        models["compress --preset small (given)"] = args.small

    data = minilm.text_dataset(minilm.sentences(600), sequence=64).subset(slice(400, 464))
    session = SessionSettings(provider="cpu", intra_op_threads=args.threads)
    expected = Runner(fp32, session).run_dataset(data)[output]
    rows: dict[str, dict[str, Any]] = {}
    for label, path in models.items():
        cos = cosines(expected, Runner(path, session).run_dataset(data)[output], data)
        rows[label] = {"path": str(path), "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                       "applied": applied.get(label.removeprefix("int8, "), {})}
    for batch, runs in ((1, 60), (8, 30)):
        feeds = {name: array[:batch] for name, array in data.inputs.items()}
        latencies = compare_many(list(models.values()), feeds, runs=runs, warmup=3, settings=session)
        for label, latency in zip(models, latencies):
            rows[label][f"ms_b{batch}"] = latency.median_ms
            rows[label][f"speedup_b{batch}"] = latencies[0].median_ms / latency.median_ms
    feeds8 = {name: array[:8] for name, array in data.inputs.items()}
    for label, cpu_ms in zip(models, cpu_ms_per_call(list(models.values()), feeds8, args.cpu_runs)):
        rows[label]["cpu_ms_b8_1thread"] = cpu_ms
        rows[label]["cpu_speedup_b8_1thread"] = rows["fp32"].get("cpu_ms_b8_1thread", cpu_ms) / cpu_ms
    profiles = {label: profile_ops(models[label], feeds8, settings=session, runs=10).as_dict()
                for label in models if label == "fp32" or label.startswith("int8 after") or "given" in label}
    return {"rows": rows, "profiles": profiles}


def _print(results: dict[str, Any]) -> None:
    from onnx_compress.table import format_table

    for key in ("minilm", "minilm_ts"):
        if key not in results:
            continue
        print(f"\n{key}: speed-up over fp32 (compare_many, {results['threads']} threads) and CPU time per call "
              "(1 thread, batch 8)")
        print(format_table(
            ["variant", "cosine mean / min", "b1", "b8", "CPU ms b8 (1 thread)", "CPU speed-up"],
            [[label, f"{r['cosine_mean']:.4f} / {r['cosine_min']:.4f}", f"{r['speedup_b1']:.2f}x",
              f"{r['speedup_b8']:.2f}x", f"{r['cpu_ms_b8_1thread']:.1f}", f"{r['cpu_speedup_b8_1thread']:.2f}x"]
             for label, r in results[key]["rows"].items()]))
        for label, profile in results[key]["profiles"].items():
            print(f"\n{key} {label}: kernel time per operator at batch 8 (GEMM share "
                  f"{100 * profile['gemm_share']:.0f} %)")
            print(format_table(["op", "nodes", "ms per call", "share"],
                               [[op["op_type"], str(op["nodes"]), f"{op['ms']:.2f}", f"{100 * op['share']:.1f} %"]
                                for op in profile["ops"][:10]]))


def main(argv: list[str]) -> int:
    parser = benchmark_parser("profile", __doc__)
    parser.add_argument("--only", choices=["minilm", "minilm-ts"], action="append",
                        help="one export (repeatable; default both)")
    parser.add_argument("--cpu-runs", type=int, default=20, help="calls per model for the CPU-time column")
    parser.add_argument("--small", type=Path, default=None,
                        help="a `compress --preset small` output of the (single) --only export to profile too")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    only = args.only or ["minilm", "minilm-ts"]
    if args.small is not None and len(only) != 1:
        parser.error("--small needs exactly one --only export")
    results: dict[str, Any] = {"threads": args.threads, "environment": environment()}
    if "minilm" in only:
        results["minilm"] = bench_export(args, "dynamo")
    if "minilm-ts" in only:
        results["minilm_ts"] = bench_export(args, "torchscript")
    _print(results)
    write_results(args.out, "profile", results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
