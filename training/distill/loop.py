"""The epoch loop both distillation trainers run (framework-neutral; the frameworks are injected).

For ``epochs`` passes over the training data, in an order drawn from ``seed``
(:func:`~onnx_compress.training.distill.common.epoch_order`), :func:`train_epochs` calls the
trainer's ``step(indices)`` once per batch (forward, loss, backward, optimizer step in the
student's framework; it returns the batch's ``(L, T^2 * KL, CE)`` as floats, ``CE`` None without
labels), stops with a :class:`~onnx_compress.errors.SettingError` when the loss is not finite,
and records the sample-weighted mean losses of the epoch in the
:class:`~onnx_compress.training.distill.common.DistillHistory`. After every epoch, with validation
data, the student's outputs on it (``predict_val()``, in inference mode) are scored: agreement
with the teacher's top-1 and, with labels, top-1 accuracy. A tqdm bar per epoch (stderr) shows
the running losses, then the validation numbers.

There is no early stopping: the student after the last epoch is returned (the history says how
validation moved, epoch by epoch).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np

from onnx_compress.data import Dataset
from onnx_compress.errors import SettingError
from onnx_compress.training.distill.common import (
    DistillHistory,
    DistillSettings,
    agreement_percent,
    epoch_order,
    top1_percent,
)

__all__ = ["Step", "train_epochs"]

logger = logging.getLogger(__name__)

#: one optimizer step on the samples at ``indices``: their ``(L, T^2 * KL, CE or None)``
Step = Callable[[np.ndarray], tuple[float, float, float | None]]


def train_epochs(
    step: Step,
    n: int,
    settings: DistillSettings,
    history: DistillHistory,
    *,
    val: Dataset | None = None,
    teacher_val: np.ndarray | None = None,
    predict_val: Callable[[], np.ndarray] | None = None,
    start_epoch: Callable[[], object] | None = None,
    progress: bool = True,
) -> None:
    """Run ``settings.epochs`` epochs of ``step`` over ``n`` samples, validating after each.

    Args:
        step: one batch's training step (see the module docstring).
        n: the number of training samples.
        settings: epochs, batch size, seed (and lr / temperature, named when the loss diverges).
        history: filled in place, one entry per epoch.
        val, teacher_val, predict_val: the validation data, the teacher's raw outputs on it and
            the student's outputs on it (in inference mode); validation runs when all three are given.
        start_epoch: called before each epoch (a PyTorch student is put back into training mode).
        progress: show the bar.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(settings.seed)
    for epoch in range(settings.epochs):
        start = time.perf_counter()
        if start_epoch is not None:
            start_epoch()
        sums = {"loss": 0.0, "kd": 0.0, "ce": 0.0}
        bar = tqdm(total=n, desc=f"distill epoch {epoch + 1}/{settings.epochs}", unit="sample",
                   disable=not progress)
        for indices in epoch_order(n, settings.batch_size, rng):
            total, kd, ce = step(indices)
            values = {"loss": total, "kd": kd, "ce": 0.0 if ce is None else ce}
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
        if val is not None and teacher_val is not None and predict_val is not None:
            outputs = predict_val()
            history.val_agreement.append(agreement_percent(outputs, teacher_val))  # type: ignore[union-attr]
            postfix["val_agree"] = f"{history.val_agreement[-1]:.2f}%"  # type: ignore[index]
            if history.val_top1 is not None and val.labels is not None:
                history.val_top1.append(top1_percent(outputs, val.labels))
                postfix["val_top1"] = f"{history.val_top1[-1]:.2f}%"
        history.epoch_seconds.append(time.perf_counter() - start)
        bar.set_postfix(postfix)
        bar.close()
        logger.info("epoch %d/%d: %s", epoch + 1, settings.epochs, postfix)
