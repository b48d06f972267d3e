"""Knowledge distillation into a PyTorch student, from a PyTorch or an ONNX teacher.

The loss (stated in full in :mod:`onnx_compress.training.distill.common`)::

    L = (1 - alpha) * T^2 * KL( softmax(z_t / T) || softmax(z_s / T) ) + alpha * CE( softmax(z_s), y )

``z`` are the models' outputs in log space: logits and log-probabilities as they are (the seed
CNN's ``log_softmax`` output is exact), probabilities as ``log(max(p, 1.2e-38))``. The KL term
is ``torch.nn.functional.kl_div(log_softmax(z_s / T), log softmax(z_t / T), log_target=True,
reduction="batchmean")``; the hard-label term is ``cross_entropy(z_s, y)``.

Training
    Adam with learning rate ``lr``, ``epochs`` passes over the training data in a random order
    seeded by ``seed``, the student in training mode (dropout, batch statistics). The teacher's
    outputs are computed once before training (see the shared module). After every epoch the
    student is evaluated (eval mode) on ``val_data``: top-1 against the labels and agreement with
    the teacher. A tqdm bar per epoch (stderr) shows the running losses, then the val metrics.
    The epochs are the shared loop's (:mod:`onnx_compress.training.distill.loop`); this module
    gives it one batch's step.

Device
    ``device="auto"`` trains on CUDA when ``torch.cuda.is_available()``, else on the CPU; an ONNX
    teacher then runs on ONNX Runtime's CUDA provider when the installed onnxruntime has it. A
    PyTorch teacher runs where its weights are. The student is trained in place, and returned in
    eval mode on the device it came on.

Inputs
    A student (or PyTorch teacher) with one input gets the data's one array positionally; with
    several inputs, the arrays are passed as keyword arguments named like the data's arrays (the
    names of ``forward``'s parameters, as ``export_torch`` names them).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from onnx_compress.converters.torch.export import _eval_mode
from onnx_compress.data import Dataset, DataSource
from onnx_compress.errors import SettingError
from onnx_compress.optional import require
from onnx_compress.setting import overridden
from onnx_compress.training.distill import common
from onnx_compress.training.distill.common import DistillHistory, DistillSettings, TeacherInputs, Run
from onnx_compress.training.distill.loop import train_epochs

__all__ = ["distill", "distillation_loss", "resolve_device", "DEFAULTS"]

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> Any:
    """``auto`` -> CUDA when available, else CPU; anything else must be a usable torch device."""
    torch = require("torch", "distillation with PyTorch")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise SettingError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SettingError(f"device {device!r} requested, but torch sees no CUDA device; use 'auto' or 'cpu'")
    if resolved.type not in ("cpu", "cuda"):
        raise SettingError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return resolved


def distillation_loss(student_log_space: Any, teacher_soft: Any, labels: Any, *, temperature: float,
                      alpha: float) -> tuple[Any, Any, Any]:
    """``(L, T^2 * KL, CE)`` for one batch (``CE`` is ``None`` without labels).

    Args:
        student_log_space: the student's outputs in log space, ``(n, classes)``.
        teacher_soft: the teacher's softened log-probabilities ``log softmax(z_t / T)``.
        labels: int64 class ids ``(n,)`` or ``None`` (then ``alpha`` must be 0).
    """
    torch = require("torch", "distillation with PyTorch")
    functional = torch.nn.functional
    student_soft = functional.log_softmax(student_log_space / temperature, dim=1)
    kd = functional.kl_div(student_soft, teacher_soft, log_target=True, reduction="batchmean")
    kd = kd * (temperature * temperature)
    ce = None if labels is None else functional.cross_entropy(student_log_space, labels)
    total = (1.0 - alpha) * kd if ce is None else (1.0 - alpha) * kd + alpha * ce
    return total, kd, ce


def _forward(module: Any, batch: Mapping[str, Any]) -> Any:
    if len(batch) == 1:
        return module(next(iter(batch.values())))
    return module(**batch)


def _module_device(module: Any, torch: Any) -> Any:
    for tensor in [*module.parameters(), *module.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _torch_teacher(teacher: Any, torch: Any):
    device = _module_device(teacher, torch)

    def predict(feeds: dict[str, np.ndarray]) -> np.ndarray:
        batch = {name: torch.from_numpy(np.ascontiguousarray(arr)).to(device) for name, arr in feeds.items()}
        with torch.no_grad():
            out = _forward(teacher, batch)
        if not isinstance(out, torch.Tensor):
            raise SettingError(f"the teacher returned {type(out).__name__}; distillation needs one (batch, classes) tensor")
        return out.float().cpu().numpy()

    return predict


def _student_outputs(student: Any, data: Dataset, device: Any, batch_size: int, torch: Any) -> np.ndarray:
    """The student's outputs on ``data`` in eval mode (training flags restored afterwards)."""
    chunks = []
    with _eval_mode(student), torch.no_grad():
        for feeds in data.batches(batch_size):
            batch = {name: torch.from_numpy(arr).to(device) for name, arr in feeds.items()}
            out = _forward(student, batch)
            if not isinstance(out, torch.Tensor):
                raise SettingError(
                    f"the student returned {type(out).__name__}; distillation needs one (batch, classes) tensor"
                )
            chunks.append(out.float().cpu().numpy())
    return np.concatenate(chunks)


