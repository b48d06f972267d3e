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
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from onnx_compress.training.distill.common import (
    DistillHistory,
    DistillSettings,
    OnnxTeacher,
    TeacherInputs,
    agreement_percent,
    check_class_outputs,
    check_labels,
    collect_outputs,
    epoch_order,
    is_onnx_model,
    new_history,
    prepare_data,
    resolve_output_kind,
    soft_targets,
    teacher_feeds,
    to_log_space,
    top1_percent,
)
from onnx_compress.converters.torch.export import _eval_mode
from onnx_compress.data import Dataset, DataSource
from onnx_compress.errors import SettingError, one_line
from onnx_compress.optional import require

__all__ = ["distill", "distillation_loss", "resolve_device"]

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
             transform: Any, teacher_output: str | None, device: Any, torch: Any,
             progress: bool) -> tuple[str, np.ndarray, np.ndarray | None, str]:
    """Everything before training: probe the student, run the teacher once, check they fit."""
    # The student first (cheap): does it run on the data, and what does it output?
    try:
        probe = check_class_outputs(
            _student_outputs(student, train.take(min(len(train), 32)), device, settings.batch_size, torch), "student")
    except SettingError:
        raise
    except Exception as exc:
        raise SettingError(
            f"the student failed on the training data ({type(exc).__name__}: {one_line(exc)}); "
            "check that the data is keyed and shaped for the student"
        ) from exc
    student_kind = resolve_output_kind(probe, settings.student_outputs, who="student")

    # The teacher once, over the training and validation data.
    if is_onnx_model(teacher):
        predict = OnnxTeacher(teacher, provider="cpu" if device.type == "cpu" else "auto", output=teacher_output)
    elif isinstance(teacher, torch.nn.Module):
        if teacher_output is not None:
            raise SettingError("teacher_output names an ONNX output; a PyTorch teacher returns one tensor")
        predict = _torch_teacher(teacher, torch)
    else:
        raise SettingError(
            f"teacher must be a torch.nn.Module or an ONNX model (path or onnx_ir.Model), got {type(teacher).__name__}"
        )
    with _eval_mode(teacher) if isinstance(teacher, torch.nn.Module) else contextlib.nullcontext():
        raw_teacher = collect_outputs(predict, train, transform, batch_size=settings.batch_size,
                                      who="teacher", progress=progress)
        raw_teacher_val = None if val is None else collect_outputs(
            predict, val, transform, batch_size=settings.batch_size, who="teacher", progress=progress)
    classes = raw_teacher.shape[1]
    if probe.shape[1] != classes:
        raise SettingError(
            f"the teacher has {classes} outputs per sample, the student {probe.shape[1]}: "
            "distillation needs the same classes in the same order"
        )
    check_labels(train, classes, "train_data")
    if val is not None:
        check_labels(val, classes, "val_data")
    teacher_kind = resolve_output_kind(raw_teacher, settings.teacher_outputs, who="teacher")
    return student_kind, raw_teacher, raw_teacher_val, teacher_kind


