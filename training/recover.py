"""Recovery training: distill a compressed ONNX graph back towards the model it was cut from.

The teacher is the original ONNX model, run by ONNX Runtime (its outputs on the training data
are computed once and cached when they fit in ``cache_mb``, else per batch). The student is the
compressed graph, executed by the bridge (:mod:`onnx_compress.training.bridge`): its weight
initializers are trained with AdamW (learning rate ``lr``, linear warm-up over the first 5 % of
the steps, then cosine decay to 0; gradients clipped to norm 1), and the trained values are
written back into the same graph by initializer name. The loss per output is chosen from the
output's kind (``losses.py``: KL at temperature ``T`` for class scores, cosine for embeddings,
masked cosine + relative MSE for per-token features, relative MSE otherwise), plus a hard-label
cross-entropy when the data has ``labels`` (``label_weight``), plus optional matching of
intermediate values that both graphs have (``match``).

Early stopping: the validation metric (top-1 with labels, else agreement with the teacher for
class scores; the mean cosine for embeddings and per-token outputs) and the validation loss (the
training objective, its hard-label term included when the validation data has labels) are
measured before training (epoch 0) and after every epoch; an epoch is better when its metric is
higher, or equal with a lower validation loss (top-1 on a small set ties often); training stops after ``patience`` epochs without improvement
and the best epoch's weights are kept. When no epoch beats epoch 0 the result says so and the
model is the input, unchanged (``improved=False``, both numbers in the result).

Bad input fails before training with one line: an op the bridge cannot train (named), data
whose arrays do not fit the student's or the teacher's inputs, a teacher without the student's
outputs. A loss that turns NaN/inf stops training, naming the epoch and step: with
:class:`~onnx_compress.errors.TrainingError` when no epoch had improved yet, else with the best
epoch so far (``stop_reason`` says why). Ctrl-C during training keeps the best epoch so far
(``interrupted=True``). The written model is checked in ONNX Runtime against the trained
module (parity) before it is returned. Inputs are never modified.

Quantization-aware training (``qat: on``, ``qat.py``) and training on several processes under
``torchrun`` (``distributed.py``) hook in here; both are described in their modules.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_compress.data import Dataset, DataSource, input_specs, load_data
from onnx_compress.errors import DataError, SettingError, TrainingError
from onnx_compress.model_io import load_model
from onnx_compress.optional import require
from onnx_compress.passes.base import CompressionResult, PassSettings
from onnx_compress.runtime.session import Runner
from onnx_compress.setting import setting
from onnx_compress.table import format_table

__all__ = ["RecoverySettings", "RecoveryResult", "recover", "EpochRecord", "DEVICES", "LOSS_KINDS"]

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
#: loss kinds (see losses.py); ``auto`` picks one per output
LOSS_KINDS = ("auto", "kl", "cosine", "token", "mse")


@dataclasses.dataclass(frozen=True)
class RecoverySettings(PassSettings):
    """How recovery trains (each field's help text is its declaration below)."""

    epochs: int = setting(10, range=">= 1", help="the most passes over the training data")
    lr: float = setting(1e-4, range="> 0", help="AdamW's peak learning rate (default 1e-4; small CNNs take 1e-3)")
    batch_size: int = setting(32, range=">= 1", help="samples per step")
    loss: str = setting("auto", choices=LOSS_KINDS, help="""
        the loss for every output: auto (per output, from its kind), kl, cosine, token or mse""")
    temperature: float = setting(2.0, range="> 0", help="the KL temperature for class scores")
    label_weight: float = setting(0.5, range="[0, 1]", help="""
        the weight of the hard-label cross-entropy when the data has labels (the distillation
        term gets 1 - label_weight); 0 ignores labels""")
    match: tuple[str, ...] = setting((), metavar="VALUE", help="""
        names of intermediate values present in both graphs to match as well (the outputs of the
        layers a pass changed), auto: every LayerNormalization output both graphs have, or layers:
        the output of every encoder layer of a transformer (prune_transformer's detection, any
        export form) that the teacher has under the same name, so after layers were removed each
        kept layer is matched to the teacher's same layer (TinyBERT / Minitron-style), per real token""")
    match_weight: float = setting(0.5, range=">= 0", cli=False,
                                  help="the weight of each matched intermediate value's loss")
    patience: int = setting(3, range=">= 1", help="epochs without a better validation metric before stopping")
    weight_decay: float = setting(0.0, range=">= 0", cli=False, help="AdamW's decoupled weight decay")
    device: str = setting("auto", choices=DEVICES, help="auto (CUDA when torch sees one), cpu or cuda")
    seed: int = setting(0, help="the shuffling and initialisation seed")
    cache_mb: float = setting(512.0, range="> 0", cli=False, help="""
        teacher outputs on the training data up to this size (MiB) are computed once""")
    max_minutes: float | None = setting(None, kind="float", range="> 0", help="""
        stop training after this many minutes (mid-epoch: the partial epoch is evaluated like a
        full one); default: no limit""")
    qat: bool = setting(False, help="""
        quantization-aware training: the weights and activations that the quantize step after this
        one makes int8 are fake-quantized while training, and the learned activation ranges go
        with the model to that step (static int8 without one); recipes may write on / off""")

    trim: bool = setting(True, help="""
        pad each batch only to its longest real sequence (data with an attention-mask input whose
        sequence axis is dynamic in both graphs; ignored otherwise); real-token outputs do not
        depend on the padding, so this changes cost, not the result""")
    bucket: bool = setting(True, cli=False, help="""
        with trim: batches of similar lengths (the shuffled data cut into windows of 50 batches,
        sorted by length inside a window, batched, the batches shuffled)""")
    steps_per_epoch: int | None = setting(None, kind="int", range=">= 1", help="""
        evaluate (and early-stop) every this many steps instead of once per pass over the data;
        the data streams on, reshuffled every pass (default: one pass)""")

    def __post_init__(self) -> None:
        if self.qat in ("on", "off"):  # a recipe's qat: on / off (YAML keeps them strings here)
            object.__setattr__(self, "qat", self.qat == "on")
        super().__post_init__()


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float | None
    val_loss: float
    metric: float
    metric_min: float | None
    seconds: float


@dataclasses.dataclass
class RecoveryResult(CompressionResult):
    """What recovery did: per-epoch history, the metric before and after, the best epoch."""

    metric_name: str = ""
    before: float = float("nan")
    after: float = float("nan")
    loss_before: float = float("nan")
    loss_after: float = float("nan")
    best_epoch: int = 0
    epochs_run: int = 0
    improved: bool = False
    interrupted: bool = False
    stopped_early: bool = False
    history: list[EpochRecord] = dataclasses.field(default_factory=list)
    losses: dict[str, str] = dataclasses.field(default_factory=dict)
    trainable_params: int = 0
    trainable_tensors: int = 0
    train_samples: int = 0
    device: str = "cpu"
    seconds: float = 0.0
    parity: float = 0.0
    #: with qat on: what was simulated (qat.QatPlan.describe) and the ranges handed on
    qat: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: why training ended early other than patience: "" | "nan" (the loss turned NaN/inf)
    stop_reason: str = ""
    world_size: int = 1
    #: optimizer steps taken, and the CPU time of this process (all threads) while training: on a
    #: shared machine, step time x the CPU share is what a quiet machine would take
    steps: int = 0
    train_cpu_seconds: float = 0.0

    def summary(self) -> str:
        if not self.improved:
            return (f"recovery did not improve validation {self.metric_name} ({self.before:.4g} before, best "
                    f"{self.after:.4g} after {self.epochs_run} epochs; loss {self.loss_before:.4g} before): "
                    "model unchanged")
        note = " (interrupted: best epoch so far)" if self.interrupted else ""
        if self.stop_reason:
            note += f" (stopped: {self.stop_reason}; best epoch so far)"
        return (f"validation {self.metric_name} {self.before:.4g} -> {self.after:.4g}, loss {self.loss_before:.4g} -> "
                f"{self.loss_after:.4g} (best epoch "
                f"{self.best_epoch}/{self.epochs_run}, {self.trainable_params:,} weights trained, "
                f"{self.seconds:.0f} s){note}")

    def table(self) -> str:
        """Per epoch: train loss, validation loss, the validation metric and its minimum, seconds."""
        rows = [[r.epoch, "-" if r.train_loss is None else f"{r.train_loss:.5g}", f"{r.val_loss:.5g}",
                 f"{r.metric:.5g}", "-" if r.metric_min is None else f"{r.metric_min:.4g}", f"{r.seconds:.1f}"]
                for r in self.history]
        return format_table(["epoch", "train loss", "val loss", f"val {self.metric_name}", "min", "s"], rows)


class _Diverged(Exception):
    """Internal: the loss turned NaN/inf after an epoch that improved (that epoch is handed back)."""


def _device(requested: str, torch: Any) -> Any:
    if requested == "cuda" and not torch.cuda.is_available():
        raise SettingError("device='cuda' but torch sees no CUDA device (use --device cpu or auto)")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def _check_outputs(student: ir.Model, teacher: ir.Model) -> list[str]:
    names = [str(v.name) for v in student.graph.outputs]
    teacher_names = {str(v.name) for v in teacher.graph.outputs}
    missing = [n for n in names if n not in teacher_names]
    if missing:
        raise DataError(f"the teacher has no output(s) {missing} of the student; teacher outputs: "
                        f"{sorted(teacher_names)} (the teacher must be the model the student was cut from)")
    return names


def _auto_match(student: ir.Model, teacher: ir.Model) -> list[str]:
    def norm_outputs(model: ir.Model) -> list[str]:
        return [str(node.outputs[0].name) for node in model.graph
                if node.op_type in ("LayerNormalization", "SkipLayerNormalization")]
    theirs = set(norm_outputs(teacher))
    return [name for name in norm_outputs(student) if name in theirs]


def _layer_outputs(student: ir.Model, teacher: ir.Model) -> list[str]:
    """The residual-stream output of every encoder layer of ``student`` that ``teacher`` has by name.

    Raises DataError when ``student`` has no encoder layer the detection reads. A student with layers
    but none to match (one layer left, whose output the detection finds only by comparing it with
    the layer before: the graph output stands for it) gives an empty list: the outputs alone are
    then matched."""
    from onnx_compress.passes.prune.transformer.detect import find_structure, prepare

    work = student.clone()
    prepare(work)
    layers = find_structure(work).layers
    if not layers:
        raise DataError("match 'layers': the student has no encoder layer the detection reads (not a transformer "
                        "encoder, or a form prune_transformer does not read); match values by name instead")
    names = [str(layer.output.name) for layer in layers if layer.output is not None]
    theirs = {str(v.name) for node in teacher.graph for v in node.outputs if v is not None}
    return [name for name in names if name in theirs]


def _teacher_with_outputs(teacher: ir.Model, extra: Sequence[str]) -> ir.Model:
    if not extra:
        return teacher
    copy_ = teacher.clone()
    values = {str(v.name): v for node in copy_.graph for v in node.outputs if v is not None}
    missing = [n for n in extra if n not in values]
    if missing:
        raise DataError(f"the teacher has no value(s) {missing} to match")
    existing = {str(v.name) for v in copy_.graph.outputs}
    for name in extra:
        if name not in existing:
            copy_.graph.outputs.append(values[name])
    return copy_


class _Sequences:
    """Dynamic sequence length: which inputs carry the (batch, sequence) axes of the attention mask,
    each sample's real length, and the batches of an epoch (length-bucketed when asked).

    Active only when there is a mask input and every graph declares that axis dynamic; otherwise
    every batch keeps the data's full length (``names`` empty)."""

    def __init__(self, models: Sequence[ir.Model], data: Dataset, mask_name: str | None, enabled: bool) -> None:
        self.names: list[str] = []
        self.full = 0
        if not enabled or mask_name is None:
            return
        rows, full = data.inputs[mask_name].shape
        names = [n for n, a in data.inputs.items() if a.ndim >= 2 and a.shape[:2] == (rows, full)]
        for model in models:
            for spec in input_specs(model):
                if spec.name in names and (spec.shape is None or len(spec.shape) < 2 or isinstance(spec.shape[1], int)):
                    logger.info("trim off: input %r has a fixed sequence length in the graph", spec.name)
                    return
        self.names, self.full, self.mask_name = names, full, mask_name

    def lengths(self, data: Dataset) -> np.ndarray | None:
        """The real length of every sample (last unmasked position + 1); None when trimming is off."""
        if not self.names:
            return None
        real = data.inputs[self.mask_name] != 0
        return np.where(real.any(1), real.shape[1] - np.argmax(real[:, ::-1], axis=1), 1)

    def feeds(self, data: Dataset, index: np.ndarray, names: Sequence[str], lengths: np.ndarray | None) -> dict[str, np.ndarray]:
        length = None if lengths is None else int(lengths[index].max())
        return {n: data.inputs[n][index][:, :length] if length is not None and n in self.names else data.inputs[n][index]
                for n in names}

    @staticmethod
    def epoch(count: int, batch: int, rng: np.random.Generator, lengths: np.ndarray | None, bucket: bool) -> list[np.ndarray]:
        """One shuffled pass over ``count`` samples in batches (see ``RecoverySettings.bucket``)."""
        order = rng.permutation(count)
        if lengths is None or not bucket:
            return [np.sort(order[s:s + batch]) for s in range(0, count, batch)]
        batches: list[np.ndarray] = []
        window = batch * 50
        for w in range(0, count, window):
            part = order[w:w + window]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches.extend(np.sort(part[s:s + batch]) for s in range(0, len(part), batch))
        return [batches[i] for i in rng.permutation(len(batches))]


class _Teacher:
    """The teacher's outputs per batch: kept for the whole set when they fit in ``cache_mb``
    (each sample is run once, when a batch first needs it), else run for every batch (on the
    batch's trimmed inputs). Per-token values (axis 1 follows the input's length) are cut to the
    batch's length when served from the cache."""

    def __init__(self, runner: Runner, names: Sequence[str], data: Dataset, batch: int, cache_mb: float,
                 sequences: _Sequences | None = None) -> None:
        self.runner, self.names, self.data = runner, list(names), data
        self.inputs = [spec.name for spec in runner.input_specs]
        self.sequences = sequences if sequences is not None and sequences.names else None
        self.lengths = self.sequences.lengths(data) if self.sequences else None
        probe = self._run(np.arange(min(len(data), 2)))
        self.per_token: set[str] = set()
        if self.sequences is not None and self.sequences.full > 1:
            short = {n: data.inputs[n][:2][:, :self.sequences.full - 1] if n in self.sequences.names else data.inputs[n][:2]
                     for n in self.inputs}
            for name, value in zip(self.names, self.runner.run(short, self.names)):
                if value.ndim >= 2 and probe[name].shape[1] != value.shape[1]:
                    self.per_token.add(name)
        per_sample = sum(a.nbytes for a in probe.values()) / max(len(probe[self.names[0]]), 1)
        self.cache: dict[str, np.ndarray] | None = None
        self.done = np.zeros(len(data), dtype=bool)
        if per_sample * len(data) <= cache_mb * 2**20:
            self.cache = {n: np.empty((len(data), *a.shape[1:]), a.dtype) for n, a in probe.items()}

    def _run(self, index: np.ndarray, trim: bool = False) -> dict[str, np.ndarray]:
        if trim and self.sequences is not None:
            feeds = self.sequences.feeds(self.data, index, self.inputs, self.lengths)
        else:
            feeds = {n: self.data.inputs[n][index] for n in self.inputs}
        return dict(zip(self.names, self.runner.run(feeds, self.names)))

    def __call__(self, index: np.ndarray) -> dict[str, np.ndarray]:
        if self.cache is None:
            return self._run(index, trim=True)
        missing = index[~self.done[index]]
        for start in range(0, len(missing), 256):
            part = missing[start:start + 256]
            for name, values in self._run(part).items():
                self.cache[name][part] = values
            self.done[part] = True
        length = None if self.lengths is None else int(self.lengths[index].max())
        return {n: a[index][:, :length] if n in self.per_token else a[index] for n, a in self.cache.items()}

    def all(self) -> dict[str, np.ndarray]:
        """The outputs on every sample at the data's full length (computed now where missing)."""
        lengths, self.lengths = self.lengths, None
        try:
            return self(np.arange(len(self.data)))
        finally:
            self.lengths = lengths


def recover(
    student: ir.Model | str | os.PathLike[str],
    teacher: ir.Model | str | os.PathLike[str],
    data: DataSource,
    val: DataSource,
    settings: RecoverySettings | None = None,
    *,
    progress: bool = True,
    qat_target: Any = None,
) -> tuple[ir.Model, RecoveryResult]:
    """Train ``student`` (a compressed graph) towards ``teacher`` (its original) on ``data``.

    Args:
        student: the compressed ONNX model (file or ``onnx_ir.Model``; never modified).
        teacher: the original ONNX model (its outputs must include the student's).
        data: training inputs (``.npz``, dict of arrays, Dataset); ``labels`` optional.
        val: held-out validation inputs for early stopping (not the training data).
        settings: see :class:`RecoverySettings`.
        progress: a tqdm bar per epoch on stderr.
        qat_target: with ``settings.qat``, the quantize step to simulate
            (:class:`~onnx_compress.training.qat.QatTarget`; None: static int8, default settings).

    Returns:
        ``(model, result)``: the same graph with trained weights (the input model when no epoch
        improved on validation) and what happened, epoch by epoch.
    """
    settings = settings or RecoverySettings()
    torch = require("torch", "recovery training")
    from onnx_compress.training.bridge import GraphModule, check_parity
    from onnx_compress.training.losses import OutputLoss, detect_loss, find_mask_input

    start_time = time.perf_counter()
    student_model = student if isinstance(student, ir.Model) else load_model(student)
    teacher_model = teacher if isinstance(teacher, ir.Model) else load_model(teacher)
    train = load_data(data)
    valid = load_data(val)
    if len(train) == len(valid) and all(np.array_equal(train.inputs[n], valid.inputs.get(n)) for n in train.names):
        raise DataError("the validation data is the training data; early stopping needs held-out data")
    for model, who in ((student_model, "student"), (teacher_model, "teacher")):
        specs = input_specs(model)
        train.check_against(specs, what=f"training data (for the {who})")
        valid.check_against(specs, what=f"validation data (for the {who})")
    outputs = _check_outputs(student_model, teacher_model)
    match = list(settings.match)
    if match == ["auto"]:
        match = _auto_match(student_model, teacher_model)
        logger.info("matching %d intermediate values: %s", len(match), match[:6])
    elif match == ["layers"]:
        match = _layer_outputs(student_model, teacher_model)
        if match:
            logger.info("matching the outputs of %d encoder layers: %s", len(match), match)
        else:
            logger.warning("match 'layers': no encoder layer output that the teacher has under the same name, "
                           "besides the graph outputs; matching the outputs only")

    from onnx_compress.training.distributed import from_env

    group = from_env(settings.device)  # torchrun: DistributedDataParallel (distributed.py)
    try:
        return _recover(student_model, teacher_model, train, valid, settings, progress and (group is None or group.main),
                        qat_target, group, outputs, match, start_time)
    finally:
        if group is not None:
            group.close()


def _recover(student_model: ir.Model, teacher_model: ir.Model, train: Dataset, valid: Dataset,
             settings: RecoverySettings, progress: bool, qat_target: Any, group: Any, outputs: list[str],
             match: list[str], start_time: float) -> tuple[ir.Model, RecoveryResult]:
    torch = require("torch", "recovery training")
    from onnx_compress.training.bridge import GraphModule, check_parity
    from onnx_compress.training.losses import OutputLoss, detect_loss, find_mask_input

    device = group.device if group is not None else _device(settings.device, torch)
    main = group is None or group.main
    torch.manual_seed(settings.seed)
    if settings.qat:
        from onnx_compress.training.qat import qat_module

        module = qat_module(student_model, qat_target, match, train, settings.batch_size, device)
    else:
        module = GraphModule(student_model, extra_outputs=match).to(device)
    if module.parameter_count == 0:
        raise TrainingError("the student has no trainable weights (no float Conv/Gemm/MatMul/norm initializers)")
    probe = {n: valid.inputs[n][:2] for n in module.input_names}
    module.check_runs(probe)  # an attribute form the bridge does not execute is refused before training

    runner = Runner(_teacher_with_outputs(teacher_model, match))
    wanted = [*outputs, *[m for m in match if m not in outputs]]
    mask_name = find_mask_input(train.inputs)
    sequences = _Sequences((student_model, teacher_model), train, mask_name, settings.trim)
    train_lengths, val_lengths = sequences.lengths(train), sequences.lengths(valid)
    teacher_train = _Teacher(runner, wanted, train, settings.batch_size, settings.cache_mb, sequences)
    teacher_val = _Teacher(runner, wanted, valid, settings.batch_size, float("inf"), sequences)
    val_mask = valid.inputs[mask_name] if mask_name else None
    losses: list[OutputLoss] = []
    val_reference = teacher_val.all()
    for name in wanted:
        reference = val_reference[name]
        if name in outputs:
            kind = detect_loss(reference, val_mask) if settings.loss == "auto" else settings.loss
            weight = 1.0
        else:
            kind = "token" if (val_mask is not None and reference.ndim == 3) else "mse"
            weight = settings.match_weight
        loss = OutputLoss(name, kind, weight, settings.temperature)  # type: ignore[arg-type]
        loss.prepare_teacher(reference)
        losses.append(loss)
    primary = losses[0]
    result = RecoveryResult(
        model=student_model, modified=False, metric_name="", losses={l.name: l.kind for l in losses},
        trainable_params=module.parameter_count, trainable_tensors=len(module.trainable_names),
        train_samples=len(train), device=str(device), world_size=1 if group is None else group.world)
    if settings.qat:
        result.qat = module.plan.describe()  # type: ignore[attr-defined]
    logger.info("recovery: %d weight tensors (%s values) trainable, losses %s, %d training samples, device %s",
                len(module.trainable_names), f"{module.parameter_count:,}", result.losses, len(train), device)

    labels_train = None if train.labels is None else torch.from_numpy(train.labels.astype(np.int64))
    use_labels = train.labels is not None and settings.label_weight > 0
    # the validation loss is the training objective: with its hard-label term where both sets have labels
    labels_val = torch.from_numpy(valid.labels.astype(np.int64)) if use_labels and valid.labels is not None else None

    def evaluate() -> tuple[float, float, float | None]:
        if group is None:
            return measure()
        # rank 0 measures, every process gets its numbers (and applies the same stopping rule)
        val_loss_, value_, worst_ = measure() if main else (0.0, 0.0, None)
        val_loss_, value_, worst_f = group.broadcast([val_loss_, value_, math.nan if worst_ is None else worst_])
        return val_loss_, value_, None if math.isnan(worst_f) else worst_f

    def measure() -> tuple[float, float, float | None]:
        module.eval()
        chunks: dict[str, list[np.ndarray]] = {l.name: [] for l in losses}
        total, count = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(valid), settings.batch_size):
                index = np.arange(s, min(s + settings.batch_size, len(valid)))
                out = module(**sequences.feeds(valid, index, module.input_names, val_lengths))
                target = teacher_val(index)
                mask = None if mask_name is None else torch.from_numpy(
                    sequences.feeds(valid, index, [mask_name], val_lengths)[mask_name]).to(device)
                labels = None if labels_val is None else labels_val[index].to(device)
                batch_loss = sum(l.weight * l.loss(out[l.name], torch.from_numpy(target[l.name]).to(device), mask,
                                                   labels if l is primary else None, settings.label_weight)
                                 for l in losses)
                total += batch_loss.item() * len(index)
                count += len(index)
                for l in losses:
                    value = out[l.name].cpu().numpy()
                    if l.name in teacher_val.per_token and value.shape[1] < sequences.full:  # trimmed: pad back
                        value = np.pad(value, [(0, 0), (0, sequences.full - value.shape[1])] + [(0, 0)] * (value.ndim - 2))
                    chunks[l.name].append(value)
        student_out = np.concatenate(chunks[primary.name])
        name, value, worst = primary.metric(student_out, val_reference[primary.name], val_mask, valid.labels)
        return total / max(count, 1), value, worst

    result.metric_name = primary.metric_name if valid.labels is None or primary.kind != "kl" else "top1"
    val_loss, before, before_min = evaluate()
    result.before, result.loss_before = before, val_loss
    result.history.append(EpochRecord(0, None, val_loss, before, before_min, 0.0))
    logger.info("epoch 0 (as compressed): val loss %.5g, val %s %.5g%s", val_loss, result.metric_name, before,
                f" (min {before_min:.4g})" if before_min is not None else "")
    best_value, best_loss, best_state, best_epoch = before, val_loss, None, 0

    params = list(module.params.values())
    trained = group.wrap(module) if group is not None else module  # the forward that trains
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    per_process = len(train) if group is None else len(group.shard(np.arange(len(train))))
    steps_per_epoch = settings.steps_per_epoch or math.ceil(per_process / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    warmup = max(1, int(0.05 * total_steps))
    if settings.max_minutes is not None:
        warmup = min(warmup, 100)  # a time-limited run may end long before 5 % of the nominal steps

    def lr_at(step: int) -> float:
        if step < warmup:
            return settings.lr * (step + 1) / warmup
        progress_ = (step - warmup) / max(1, total_steps - warmup)
        if deadline is not None:  # the decay follows whichever of steps and time is further along
            progress_ = max(progress_, (time.perf_counter() - train_start) / (deadline - train_start))
        return settings.lr * 0.5 * (1 + math.cos(math.pi * min(progress_, 1.0)))

    rng = np.random.default_rng(settings.seed)

    def batch_stream() -> Any:
        while True:
            if group is None:
                yield from _Sequences.epoch(len(train), settings.batch_size, rng, train_lengths, settings.bucket)
            else:  # the same permutation everywhere, one shard each (no length buckets across processes)
                order = group.shard(rng.permutation(len(train)))
                yield from (np.sort(order[s:s + settings.batch_size]) for s in range(0, len(order), settings.batch_size))

    stream = batch_stream()
    from tqdm.auto import tqdm

    step, stale = 0, 0
    train_start = time.perf_counter()
    cpu_start = time.process_time()
    deadline = None if settings.max_minutes is None else train_start + settings.max_minutes * 60
    out_of_time = False
    try:
        for epoch in range(1, settings.epochs + 1):
            epoch_start = time.perf_counter()
            module.train()
            running, seen = 0.0, 0
            bar = tqdm(total=steps_per_epoch * settings.batch_size, desc=f"recover epoch {epoch}/{settings.epochs}",
                       unit="sample", disable=None if progress else True)  # None: off when stderr is no terminal
            for _ in range(steps_per_epoch):
                index = next(stream)
                out = trained(**sequences.feeds(train, index, module.input_names, train_lengths))
                target = teacher_train(index)
                mask = None if mask_name is None else torch.from_numpy(
                    sequences.feeds(train, index, [mask_name], train_lengths)[mask_name]).to(device)
                labels = labels_train[index].to(device) if use_labels else None  # type: ignore[index]
                loss = sum(l.weight * l.loss(out[l.name], torch.from_numpy(target[l.name]).to(device), mask,
                                             labels if l is primary else None, settings.label_weight)
                           for l in losses)
                value = loss.item()
                late = deadline is not None and time.perf_counter() > deadline
                if group is not None:  # every process decides on the same numbers
                    total_, late_ = group.sum([value, float(late)])
                    value, late = total_ / group.world, late_ > 0
                if not math.isfinite(value):
                    message = (f"the recovery loss became {value} at epoch {epoch}, step {step + 1}; "
                               f"lower the learning rate (now {settings.lr:g})")
                    if best_state is None:
                        raise TrainingError(message + "; nothing was written")
                    raise _Diverged(message)  # an earlier epoch was better than the input: hand it back
                for param_group in optimizer.param_groups:
                    param_group["lr"] = lr_at(step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                step += 1
                running += value * len(index)
                seen += len(index)
                bar.update(len(index))
                bar.set_postfix(loss=f"{value:.4g}")
                if late:
                    out_of_time = True
                    break  # the epoch ends here; it is evaluated like a full one
            if group is not None and hasattr(module, "ranges"):
                group.average_(module.ranges)  # QAT: one set of activation ranges
            val_loss, value, worst = evaluate()
            # the bar stays as the epoch's line: mean training loss, validation loss and metric
            bar.set_postfix({"loss": f"{running / max(seen, 1):.4g}", "val_loss": f"{val_loss:.4g}",
                             f"val_{result.metric_name}": f"{value:.4g}"})
            bar.close()
            record = EpochRecord(epoch, running / max(seen, 1), val_loss, value, worst, time.perf_counter() - epoch_start)
            result.history.append(record)
            result.epochs_run = epoch
            # the metric decides; on a tie (top-1 on a small set) the lower validation loss does
            better = value > best_value or (value == best_value and val_loss < best_loss)
            if better:
                best_value, best_loss, best_epoch, stale = value, val_loss, epoch, 0
                best_state = {k: t.detach().clone() for k, t in module.state_dict().items()}  # weights (+ QAT ranges)
            else:
                stale += 1
            logger.info("epoch %d/%d: train loss %.5g, val loss %.5g, val %s %.5g%s%s (%.1f s)", epoch, settings.epochs,
                        record.train_loss, val_loss, result.metric_name, value,
                        f" (min {worst:.4g})" if worst is not None else "", " best" if better else "", record.seconds)
            if stale >= settings.patience:
                result.stopped_early = True
                logger.info("no better validation %s for %d epochs: stopping", result.metric_name, stale)
                break
            if out_of_time:
                logger.info("max_minutes (%g) reached in epoch %d: stopping", settings.max_minutes, epoch)
                break
    except _Diverged as diverged:
        result.stop_reason = str(diverged)
        logger.warning("%s: stopping, keeping the best epoch so far (%d)", diverged, best_epoch)
    except KeyboardInterrupt:
        result.interrupted = True
        logger.warning("interrupted during epoch %d: keeping the best epoch so far (%d)", result.epochs_run + 1, best_epoch)

    result.after, result.loss_after, result.best_epoch = best_value, best_loss, best_epoch
    result.steps, result.train_cpu_seconds = step, time.process_time() - cpu_start
    result.seconds = time.perf_counter() - start_time
    if best_state is None:
        result.improved = False
        return student_model, result
    module.load_state_dict(best_state)
    if not main:  # only rank 0 writes
        result.improved = True
        return student_model, result
    written = module.write_back()
    if settings.qat:
        from onnx_compress.training.qat import finish_qat

        finish_qat(module, written, result)  # the ranges into the model; parity on the float graph
    else:
        from onnx_compress.passes.quantize.ranges import METADATA_KEY

        written.metadata_props.pop(METADATA_KEY, None)  # ranges of an earlier QAT no longer fit the weights
    result.parity = check_parity(module, written, {n: valid.inputs[n][:8] for n in module.input_names})
    result.improved, result.modified, result.model = True, True, written
    return written, result
