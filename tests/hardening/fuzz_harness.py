"""A fuzz harness: mutated models and data files must give OnnxCompressError, never a crash.

Run by tests/hardening/test_fuzz.py in a SUBPROCESS, so that a crash of the interpreter (a
segfault in a C++ library) fails the test instead of killing pytest:

    python tests/hardening/fuzz_harness.py MODEL.onnx DATA.npz --examples 200 --seed 0

Each example mutates one of: the valid model's bytes or the data file's bytes (bit flips, byte
overwrites, truncation, insertion, duplication of a slice), or the model's *values*
(:func:`mutate_values`: NaN/inf/huge weights, zeroed or flattened weights, changed integer
attributes; the model still parses, so the passes meet it), then drives the loader, the
statistics, ``Normalize`` and passes, and ONNX Runtime validation. Any exception that is not an
``OnnxCompressError`` is a finding: the harness prints the mutation and the traceback and exits
1. Hypothesis shrinks failing examples.

Which passes (``--passes``):

- ``sample`` (the default suite): ``Normalize`` and ONE of the data-free passes
  (``FAST_PASSES``: structured and unstructured pruning, low-rank, dynamic / weight-only / static
  quantization, transformer fusions), drawn per example;
- ``all`` (``make fuzz``, the slow test): every data-free pass, and one of the data-aware ones
  (``DATA_PASSES``: pruning with least-squares reconstruction, whitened low-rank; they read the
  mutated data file as calibration data) drawn per example.

The last line counts, per pass, the examples in which it ran to the end on a model that loaded
(``completed: name=N ...``), so a run that never reaches a pass is visible (the test checks it).
"""

from __future__ import annotations

import argparse
import itertools
from collections import Counter
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as seed_decorator
from hypothesis import strategies as st

from onnx_compress.errors import OnnxCompressError

#: a pass factory: takes the (possibly mutated) data file, returns a configured pass
PassFactory = Callable[[Path], object]


def _fast_passes() -> dict[str, PassFactory]:
    """Passes that need no data: milliseconds each on the seed CNN."""
    from onnx_compress.passes.fuse import Fuse
    from onnx_compress.passes.lowrank import LowRank
    from onnx_compress.passes.prune import PruneStructured, PruneUnstructured
    from onnx_compress.passes.quantize import Quantize

    return {
        "prune_structured": lambda data: PruneStructured(ratio=0.5),
        "prune_unstructured": lambda data: PruneUnstructured(ratio=0.5),
        "lowrank": lambda data: LowRank(rank_ratio=0.5),
        "quantize_dynamic": lambda data: Quantize(mode="dynamic", guard="off"),
        "quantize_weight_only": lambda data: Quantize(mode="weight_only", guard="off"),
        "quantize_static": lambda data: Quantize(mode="static", guard="off", calibration=data),
        "fuse": lambda data: Fuse(),
    }


def _data_passes() -> dict[str, PassFactory]:
    """Passes that run the model over calibration data (seconds each)."""
    from onnx_compress.passes.lowrank import LowRank
    from onnx_compress.passes.prune import PruneStructured

    return {
        "prune_reconstruct": lambda data: PruneStructured(ratio=0.5, reconstruct=True, calibration=data),
        "lowrank_whitened": lambda data: LowRank(rank_ratio=0.5, method="whitened", calibration=data),
    }


def mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) mutations to ``data``."""
    buf = bytearray(data)
    for kind, position, value in ops:
        if not buf:
            break
        pos = position % len(buf)
        if kind == 0:  # flip one bit
            buf[pos] ^= 1 << (value % 8)
        elif kind == 1:  # overwrite a byte
            buf[pos] = value % 256
        elif kind == 2:  # truncate
            del buf[pos:]
        elif kind == 3:  # insert a byte
            buf.insert(pos, value % 256)
        else:  # duplicate a slice
            end = min(len(buf), pos + 1 + value % 64)
            buf[pos:pos] = buf[pos:end]
    return bytes(buf)


_SPECIAL = (float("nan"), float("inf"), float("-inf"), 0.0, 1e30, -1e-30)


def mutate_values(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Mutations that keep a model parseable, so that the passes (not the loader) meet them:
    special float values (NaN, inf, 1e30, ...) in a weight, a weight zeroed, an integer
    attribute (strides, group, axis, transB, ...) changed, a weight flattened to 1-D."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(data)
    graph = proto.graph
    for kind, position, value in ops:
        if kind in (0, 1, 4) and graph.initializer:
            tensor = graph.initializer[position % len(graph.initializer)]
            array = numpy_helper.to_array(tensor).copy()
            if kind == 0 and array.size and np.issubdtype(array.dtype, np.floating):
                array.flat[value % array.size] = _SPECIAL[value % len(_SPECIAL)]
            elif kind == 1:
                array[...] = 0
            elif kind == 4:
                array = array.reshape(-1)
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
        elif kind in (2, 3):
            attributes = [a for node in graph.node for a in node.attribute
                          if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS)]
            if not attributes:
                continue
            attribute = attributes[position % len(attributes)]
            new = value % 5 - (1 if kind == 3 else 0)  # 0..4, or -1..3
            if attribute.type == onnx.AttributeProto.INT:
                attribute.i = new
            elif attribute.ints:
                attribute.ints[value % len(attribute.ints)] = new
    return proto.SerializeToString()


def drive_model(path: Path, data_path: Path | None, passes: dict[str, PassFactory] | None = None,
                completed: Counter[str] | None = None) -> str:
    """Everything a user may do with a model file; only OnnxCompressError may escape.

    Returns how far it got: the error class name, or ``ok``. ``completed`` counts the passes
    that ran to the end.
    """
    from onnx_compress.model_io import load_model
    from onnx_compress.passes.normalize import Normalize
    from onnx_compress.runtime.validate import validate
    from onnx_compress.stats import model_stats

    steps: dict[str, PassFactory] = {"normalize": lambda data: Normalize(), **(passes or {})}
    outcome = "ok"
    try:
        model = load_model(path)
        model_stats(model)
    except OnnxCompressError as exc:
        return type(exc).__name__
    for name, factory in steps.items():
        try:
            factory(data_path)(model)  # type: ignore[operator]
        except OnnxCompressError as exc:
            outcome = type(exc).__name__
            continue
        if completed is not None:
            completed[name] += 1
    if data_path is not None:
        try:
            validate(path, path, data_path, "max_abs")
        except OnnxCompressError as exc:
            outcome = type(exc).__name__
    return outcome


def run(model_path: Path, data_path: Path, examples: int, seed: int, *, shrink: bool = True,
        passes: str = "sample") -> int:
    fast, slow = _fast_passes(), _data_passes()
    fast_names, slow_names = sorted(fast), sorted(slow)

    def chosen(pick: int) -> dict[str, PassFactory]:
        """Round robin over the examples, so that a short run reaches every pass."""
        if passes == "all":
            name = slow_names[pick % len(slow_names)]
            return {**fast, name: slow[name]}
        name = fast_names[pick % len(fast_names)]
        return {name: fast[name]}

    example = itertools.count()

    completed: Counter[str] = Counter()
    model_bytes = model_path.read_bytes()
    data_bytes = data_path.read_bytes()
    mutation = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2**31), st.integers(0, 2**16)),
                        min_size=1, max_size=6)
    findings: list[str] = []
    outcomes: Counter[str] = Counter()

    phases = [Phase.generate, Phase.shrink] if shrink else [Phase.generate]

    @settings(max_examples=examples, deadline=None, database=None, phases=phases,
              suppress_health_check=list(HealthCheck))
    @seed_decorator(seed)
    @given(model_ops=mutation, data_ops=mutation, target=st.sampled_from(["bytes", "values", "data"]))
    def check(model_ops, data_ops, target) -> None:
        pick = next(example)
        with tempfile.TemporaryDirectory() as tmp:
            model_file = Path(tmp) / "m.onnx"
            data_file = Path(tmp) / "d.npz"
            model = {"bytes": mutate(model_bytes, model_ops), "values": mutate_values(model_bytes, model_ops),
                     "data": model_bytes}[target]
            model_file.write_bytes(model)
            data_file.write_bytes(mutate(data_bytes, data_ops) if target == "data" else data_bytes)
            try:
                outcomes[drive_model(model_file, data_file, chosen(pick), completed)] += 1
            except Exception:
                findings.append(f"model_ops={model_ops} data_ops={data_ops} target={target} "
                                f"passes={sorted(chosen(pick))}\n"
                                + traceback.format_exc())
                raise

    try:
        check()
    except Exception:
        print("FINDING:\n" + (findings[-1] if findings else traceback.format_exc()))
        return 1
    print(f"ok: {sum(outcomes.values())} examples, no crash; outcomes: {dict(outcomes)}")
    print("completed: " + " ".join(f"{name}={completed[name]}" for name in ["normalize", *fast_names, *slow_names]))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-shrink", action="store_true",
                        help="report the first finding as found, without minimizing it (faster)")
    parser.add_argument("--passes", choices=["sample", "all"], default="sample",
                        help="one data-free pass per example (sample) or every pass (all); see the module docstring")
    args = parser.parse_args(argv)
    return run(args.model, args.data, args.examples, args.seed, shrink=not args.no_shrink, passes=args.passes)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
