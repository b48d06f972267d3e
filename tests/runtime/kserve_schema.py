"""Check InferenceService YAML files against KServe's own models, in a process of their own.

    python tests/runtime/kserve_schema.py FILE.yaml [FILE.yaml ...]   # exit 0, or 1 with "FILE: why"

KServe's generated ``V1beta1*`` classes (and Kubernetes' for the pod-level types) are the schema
of its CRDs: an unknown field, a wrong type or a missing required field fails. A separate
process because ``kserve`` cannot be imported next to ``tritonclient.grpc`` (kserve/kserve#3099),
which the serving tests use.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import yaml

_LIST = re.compile(r"^[lL]ist\[(.+)\]$")  # kserve writes list[X], kubernetes List[X]
_DICT = re.compile(r"^(?:dict\(str, (.+)\)|Dict\[str, (.+)\])$")
_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


def _models() -> tuple[Any, Any]:
    """kserve.models and kubernetes.client.models (kserve.model_server parses sys.argv when imported)."""
    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve.models as kserve_models
        import kubernetes.client.models as kubernetes_models
    finally:
        sys.argv = saved
    return kserve_models, kubernetes_models


def _build(value: Any, kind: str, where: str) -> Any:
    """``value`` (parsed YAML) as the OpenAPI type ``kind`` of KServe's / Kubernetes' generated
    models: an unknown field, a wrong type or a missing required field fails."""
    kserve_models, kubernetes_models = _models()
    if (match := _LIST.match(kind)) is not None:
        assert isinstance(value, list), where
        return [_build(item, match.group(1), f"{where}[{index}]") for index, item in enumerate(value)]
    if (match := _DICT.match(kind)) is not None:
        assert isinstance(value, dict), where
        return {key: _build(item, match.group(1) or match.group(2), f"{where}.{key}") for key, item in value.items()}
    if kind in _PRIMITIVES:
        assert isinstance(value, _PRIMITIVES[kind]) and not (kind == "int" and isinstance(value, bool)), (where, value)
        return value
    cls = getattr(kserve_models, kind, None) or getattr(kubernetes_models, kind)
    assert isinstance(value, dict), where
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    unknown = sorted(set(value) - set(by_json))
    assert not unknown, f"{where}: {kind} has no field(s) {unknown}"
    return cls(**{by_json[key]: _build(item, cls.openapi_types[by_json[key]], f"{where}.{key}")
                  for key, item in value.items()})


def _validate_inference_service(document: dict[str, Any]) -> None:
    assert document["apiVersion"] == "serving.kserve.io/v1beta1" and document["kind"] == "InferenceService"
    _build(document, "V1beta1InferenceService", "InferenceService")


def main(paths: list[str]) -> int:
    failures = []
    for path in paths:
        try:
            _validate_inference_service(yaml.safe_load(Path(path).read_text()))
        except Exception as exc:  # reported per file
            failures.append(f"{path}: {type(exc).__name__}: {exc}")
    print("\n".join(failures) or f"{len(paths)} valid")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