def _student_log_space(out: Any, kind: str, torch: Any) -> Any:
    if kind == "probs":
        return torch.log(out.clamp_min(float(np.finfo(np.float32).tiny)))
    return out


def _prepare(teacher: Any, student: Any, train: Dataset, val: Dataset | None, settings: DistillSettings,
             transform: Any, teacher_output: str | None, device: Any, torch: Any, progress: bool) -> Run:
    """Everything before training: probe the student, run the teacher once, check they fit."""
    # The student first (cheap): does it run on the data, and what does it output?
    probe = common.probe_student(
        lambda: _student_outputs(student, train.take(min(len(train), 32)), device, settings.batch_size, torch))
    # The teacher once, over the training and validation data.
    predict = common.pick_teacher(teacher, native=torch.nn.Module, run_native=lambda m: _torch_teacher(m, torch),
                                  accepted="a torch.nn.Module", framework="PyTorch", gpu=device.type != "cpu",
                                  output=teacher_output)
    with _eval_mode(teacher) if isinstance(teacher, torch.nn.Module) else contextlib.nullcontext():
        return common.start_run(predict, probe, train, val, transform, settings, device=str(device),
                                progress=progress)


#: the settings when none are given: :class:`DistillSettings`' own defaults are this trainer's
DEFAULTS = DistillSettings()


