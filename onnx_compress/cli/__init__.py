"""The ``onnx-compress`` command line (entry point: :func:`onnx_compress.cli.main.main`)."""
