"""A fuzz harness: mutated models and data files must give OnnxCompressError, never a crash.

Run by tests/hardening/test_fuzz.py in a SUBPROCESS, so that a crash of the interpreter (a
segfault in a C++ library) fails the test instead of killing pytest:

    python tests/hardening/fuzz_harness.py MODEL.onnx DATA.npz --examples 200 --seed 0

Each example mutates the valid model's bytes and the data file's bytes (bit flips, byte
overwrites, truncation, insertion, duplication of a slice), then drives the loader, the
statistics, ``Normalize`` and the other passes listed in ``PASS_FACTORIES``, and ONNX Runtime
validation. Any exception that is not an ``OnnxCompressError`` is a finding: the harness
prints the mutation and the traceback and exits 1. Hypothesis shrinks failing examples.
"""

from __future__ import annotations

import argparse
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

#: pass name -> a factory of a configured pass run on every model that loads
PASS_FACTORIES: dict[str, Callable[[], object]] = {}


def _register_passes() -> None:
    from onnx_compress.passes.normalize import Normalize

    PASS_FACTORIES["normalize"] = Normalize


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


def drive_model(path: Path, data_path: Path | None) -> str:
    """Everything a user may do with a model file; only OnnxCompressError may escape.

    Returns how far it got: the error class name, or ``ok``.
    """
    from onnx_compress.model_io import load_model
    from onnx_compress.runtime.validate import validate
    from onnx_compress.stats import model_stats

    try:
        model = load_model(path)
        model_stats(model)
        for factory in PASS_FACTORIES.values():
            factory()(model)  # type: ignore[operator]
        if data_path is not None:
            validate(path, path, data_path, "max_abs")
    except OnnxCompressError as exc:
        return type(exc).__name__
    return "ok"


def run(model_path: Path, data_path: Path, examples: int, seed: int, *, shrink: bool = True) -> int:
    _register_passes()
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
    @given(model_ops=mutation, data_ops=mutation, mutate_model=st.booleans())
    def check(model_ops, data_ops, mutate_model) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            model_file = Path(tmp) / "m.onnx"
            data_file = Path(tmp) / "d.npz"
            model_file.write_bytes(mutate(model_bytes, model_ops) if mutate_model else model_bytes)
            data_file.write_bytes(data_bytes if mutate_model else mutate(data_bytes, data_ops))
            try:
                outcomes[drive_model(model_file, data_file)] += 1
            except Exception:
                findings.append(f"model_ops={model_ops} data_ops={data_ops} mutate_model={mutate_model}\n"
                                + traceback.format_exc())
                raise

    try:
        check()
    except Exception:
        print("FINDING:\n" + (findings[-1] if findings else traceback.format_exc()))
        return 1
    print(f"ok: {sum(outcomes.values())} examples, no crash; outcomes: {dict(outcomes)}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-shrink", action="store_true",
                        help="report the first finding as found, without minimizing it (faster)")
    args = parser.parse_args(argv)
    return run(args.model, args.data, args.examples, args.seed, shrink=not args.no_shrink)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