def distill(teacher: Any, student: Any, train_data: DataSource, settings: DistillSettings | None = None, *,
            val_data: DataSource | None = None, device: str = "auto", teacher_inputs: TeacherInputs = None,
            teacher_output: str | None = None, progress: bool = True, **overrides: Any) -> tuple[Any, DistillHistory]:
    """Train ``student`` to imitate ``teacher`` (and the labels); return it with its history.

    Loss: ``(1 - alpha) * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + alpha * CE(z_s, y)`` —
    the KL divergence between the softened teacher and student outputs, scaled by ``T^2``, plus
    the hard-label loss weighted by ``alpha`` (the KL term takes the remaining ``1 - alpha``).

    Args:
        teacher: a ``torch.nn.Module``, or an ONNX model (path, ``onnx_ir.Model`` or
            ``onnx.ModelProto``) run in ONNX Runtime, e.g. a Keras model exported to ONNX.
        student: the ``torch.nn.Module`` to train (in place), e.g. from ``narrow_student``.
        train_data: an ``.npz`` path, a :class:`~onnx_compress.data.Dataset`, a dict of arrays or
            an iterable of dicts; keyed by the student's input names, plus ``labels`` (needed
            when ``alpha > 0``).
        settings: the hyper-parameters, a
            :class:`~onnx_compress.training.distill.common.DistillSettings` (default :data:`DEFAULTS`);
            ``**overrides`` sets single ones on top of it (``epochs=3, lr=1e-3``): ``epochs``,
            ``temperature``, ``alpha``, ``lr``, ``batch_size``, ``seed``, ``teacher_outputs``
            (``auto`` detected, ``logits``, ``log_probs`` or ``probs``) and ``student_outputs``.
        val_data: held-out data evaluated after every epoch (top-1 with labels, agreement with
            the teacher in every case).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        teacher_inputs: how the teacher is fed from the student's data: ``None``, a layout
            conversion such as ``"NCHW->NHWC"`` (a teacher exported from Keras teaching an NCHW
            student) or a callable ``batch -> feeds``.
        teacher_output: the ONNX teacher's output to distill from (default: the first).
        progress: show a progress bar per epoch on stderr.

    Returns:
        ``(student, history)``: the trained student (eval mode, on the device it came on) and a
        :class:`~onnx_compress.training.distill.common.DistillHistory`.

    Raises:
        DataError: empty data, no labels while ``alpha > 0``, labels outside the classes, data
            that does not fit the teacher. SettingError: a bad setting, teacher and student with
            different numbers of outputs. All before the student's weights change.
    """
    settings = overridden(settings or DEFAULTS, overrides, where="distill()")
    train, val = common.prepare_data(train_data, val_data, alpha=settings.alpha)
    torch = require("torch", "distillation with PyTorch")
    if not isinstance(student, torch.nn.Module):
        raise SettingError(f"student must be a torch.nn.Module, got {type(student).__name__}")
    trainable = [p for p in student.parameters() if p.requires_grad]
    if not trainable:
        raise SettingError("the student has no trainable parameters")
    train_device = resolve_device(device)
    home_device = _module_device(student, torch)
    transform = common.teacher_feeds(teacher_inputs)

    student.to(train_device)
    try:
        run = _prepare(teacher, student, train, val, settings, transform, teacher_output, train_device, torch, progress)
    except BaseException:
        student.to(home_device)
        raise
    try:
        _train(student, train, val, torch.from_numpy(run.targets), run.teacher.val, settings, run.history,
               run.student_kind, train_device, torch, progress)
    finally:
        student.eval()
        student.to(home_device)
    return student, run.history


def _train(student: Any, train: Dataset, val: Dataset | None, targets: Any, raw_teacher_val: np.ndarray | None,
           settings: DistillSettings, history: DistillHistory, student_kind: str, device: Any, torch: Any,
           progress: bool) -> None:
    """Adam over the trainable parameters; the epochs are :func:`train_epochs`'s."""
    inputs = {name: torch.from_numpy(arr) for name, arr in train.inputs.items()}
    labels = None if train.labels is None else torch.from_numpy(train.labels.astype(np.int64))
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=settings.lr)

    def step(indices: np.ndarray) -> tuple[float, float, float | None]:
        index = torch.from_numpy(indices)
        batch = {name: arr[index].to(device) for name, arr in inputs.items()}
        out = _forward(student, batch)
        total, kd, ce = distillation_loss(
            _student_log_space(out, student_kind, torch),
            targets[index].to(device),
            None if labels is None else labels[index].to(device),
            temperature=settings.temperature,
            alpha=settings.alpha,
        )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return total.item(), kd.item(), None if ce is None else ce.item()

    train_epochs(step, len(train), settings, history, val=val, teacher_val=raw_teacher_val,
                 predict_val=None if val is None else (
                     lambda: _student_outputs(student, val, device, settings.batch_size, torch)),
                 start_epoch=student.train, progress=progress)
