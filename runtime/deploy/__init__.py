"""Deployment to ONNX Runtime based servers: Triton model repositories.

``deploy_triton(model, repo, name)`` writes ``REPO/NAME/config.pbtxt`` and
``REPO/NAME/VERSION/model.onnx`` for Triton's onnxruntime backend; the config schema is Triton's
own ``ModelConfig`` message from the ``tritonclient`` package (``onnx-compress[serve]``).
"""

from onnx_compress.runtime.deploy.triton import MODEL_FILENAME, TritonDeployment, check_model_name, deploy_triton

__all__ = ["MODEL_FILENAME", "TritonDeployment", "check_model_name", "deploy_triton"]
