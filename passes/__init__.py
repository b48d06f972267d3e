"""Framework-neutral graph passes on ONNX models (``onnx_ir.Model``).

Every pass follows the contract in docs/architecture.md: typed settings validated on
construction, ``call(model) -> PassResult`` subclass that reports what it did, a truthful
``modified``, and a refusal with a reason for what it cannot do safely.
"""

__all__: list[str] = []
