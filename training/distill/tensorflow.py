"""Knowledge distillation into a Keras 3 student, from a Keras or an ONNX teacher.

Same arguments, loss, output-kind handling, teacher caching, checks and history as the PyTorch
trainer (:mod:`onnx_compress.training.distill.torch`; the loss and its conventions are stated
in :mod:`onnx_compress.training.distill.common`)::

    L = (1 - alpha) * T^2 * KL( softmax(z_t / T) || softmax(z_s / T) ) + alpha * CE( softmax(z_s), y )

How
    A custom training loop, the equivalent of a ``keras.Model`` subclass with its own
    ``train_step``: one ``tf.function`` step (traced once, the batch axis left open) computes the
    loss under a ``tf.GradientTape`` with the student in training mode (``training=True``), adds
    the student's own regularization losses (``student.losses``, as ``fit`` would), and applies
    Keras' Adam. Keeping the loop ours (:mod:`onnx_compress.training.distill.loop`, shared with
    the PyTorch trainer) gives both frameworks the same epochs, per-epoch progress bar,
    validation and :class:`~onnx_compress.training.distill.common.DistillHistory`; the student
    stays an ordinary Keras model, trained in place (nothing is compiled into it).

Softmax students
    A student that ends in ``softmax`` (the Keras seed) outputs probabilities. Keras attaches the
    pre-softmax logits to the outputs of its softmax (``_keras_logits``, what Keras' own
    cross-entropy uses), and the trainer uses those logits when they are there: exact, even where
    a probability underflows. Otherwise it falls back to ``log(max(p, 1.2e-38))``.

Device
    ``auto``: the first GPU TensorFlow sees, else the CPU; ``cpu``; ``cuda``/``gpu``/``cuda:N``/
    ``gpu:N``. An ONNX teacher runs on ONNX Runtime's CUDA provider when training on a GPU and the
    installed onnxruntime has it. Needs the TensorFlow backend of Keras.

Inputs
    A model with one input gets the data's one array; with several, a dict keyed by the data's
    array names (Keras matches them to its ``Input`` names).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from onnx_compress.data import Dataset, DataSource
from onnx_compress.errors import SettingError
from onnx_compress.optional import require
from onnx_compress.setting import overridden
from onnx_compress.training.distill import common
from onnx_compress.training.distill.common import DistillHistory, DistillSettings, TeacherInputs
from onnx_compress.training.distill.loop import train_epochs

__all__ = ["distill", "distillation_loss", "resolve_device", "DEFAULTS"]

logger = logging.getLogger(__name__)

_GPU = re.compile(r"^(cuda|gpu)(?::(\d+))?$")


def _frameworks() -> tuple[Any, Any]:
    tf = require("tensorflow", "distillation with Keras")
    keras = require("keras", "distillation with Keras")
    if keras.backend.backend() != "tensorflow":
        raise SettingError(
            f"Keras distillation needs the TensorFlow backend, Keras runs on {keras.backend.backend()!r}; "
            "set KERAS_BACKEND=tensorflow"
        )
    return tf, keras


def resolve_device(device: str) -> str:
    """A TensorFlow device name: ``auto`` -> the first GPU if any, else the CPU."""
    tf, _ = _frameworks()
    gpus = tf.config.list_logical_devices("GPU")
    if device == "auto":
        return gpus[0].name if gpus else "/device:CPU:0"
    if device == "cpu":
        return "/device:CPU:0"
    match = _GPU.match(str(device).lower())
    if match is None:
        raise SettingError(f"device must be 'auto', 'cpu', 'cuda', 'gpu' or 'cuda:N', got {device!r}")
    index = int(match.group(2) or 0)
    if index >= len(gpus):
        raise SettingError(f"device {device!r} requested, but TensorFlow sees {len(gpus)} GPU(s); use 'auto' or 'cpu'")
    return gpus[index].name


def distillation_loss(student_log_space: Any, teacher_soft: Any, labels: Any, *, temperature: float,
                      alpha: float) -> tuple[Any, Any, Any]:
    """``(L, T^2 * KL, CE)`` for one batch, as TensorFlow tensors (``CE`` is ``None`` without labels)."""
    tf, _ = _frameworks()
    return _loss(tf, student_log_space, teacher_soft, labels, temperature=temperature, alpha=alpha)


def _loss(tf: Any, student_log_space: Any, teacher_soft: Any, labels: Any, *, temperature: float,
          alpha: float) -> tuple[Any, Any, Any]:
    student_soft = tf.nn.log_softmax(student_log_space / temperature, axis=1)
    kl = tf.reduce_sum(tf.exp(teacher_soft) * (teacher_soft - student_soft), axis=1)
    kd = tf.reduce_mean(kl) * (temperature * temperature)
    ce = None
    if labels is not None:
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=student_log_space))
    total = (1.0 - alpha) * kd if ce is None else (1.0 - alpha) * kd + alpha * ce
    return total, kd, ce


def _model_input(names: list[str], tensors: list[Any]) -> Any:
    return tensors[0] if len(tensors) == 1 else dict(zip(names, tensors))


def _student_log_space(out: Any, kind: str, tf: Any) -> Any:
    if kind == "probs":
        logits = getattr(out, "_keras_logits", None)
        if logits is not None:
            logger.debug("using the logits Keras attached to the student's softmax output")
            return logits
        logger.debug("student outputs probabilities without attached logits: using log(max(p, tiny))")
        return tf.math.log(tf.maximum(out, common.PROB_FLOOR))
    return out


def _keras_teacher(teacher: Any, tf: Any):
    def predict(feeds: dict[str, np.ndarray]) -> np.ndarray:
        names = list(feeds)
        out = teacher(_model_input(names, [tf.constant(feeds[n]) for n in names]), training=False)
        if isinstance(out, (list, tuple, dict)):
            raise SettingError(f"the teacher returned {type(out).__name__}; distillation needs one (batch, classes) output")
        return np.asarray(out, dtype=np.float32)

    return predict


def _inference_fn(student: Any, data: Dataset, tf: Any):
    names = list(data.names)
    signature = [tf.TensorSpec((None, *arr.shape[1:]), tf.as_dtype(arr.dtype)) for arr in data.inputs.values()]

    @tf.function(input_signature=signature)
    def infer(*tensors: Any) -> Any:
        return student(_model_input(names, list(tensors)), training=False)

    return infer


def _student_outputs(infer: Any, data: Dataset, batch_size: int) -> np.ndarray:
    chunks = []
    for feeds in data.batches(batch_size):
        out = infer(*feeds.values())
        if isinstance(out, (list, tuple, dict)):
            raise SettingError(f"the student returned {type(out).__name__}; distillation needs one (batch, classes) output")
        chunks.append(np.asarray(out, dtype=np.float32))
    return np.concatenate(chunks)


def _load_teacher(teacher: Any, keras: Any) -> Any:
    if isinstance(teacher, (str, os.PathLike)) and Path(teacher).suffix.lower() == ".keras":
        from onnx_compress.converters.tensorflow.export import load_keras_model

        return load_keras_model(teacher)
    return teacher


#: the settings when none are given: this trainer's epochs, learning rate and batch size, the other
#: fields as :class:`DistillSettings` declares them
DEFAULTS = DistillSettings(epochs=10, lr=1e-3, batch_size=64)


def distill(teacher: Any, student: Any, train_data: DataSource, settings: DistillSettings | None = None, *,
            val_data: DataSource | None = None, device: str = "auto", teacher_inputs: TeacherInputs = None,
            teacher_output: str | None = None, progress: bool = True, **overrides: Any) -> tuple[Any, DistillHistory]:
    """Train the Keras ``student`` to imitate ``teacher`` (and the labels); return it with its history.

    The loss is the PyTorch trainer's (:func:`onnx_compress.training.distill.torch.distill`; stated
    in full in :mod:`onnx_compress.training.distill.common`).

    Args:
        teacher: a ``keras.Model``, a ``.keras`` file (loaded with safe_mode), or an ONNX model
            (path, ``onnx_ir.Model`` or ``onnx.ModelProto``) run in ONNX Runtime, e.g. a PyTorch
            model exported to ONNX (then usually ``teacher_inputs="NHWC->NCHW"``).
        student: the ``keras.Model`` to train in place, e.g. from ``narrow_student``.
        Other arguments: as :func:`onnx_compress.training.distill.torch.distill`; the settings
            default to :data:`DEFAULTS`.

    Returns:
        ``(student, history)``.

    Raises:
        DataError, SettingError: bad data or settings, teacher and student with different
        numbers of outputs; all before the student's weights change.
    """
    settings = overridden(settings or DEFAULTS, overrides, where="distill()")
    train, val = common.prepare_data(train_data, val_data, alpha=settings.alpha)
    tf, keras = _frameworks()
    if not isinstance(student, keras.Model):
        raise SettingError(f"student must be a keras.Model, got {type(student).__name__}")
    train_device = resolve_device(device)
    transform = common.teacher_feeds(teacher_inputs)
    teacher = _load_teacher(teacher, keras)

    with tf.device(train_device):
        infer = _inference_fn(student, train, tf)
        probe = common.probe_student(
            lambda: _student_outputs(infer, train.take(min(len(train), 32)), settings.batch_size))
        if not student.trainable_variables:
            raise SettingError("the student has no trainable variables")
        predict = common.pick_teacher(teacher, native=keras.Model, run_native=lambda m: _keras_teacher(m, tf),
                                      accepted="a keras.Model, a .keras file", framework="Keras",
                                      gpu="CPU" not in train_device, output=teacher_output)
        run = common.start_run(predict, probe, train, val, transform, settings, device=train_device,
                               progress=progress)
        _train(student, train, val, run.targets, run.teacher.val, settings, run.history, run.student_kind,
               infer, tf, keras, progress)
    return student, run.history


def _train(student: Any, train: Dataset, val: Dataset | None, targets: np.ndarray, raw_teacher_val: np.ndarray | None,
           settings: DistillSettings, history: DistillHistory, student_kind: str, infer: Any, tf: Any,
           keras: Any, progress: bool) -> None:
    """Keras' Adam in one ``tf.function`` step; the epochs are :func:`train_epochs`'s."""
    names = list(train.names)
    has_labels = train.labels is not None
    optimizer = keras.optimizers.Adam(learning_rate=settings.lr)
    variables = student.trainable_variables
    optimizer.build(variables)
    temperature, alpha = float(settings.temperature), float(settings.alpha)
    signature = [tf.TensorSpec((None, *arr.shape[1:]), tf.as_dtype(arr.dtype)) for arr in train.inputs.values()]
    signature += [tf.TensorSpec((None, targets.shape[1]), tf.float32), tf.TensorSpec((None,), tf.int64)]

    @tf.function(input_signature=signature)
    def step(*args: Any) -> tuple[Any, Any, Any]:
        *tensors, soft, labels = args
        with tf.GradientTape() as tape:
            out = student(_model_input(names, list(tensors)), training=True)
            total, kd, ce = _loss(tf, _student_log_space(out, student_kind, tf), soft,
                                  labels if has_labels else None, temperature=temperature, alpha=alpha)
            objective = total + tf.add_n(student.losses) if student.losses else total
        grads = tape.gradient(objective, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return total, kd, tf.zeros(()) if ce is None else ce

    labels_all = train.labels.astype(np.int64) if has_labels else np.zeros(len(train), np.int64)

    def batch_step(indices: np.ndarray) -> tuple[float, float, float | None]:
        batch = [arr[indices] for arr in train.inputs.values()]
        total, kd, ce = step(*batch, targets[indices], labels_all[indices])
        return float(total), float(kd), float(ce) if has_labels else None

    train_epochs(batch_step, len(train), settings, history, val=val, teacher_val=raw_teacher_val,
                 predict_val=None if val is None else (lambda: _student_outputs(infer, val, settings.batch_size)),
                 progress=progress)