def distill(
    teacher: Any,
    student: Any,
    train_data: DataSource,
    *,
    epochs: int = 12,
    temperature: float = 4.0,
    alpha: float = 0.5,
    lr: float = 2e-3,
    batch_size: int = 32,
    val_data: DataSource | None = None,
    device: str = "auto",
    teacher_inputs: TeacherInputs = None,
    teacher_output: str | None = None,
    teacher_outputs: str = "auto",
    student_outputs: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> tuple[Any, DistillHistory]:
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
        epochs, temperature, alpha, lr, batch_size, seed: see
            :class:`~onnx_compress.training.distill.common.DistillSettings`.
        val_data: held-out data evaluated after every epoch (top-1 with labels, agreement with
            the teacher in every case).
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        teacher_inputs: how the teacher is fed from the student's data: ``None``, a layout
            conversion such as ``"NCHW->NHWC"`` (a teacher exported from Keras teaching an NCHW
            student) or a callable ``batch -> feeds``.
        teacher_output: the ONNX teacher's output to distill from (default: the first).
        teacher_outputs, student_outputs: ``auto`` (detected), ``logits``, ``log_probs`` or
            ``probs``.
        progress: show a progress bar per epoch on stderr.

    Returns:
        ``(student, history)``: the trained student (eval mode, on the device it came on) and a
        :class:`~onnx_compress.training.distill.common.DistillHistory`.

    Raises:
        DataError: empty data, no labels while ``alpha > 0``, labels outside the classes, data
            that does not fit the teacher. SettingError: a bad setting, teacher and student with
            different numbers of outputs. All before the student's weights change.
    """
    settings = DistillSettings(epochs=epochs, temperature=temperature, alpha=alpha, lr=lr,
                               batch_size=batch_size, seed=seed, teacher_outputs=teacher_outputs,
                               student_outputs=student_outputs)
    train, val = prepare_data(train_data, val_data, alpha=settings.alpha)
    torch = require("torch", "distillation with PyTorch")
    if not isinstance(student, torch.nn.Module):
        raise SettingError(f"student must be a torch.nn.Module, got {type(student).__name__}")
    trainable = [p for p in student.parameters() if p.requires_grad]
    if not trainable:
        raise SettingError("the student has no trainable parameters")
    train_device = resolve_device(device)
    home_device = _module_device(student, torch)
    transform = teacher_feeds(teacher_inputs)

    student.to(train_device)
    try:
        student_kind, raw_teacher, raw_teacher_val, teacher_kind = _prepare(
            teacher, student, train, val, settings, transform, teacher_output, train_device, torch, progress)
    except BaseException:
        student.to(home_device)
        raise

    targets = torch.from_numpy(soft_targets(to_log_space(raw_teacher, teacher_kind), settings.temperature))
    teacher_val_top1 = None
    if raw_teacher_val is not None and val is not None and val.labels is not None:
        teacher_val_top1 = top1_percent(raw_teacher_val, val.labels)
    history = new_history(settings, teacher_kind=teacher_kind, student_kind=student_kind,
                          device=str(train_device), has_labels=train.labels is not None, val=val,
                          teacher_val_top1=teacher_val_top1)
    logger.info("distilling: teacher outputs %s, student outputs %s, %d samples, device %s",
                teacher_kind, student_kind, len(train), train_device)
    try:
        _train(student, train, val, targets, raw_teacher_val, settings, history, student_kind,
               train_device, torch, progress)
    finally:
        student.eval()
        student.to(home_device)
    return student, history


def _train(student: Any, train: Dataset, val: Dataset | None, targets: Any, raw_teacher_val: np.ndarray | None,
           settings: DistillSettings, history: DistillHistory, student_kind: str, device: Any, torch: Any,
           progress: bool) -> None:
    from tqdm.auto import tqdm

    inputs = {name: torch.from_numpy(arr) for name, arr in train.inputs.items()}
    labels = None if train.labels is None else torch.from_numpy(train.labels.astype(np.int64))
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=settings.lr)
    rng = np.random.default_rng(settings.seed)
    n = len(train)
    for epoch in range(settings.epochs):
        start = time.perf_counter()
        student.train()
        sums = {"loss": 0.0, "kd": 0.0, "ce": 0.0}
        bar = tqdm(total=n, desc=f"distill epoch {epoch + 1}/{settings.epochs}", unit="sample",
                   disable=not progress)
        for indices in epoch_order(n, settings.batch_size, rng):
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
            values = {"loss": total.item(), "kd": kd.item(), "ce": 0.0 if ce is None else ce.item()}
            if not math.isfinite(values["loss"]):
                raise SettingError(
                    f"distillation diverged in epoch {epoch + 1} (loss {values['loss']}); lower lr "
                    f"(now {settings.lr}) or the temperature (now {settings.temperature})"
                )
            for key, value in values.items():
                sums[key] += value * len(indices)
            bar.update(len(indices))
            bar.set_postfix(loss=f"{values['loss']:.4f}", kd=f"{values['kd']:.4f}",
                            ce=f"{values['ce']:.4f}" if ce is not None else "-")
        history.loss.append(sums["loss"] / n)
        history.distill_loss.append(sums["kd"] / n)
        if history.label_loss is not None:
            history.label_loss.append(sums["ce"] / n)
        postfix = {"loss": f"{history.loss[-1]:.4f}"}
        if val is not None and raw_teacher_val is not None:
            outputs = _student_outputs(student, val, device, settings.batch_size, torch)
            history.val_agreement.append(agreement_percent(outputs, raw_teacher_val))  # type: ignore[union-attr]
            postfix["val_agree"] = f"{history.val_agreement[-1]:.2f}%"  # type: ignore[index]
            if history.val_top1 is not None and val.labels is not None:
                history.val_top1.append(top1_percent(outputs, val.labels))
                postfix["val_top1"] = f"{history.val_top1[-1]:.2f}%"
        history.epoch_seconds.append(time.perf_counter() - start)
        bar.set_postfix(postfix)
        bar.close()
        logger.info("epoch %d/%d: %s", epoch + 1, settings.epochs, postfix)
