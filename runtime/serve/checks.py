"""The input checks a request passes before ONNX Runtime sees it (no server, no KServe here).

:func:`check_request` takes what a request declares (input names, datatypes and shapes; the
requested output names) and checks it against the served model, so that a bad request is
refused with a message naming the model's inputs instead of failing inside ONNX Runtime:

- every model input present, no unknown or duplicate input (naming the model's inputs);
- each input's datatype equal to the model's (no silent casts);
- rank equal, static axes equal, and the same size wherever two inputs share a symbolic axis
  name (e.g. MiniLM's ``batch`` and ``sequence``);
- the first axis at most the Triton config's ``max_batch_size`` when it is > 0;
- requested outputs exist.

The wire format itself (JSON, binary tensor data, gRPC messages) is KServe's: see
:mod:`onnx_compress.runtime.serve.model`.
"""

from __future__ import annotations

from collections.abc import Sequence

from onnx_compress.errors import DataError
from onnx_compress.runtime.serve.registry import ServedModel

__all__ = ["VERSION_HEADER", "RequestError", "DeclaredInput", "check_request"]

#: the header carrying the version of a REST request addressed to /v2/models/NAME/versions/V/...
#: (set by the server's middleware from the path; a client's own is dropped)
VERSION_HEADER = "x-onnx-compress-model-version"

#: (name, datatype, shape) of one input, as the request declares it
DeclaredInput = tuple[str, str, Sequence[int]]


class RequestError(DataError):
    """A request the model cannot answer; the server turns it into a 400 / INVALID_ARGUMENT."""


def _expected(model: ServedModel) -> str:
    return "; ".join(spec.describe() for spec in model.inputs)


def check_request(model: ServedModel, inputs: Sequence[DeclaredInput], outputs: Sequence[str] | None) -> list[str]:
    """Check a request against ``model``; return the output names to compute (RequestError if it does not fit)."""
    given: dict[str, DeclaredInput] = {}
    for declared in inputs:
        if declared[0] in given:
            raise RequestError(f"input {declared[0]!r} appears twice in the request")
        given[declared[0]] = declared
    unknown = [name for name in given if model.input_spec(name) is None]
    if unknown:
        raise RequestError(f"model {model.name!r} has no input {unknown[0]!r}; its inputs are {_expected(model)}")
    missing = [spec.name for spec in model.inputs if spec.name not in given]
    if missing:
        raise RequestError(f"missing input {missing[0]!r} for model {model.name!r}; its inputs are {_expected(model)}")
    symbols: dict[str, tuple[int, str]] = {}
    for spec in model.inputs:
        _, datatype, declared_shape = given[spec.name]
        shape = [int(d) for d in declared_shape]
        if datatype != spec.datatype:
            raise RequestError(
                f"input {spec.name!r} has datatype {datatype}, model {model.name!r} expects {spec.datatype}"
            )
        if any(d < 0 for d in shape):
            raise RequestError(f"input {spec.name!r} has a negative dimension in its shape {shape}")
        if len(shape) != len(spec.shape):
            raise RequestError(
                f"input {spec.name!r} has shape {shape} (rank {len(shape)}), "
                f"model {model.name!r} expects {spec.protocol_shape()} (rank {len(spec.shape)})"
            )
        for axis, (got, want) in enumerate(zip(shape, spec.shape)):
            if isinstance(want, int) and got != want:
                raise RequestError(
                    f"input {spec.name!r} has shape {shape}, model {model.name!r} expects "
                    f"{spec.protocol_shape()} (axis {axis} must be {want})"
                )
            if isinstance(want, str):
                first = symbols.setdefault(want, (got, spec.name))
                if first[0] != got:
                    raise RequestError(
                        f"axis {want!r} is {first[0]} in input {first[1]!r} but {got} in input {spec.name!r}"
                    )
        if model.max_batch > 0 and shape and shape[0] > model.max_batch:
            raise RequestError(
                f"input {spec.name!r} has batch size {shape[0]}, model {model.name!r} accepts at most {model.max_batch}"
            )
    if not outputs:
        return model.output_names
    for name in outputs:
        if not model.has_output(name):
            raise RequestError(
                f"model {model.name!r} has no output {name!r}; its outputs are {', '.join(model.output_names)}"
            )
    return list(outputs)
