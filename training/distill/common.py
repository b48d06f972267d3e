"""Knowledge distillation: what the PyTorch and the Keras trainers share. Imports no framework.

The epoch loop itself is :mod:`onnx_compress.training.distill.loop`; everything before it (the
settings and history, output kinds, the teacher run once, the checks) is here.

The loss
    For a batch of ``n`` samples, with the student's outputs ``s`` and the teacher's outputs
    ``t`` brought to *log space* ``z_s``, ``z_t`` (below), labels ``y``, temperature ``T > 0``
    and ``alpha`` in [0, 1]::

        L = (1 - alpha) * T^2 * KL( softmax(z_t / T) || softmax(z_s / T) )
            + alpha * CE( softmax(z_s), y )

    KL is summed over the classes and averaged over the samples; CE is the mean negative
    log-likelihood of the label at temperature 1. This is Hinton et al.'s (2015) formulation: the
    ``T^2`` factor keeps the soft targets' gradients the same size whatever ``T``, and the issue's
    "KL (scaled by T^2) plus the hard-label loss weighted by alpha" with the KL term weighted by
    ``1 - alpha`` so that the two weights sum to one. ``alpha = 0`` is pure distillation (no
    labels needed); ``alpha = 1`` is plain training on the labels (the teacher is then only used
    to report agreement), which is how the samples train their "labels alone" baseline with the
    very same loop.

Log space: logits, log-probabilities and probabilities
    Softening divides *logits* by ``T``. A model's output may instead be log-probabilities (the
    PyTorch seed ends in ``log_softmax``) or probabilities (the Keras seed ends in ``softmax``).
    Neither may be divided by ``T`` as they are: ``softmax(p / T)`` of probabilities is nearly
    uniform whatever the model says. They are brought to log space first:

    - logits ``z``: used as they are;
    - log-probabilities ``z - logsumexp(z)``: used as they are. They differ from the logits by one
      constant per row, and ``softmax((z - c) / T) = softmax(z / T)``: the soft targets, the KL
      term and the cross-entropy are exactly those of the logits;
    - probabilities ``p``: ``log(max(p, tiny))`` with ``tiny`` the smallest normal float32
      (1.2e-38): log-probabilities again, exact except for classes whose probability underflowed
      to 0 in float32 (a logit gap above ~87), which are clipped there. For a Keras student whose
      softmax is a layer activation, the trainer uses the pre-softmax logits that Keras attaches
      to the output (the mechanism Keras' own cross-entropy uses), so nothing is clipped.

    ``"auto"`` detects the kind from the outputs themselves (the teacher's over all the training
    data, the student's over a first batch before training): rows that are non-negative and sum to
    1 are probabilities; rows that are <= 0 whose exponentials sum to 1 are log-probabilities;
    anything else is logits. The two conditions exclude each other (probabilities >= 0 and
    log-probabilities <= 0 would both have to be all zeros). Give the kind explicitly
    (``"logits"``, ``"log_probs"``, ``"probs"``) to skip the detection; an explicit kind the
    outputs cannot be (negative "probabilities", positive "log-probabilities") is refused.

The teacher's outputs are computed once
    The teacher is frozen and the training data is fixed (no augmentation), so its outputs are
    computed once, in inference mode, over the training data (and the validation data) before
    training starts, batch by batch, and kept as one ``(n, classes)`` float32 array. For an ONNX
    teacher this runs in ONNX Runtime (:class:`onnx_compress.runtime.Runner`), which is how a
    model exported from Keras teaches a PyTorch student and the other way round.

Teacher inputs (``teacher_inputs``)
    The teacher is fed from the student's data. It may need another layout (the Keras seed takes
    NHWC images, the PyTorch seed NCHW) or other names:

    - ``None``: the data's arrays as they are; when the teacher (ONNX) has one input and the data
      one array, the array is fed to it whatever its name;
    - ``"NCHW->NHWC"`` (any two spellings of the same distinct letters): every data array whose
      rank is the number of letters is transposed accordingly, e.g. ``"NHWC->NCHW"``,
      ``"NCW->NWC"``;
    - a callable ``fn(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` for anything else
      (it receives batches of the training and validation data, in order).

    A teacher whose inputs do not fit is refused before anything runs; when a layout
    transposition would make them fit, the message says which ``teacher_inputs`` to pass.

Bad input is refused before training starts
    Empty data, labels missing while ``alpha > 0``, labels outside the teacher's classes, a teacher
    and a student with different numbers of outputs, outputs that are not ``(batch, classes)``:
    each raises a :class:`~onnx_compress.errors.DataError` or
    :class:`~onnx_compress.errors.SettingError` before the student's weights change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import onnx
import onnx_ir as ir

from onnx_compress.data import LABELS_KEY, Dataset, DataSource, InputSpec, load_data
from onnx_compress.errors import DataError, SettingError, one_line
from onnx_compress.setting import check_fields, setting
from onnx_compress.stats import ModelStats
from onnx_compress.table import format_table, human_bytes, human_count

__all__ = [
    "OutputKind",
    "OUTPUT_KINDS",
    "PROB_FLOOR",
    "TeacherInputs",
    "DistillSettings",
    "DistillHistory",
    "detect_output_kind",
    "resolve_output_kind",
    "to_log_space",
    "log_softmax",
    "soft_targets",
    "prepare_data",
    "teacher_feeds",
    "is_onnx_model",
    "OnnxTeacher",
    "pick_teacher",
    "collect_outputs",
    "check_class_outputs",
    "check_labels",
    "epoch_order",
    "top1_percent",
    "agreement_percent",
    "probe_student",
    "TeacherOutputs",
    "run_teacher",
    "start_history",
    "Run",
    "start_run",
]

logger = logging.getLogger(__name__)

OutputKind = Literal["logits", "log_probs", "probs"]
OUTPUT_KINDS: tuple[str, ...] = ("logits", "log_probs", "probs")
#: probabilities are clipped to this before the log (the smallest normal float32)
PROB_FLOOR = float(np.finfo(np.float32).tiny)
#: how far a row's sum (probabilities) or logsumexp (log-probabilities) may be from 1 / 0
_SUM_TOLERANCE = 1e-3

Batch = dict[str, np.ndarray]
TeacherInputs = Union[str, Callable[[Batch], Mapping[str, np.ndarray]], None]


# --------------------------------------------------------------------------- settings, history


@dataclasses.dataclass(frozen=True)
class DistillSettings:
    """The hyper-parameters of one distillation run, declared and validated with ``setting``.

    The defaults (12 epochs, lr 2e-3, batch 32) are what the half-width seed-CNN student needs on
    the 1,168 digits training images: with the earlier 1e-3 and batch 64, six epochs are 110
    Adam steps and the student stopped at 90 % validation top-1 (teacher 95 %); at 2e-3 and
    batch 32 six epochs reach the teacher's 95 %, twelve 96.4 % test top-1 (PyTorch, one
    teacher, seed 0; ``python samples/distill_torch.py`` measures more seeds).
    """

    epochs: int = setting(12, range=">= 1", help="passes over the training data")
    temperature: float = setting(4.0, range="> 0", help="""
        the softening temperature T; 1 leaves the distributions as they are, larger softens them""")
    alpha: float = setting(0.5, range="[0, 1]", help="""
        weight of the hard-label cross-entropy; the KL term gets 1 - alpha (0: pure distillation,
        no labels needed)""")
    lr: float = setting(2e-3, range="> 0", help="Adam's learning rate")
    batch_size: int = setting(32, range=">= 1", help="samples per optimizer step")
    seed: int = setting(0, help="seeds the order in which samples are visited (the student's weights are the caller's)")
    teacher_outputs: str = setting("auto", choices=("auto", *OUTPUT_KINDS),
                                   help="what the teacher outputs (default auto: detected from the values)")
    student_outputs: str = setting("auto", choices=("auto", *OUTPUT_KINDS),
                                   help="what the student outputs (default auto: detected from the values)")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclasses.dataclass
class DistillHistory:
    """What happened in each epoch of a distillation run.

    Attributes:
        loss: mean total loss ``L`` per epoch (over the epoch's samples, student in training mode).
        distill_loss: mean ``T^2 * KL`` per epoch, before the ``1 - alpha`` weight.
        label_loss: mean hard-label cross-entropy per epoch, before the ``alpha`` weight;
            ``None`` when the training data has no labels.
        val_top1: the student's top-1 accuracy (%) on the validation labels after each epoch;
            ``None`` without validation data or labels.
        val_agreement: the share (%) of validation samples on which the student's top-1 class is
            the teacher's, after each epoch; ``None`` without validation data.
        teacher_val_top1: the teacher's top-1 accuracy (%) on the validation labels.
        teacher_outputs, student_outputs: the output kinds used (detected or given).
        device: where the student was trained (``cpu``, ``cuda:0``, ``/GPU:0``...).
        epoch_seconds: wall time of each epoch (training and validation).
        settings: the hyper-parameters of the run.
    """

    loss: list[float]
    distill_loss: list[float]
    label_loss: list[float] | None
    val_top1: list[float] | None
    val_agreement: list[float] | None
    teacher_val_top1: float | None
    teacher_outputs: str
    student_outputs: str
    device: str
    epoch_seconds: list[float]
    settings: DistillSettings

    @property
    def val_metric_name(self) -> str | None:
        """``top1`` with validation labels, ``agreement`` without, ``None`` without val data."""
        if self.val_top1 is not None:
            return "top1"
        return "agreement" if self.val_agreement is not None else None

    @property
    def val_metric(self) -> list[float] | None:
        """The validation metric per epoch: top-1 (%) with labels, else agreement (%)."""
        return self.val_top1 if self.val_top1 is not None else self.val_agreement

    def as_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["val_metric_name"] = self.val_metric_name
        values["val_metric"] = self.val_metric
        return values

    def table(self) -> str:
        """Per epoch: total loss, ``T^2 * KL``, cross-entropy, validation top-1 and agreement (%)."""

        def value(values: list[float] | None, epoch: int, digits: int) -> str:
            return "-" if values is None else f"{values[epoch]:.{digits}f}"

        rows = [[epoch + 1, f"{self.loss[epoch]:.4f}", f"{self.distill_loss[epoch]:.4f}",
                 value(self.label_loss, epoch, 4), value(self.val_top1, epoch, 2), value(self.val_agreement, epoch, 2)]
                for epoch in range(len(self.loss))]
        return format_table(["epoch", "loss", "T^2*KL", "CE", "val top-1 %", "val agreement %"], rows)

    def summary_table(self, teacher: ModelStats, student: ModelStats, parity_error: float, output: object) -> str:
        """The run in rows: output kinds, device, the teacher's validation top-1, parameters / MACs /
        size of teacher and student, the exported student's parity error and where it was written."""
        top1 = self.teacher_val_top1
        rows = [["teacher outputs / student outputs", f"{self.teacher_outputs} / {self.student_outputs}"],
                ["device", self.device], ["teacher val top-1 (%)", "-" if top1 is None else f"{top1:.2f}"],
                *([f"{what} teacher -> student", f"{show(getattr(teacher, key))} -> {show(getattr(student, key))}"]
                  for what, key, show in (("params", "params", human_count), ("MACs", "macs", human_count),
                                          ("size", "size_bytes", human_bytes))),
                ["export parity (max abs error)", f"{parity_error:.3g}"], ["wrote", str(output)]]
        return format_table(["distill", ""], rows, numeric=False)


def new_history(settings: DistillSettings, *, teacher_kind: str, student_kind: str, device: str,
                has_labels: bool, val: Dataset | None, teacher_val_top1: float | None) -> DistillHistory:
    """An empty history with the lists that this run will fill."""
    return DistillHistory(
        loss=[],
        distill_loss=[],
        label_loss=[] if has_labels else None,
        val_top1=[] if val is not None and val.labels is not None else None,
        val_agreement=[] if val is not None else None,
        teacher_val_top1=teacher_val_top1,
        teacher_outputs=teacher_kind,
        student_outputs=student_kind,
        device=device,
        epoch_seconds=[],
        settings=settings,
    )


# --------------------------------------------------------------------------- output kinds


def detect_output_kind(outputs: np.ndarray) -> OutputKind:
    """``probs``, ``log_probs`` or ``logits``, from the values of ``(n, classes)`` outputs."""
    values = np.asarray(outputs, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] < 2 or not np.isfinite(values).all():
        return "logits"
    if values.min() >= -1e-6 and values.max() <= 1.0 + 1e-6:
        if np.all(np.abs(values.sum(axis=1) - 1.0) <= _SUM_TOLERANCE):
            return "probs"
    if values.max() <= 1e-6:
        if np.all(np.abs(np.exp(values).sum(axis=1) - 1.0) <= _SUM_TOLERANCE):
            return "log_probs"
    return "logits"


def resolve_output_kind(outputs: np.ndarray, declared: str, *, who: str) -> OutputKind:
    """The kind to use: detected for ``auto``, else the declared one if the outputs allow it."""
    if declared == "auto":
        kind = detect_output_kind(outputs)
        logger.info("%s outputs look like %s", who, kind)
        return kind
    values = np.asarray(outputs)
    if declared == "probs" and values.size and (values.min() < -1e-6 or values.max() > 1.0 + 1e-6):
        raise SettingError(
            f"{who}_outputs='probs', but the {who}'s outputs range over [{values.min():.3g}, "
            f"{values.max():.3g}], which probabilities cannot; use 'logits', 'log_probs' or 'auto'"
        )
    if declared == "log_probs" and values.size and values.max() > 1e-6:
        raise SettingError(
            f"{who}_outputs='log_probs', but the {who}'s outputs reach {values.max():.3g} > 0, which "
            "log-probabilities cannot; use 'logits', 'probs' or 'auto'"
        )
    return declared  # type: ignore[return-value]


def to_log_space(outputs: np.ndarray, kind: str) -> np.ndarray:
    """Logits or log-probabilities as they are; probabilities as ``log(max(p, PROB_FLOOR))``."""
    values = np.asarray(outputs, dtype=np.float32)
    if kind == "probs":
        return np.log(np.maximum(values, PROB_FLOOR)).astype(np.float32)
    return values


def log_softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``log(softmax(z / T))`` along the last axis, computed stably in float64."""
    scaled = np.asarray(z, dtype=np.float64) / temperature
    shifted = scaled - scaled.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def soft_targets(teacher_log_space: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's softened log-probabilities ``log softmax(z_t / T)``, float32."""
    return log_softmax(teacher_log_space, temperature).astype(np.float32)


# --------------------------------------------------------------------------- data


def prepare_data(
    train_data: DataSource, val_data: DataSource | None, *, alpha: float
) -> tuple[Dataset, Dataset | None]:
    """Load the training and validation data; refuse empty data and missing labels."""
    train = _load(train_data, "train_data")
    if alpha > 0 and train.labels is None:
        raise DataError(
            f"train_data has no '{LABELS_KEY}' array, but alpha={alpha} weights the hard-label loss; "
            "add labels to the data or set alpha=0 (pure distillation from the teacher)"
        )
    val = None if val_data is None else _load(val_data, "val_data")
    if val is not None:
        if sorted(val.names) != sorted(train.names):
            raise DataError(
                f"val_data has arrays {sorted(val.names)}, train_data {sorted(train.names)}: they must "
                "feed the same model inputs"
            )
        for name, arr in train.inputs.items():
            other = val.inputs[name]
            if other.shape[1:] != arr.shape[1:] or other.dtype != arr.dtype:
                raise DataError(
                    f"val_data array {name!r} is {other.dtype}{list(other.shape)}, train_data's is "
                    f"{arr.dtype}{list(arr.shape)}: all but the first axis must agree"
                )
        val = Dataset(inputs={name: val.inputs[name] for name in train.names}, labels=val.labels)
    return train, val


def _load(source: DataSource, what: str) -> Dataset:
    try:
        return load_data(source)
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{what} must be an .npz path, a Dataset, a dict of arrays or an iterable of such dicts "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def check_labels(data: Dataset, num_classes: int, what: str) -> None:
    """Labels must be class ids of the models' outputs: 0 <= y < classes."""
    if data.labels is None:
        return
    low, high = int(data.labels.min()), int(data.labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"{what} labels range over [{low}, {high}], but the teacher has {num_classes} outputs "
            f"(classes 0..{num_classes - 1})"
        )


def epoch_order(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """One epoch's sample indices in batches, in a fresh random order."""
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def top1_percent(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(outputs).argmax(axis=1) == labels).mean() * 100.0)


def agreement_percent(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.asarray(a).argmax(axis=1) == np.asarray(b).argmax(axis=1)).mean() * 100.0)


def check_class_outputs(outputs: Any, who: str) -> np.ndarray:
    """Outputs must be one ``(batch, classes)`` float array with at least 2 classes."""
    values = np.asarray(outputs)
    if values.ndim != 2 or values.shape[1] < 2:
        raise SettingError(
            f"the {who} must output one (batch, classes) array with >= 2 classes for distillation; "
            f"it gave shape {values.shape}"
        )
    if not np.issubdtype(values.dtype, np.floating):
        raise SettingError(f"the {who} must output floating-point scores, got dtype {values.dtype}")
    return values


# --------------------------------------------------------------------------- teacher inputs


_LAYOUT = re.compile(r"^\s*([A-Za-z]+)\s*->\s*([A-Za-z]+)\s*$")
_STANDARD_LAYOUTS = (("NCW", "NWC"), ("NCHW", "NHWC"), ("NCDHW", "NDHWC"))


def _layout_permutation(spec: str) -> tuple[int, tuple[int, ...]]:
    match = _LAYOUT.match(spec)
    if match is None:
        raise SettingError(
            f"teacher_inputs {spec!r} is not a layout conversion like 'NCHW->NHWC' (or pass a callable)"
        )
    source, target = match.group(1).upper(), match.group(2).upper()
    if len(set(source)) != len(source) or sorted(source) != sorted(target):
        raise SettingError(
            f"teacher_inputs {spec!r}: both sides must spell the same distinct axis letters, e.g. 'NCHW->NHWC'"
        )
    return len(source), tuple(source.index(letter) for letter in target)


def teacher_feeds(teacher_inputs: TeacherInputs) -> Callable[[Batch], Batch]:
    """The function that turns a batch of the student's data into the teacher's inputs."""
    if teacher_inputs is None:
        return lambda batch: dict(batch)
    if callable(teacher_inputs):
        user_fn = teacher_inputs

        def call(batch: Batch) -> Batch:
            result = user_fn(dict(batch))
            if not isinstance(result, Mapping):
                raise SettingError(
                    f"teacher_inputs callable must return a dict of arrays, got {type(result).__name__}"
                )
            return {str(k): np.asarray(v) for k, v in result.items()}

        return call
    if isinstance(teacher_inputs, str):
        rank, perm = _layout_permutation(teacher_inputs)

        def transpose(batch: Batch) -> Batch:
            if not any(arr.ndim == rank for arr in batch.values()):
                raise SettingError(
                    f"teacher_inputs {teacher_inputs!r} transposes rank-{rank} arrays, but the data's "
                    f"arrays have shapes {[arr.shape for arr in batch.values()]}"
                )
            return {
                name: np.ascontiguousarray(arr.transpose(perm)) if arr.ndim == rank else arr
                for name, arr in batch.items()
            }

        return transpose
    raise SettingError(
        f"teacher_inputs must be None, a layout like 'NCHW->NHWC' or a callable, got {type(teacher_inputs).__name__}"
    )


def layout_hint(specs: Sequence[InputSpec], batch: Batch) -> str:
    """A hint naming ``teacher_inputs='NCHW->NHWC'`` (or another standard layout change) when that
    transposition, and not the data as it is, fits the teacher's input shape; else ``""``."""

    def fits(want: tuple[Any, ...], shape: tuple[int, ...]) -> bool:
        return all(not isinstance(w, int) or w == g for w, g in list(zip(want, shape))[1:])

    for spec in specs:
        arr = batch.get(spec.name, next(iter(batch.values())) if len(batch) == 1 else None)
        if arr is None or spec.shape is None or arr.ndim != len(spec.shape) or fits(spec.shape, arr.shape):
            continue
        for pair in _STANDARD_LAYOUTS:
            for source, target in (pair, pair[::-1]):
                if len(source) != arr.ndim:
                    continue
                if fits(spec.shape, tuple(arr.shape[source.index(letter)] for letter in target)):
                    return (f"; the teacher seems to expect {target} where the data is {source}: pass "
                            f"teacher_inputs='{source}->{target}' (CLI: --teacher-layout {source}->{target})")
    return ""


def match_input_names(feeds: Batch, names: Sequence[str], who: str = "teacher") -> Batch:
    """Feeds keyed by the model's input names; one array feeds a one-input model whatever its name."""
    if all(name in feeds for name in names):
        return {name: feeds[name] for name in names}
    if len(names) == 1 and len(feeds) == 1:
        return {names[0]: next(iter(feeds.values()))}
    raise DataError(
        f"the {who}'s inputs are {list(names)}, the data gives {sorted(feeds)}; rename the data's "
        "arrays or pass teacher_inputs=callable returning the teacher's inputs"
    )


# --------------------------------------------------------------------------- teachers


def is_onnx_model(obj: Any) -> bool:
    """An ``onnx_ir.Model``, an ``onnx.ModelProto`` or a path to an ``.onnx`` file."""
    if isinstance(obj, (ir.Model, onnx.ModelProto)):
        return True
    return isinstance(obj, (str, os.PathLike)) and Path(obj).suffix.lower() == ".onnx"


class OnnxTeacher:
    """An ONNX teacher run by ONNX Runtime, batch by batch, on the student's data.

    Args:
        model: an ``onnx_ir.Model``, an ``onnx.ModelProto`` or a path (loaded with the project's
            safety checks: external data must stay in the model's folder).
        provider: ``auto`` (CUDA when this onnxruntime has it), ``cpu`` or ``cuda``.
        output: the name of the output holding the class scores (default: the first output).
    """

    def __init__(self, model: Any, *, provider: str = "auto", output: str | None = None) -> None:
        from onnx_compress.model_io import load_model
        from onnx_compress.runtime.session import Runner, SessionSettings

        if isinstance(model, onnx.ModelProto):
            model = ir.serde.deserialize_model(model)
        elif not isinstance(model, ir.Model):
            model = load_model(model)
        self.runner = Runner(model, SessionSettings(provider=provider))  # type: ignore[arg-type]
        if output is not None and output not in self.runner.output_names:
            raise SettingError(
                f"teacher_output {output!r} is not an output of the teacher; its outputs: {self.runner.output_names}"
            )
        self.output = output or self.runner.output_names[0]
        self.input_names = [spec.name for spec in self.runner.input_specs]

    def check(self, feeds: Batch) -> Batch:
        """The teacher's feeds, after checking names, dtypes and shapes against its inputs."""
        try:
            named = match_input_names(feeds, self.input_names)
            Dataset(inputs=named).check_against(self.runner.input_specs, what="teacher input")
        except DataError as exc:
            raise DataError(f"{exc}{layout_hint(self.runner.input_specs, feeds)}") from exc
        return named

    def __call__(self, feeds: Batch) -> np.ndarray:
        return self.runner.run(self.check(feeds), outputs=[self.output])[0]


def pick_teacher(teacher: Any, *, native: type, run_native: Callable[[Any], Callable[[Batch], np.ndarray]],
                 accepted: str, framework: str, gpu: bool, output: str | None) -> Callable[[Batch], np.ndarray]:
    """How the teacher is run: an ONNX model in ONNX Runtime (its CUDA provider when training on a GPU,
    ``output`` naming the class scores), or a model of the student's ``framework`` (an instance of
    ``native``, run by ``run_native``); anything else is refused, naming what is ``accepted``."""
    if is_onnx_model(teacher):
        return OnnxTeacher(teacher, provider="auto" if gpu else "cpu", output=output)
    if isinstance(teacher, native):
        if output is not None:
            raise SettingError(f"teacher_output names an ONNX output; a {framework} teacher has one output")
        return run_native(teacher)
    raise SettingError(f"teacher must be {accepted} or an ONNX model (path or onnx_ir.Model), "
                       f"got {type(teacher).__name__}")


def collect_outputs(
    predict: Callable[[Batch], np.ndarray],
    data: Dataset,
    transform: Callable[[Batch], Batch],
    *,
    batch_size: int,
    who: str,
    progress: bool,
) -> np.ndarray:
    """``predict`` over ``data`` in batches (feeds passed through ``transform``), concatenated."""
    from tqdm.auto import tqdm

    chunks = []
    batches = data.batches(batch_size)
    total = (len(data) + batch_size - 1) // batch_size
    for batch in tqdm(batches, total=total, desc=who, unit="batch", disable=not progress, leave=False):
        out = check_class_outputs(predict(transform(batch)), who)
        if len(out) != len(next(iter(batch.values()))):
            raise SettingError(f"the {who} returned {len(out)} rows for a batch of {len(next(iter(batch.values())))}")
        chunks.append(out.astype(np.float32, copy=False))
    return np.concatenate(chunks)


# --------------------------------------------------------------------------- before training (both trainers)


def probe_student(outputs: Callable[[], Any]) -> np.ndarray:
    """The student's outputs on a first batch (``outputs()``), checked to be ``(batch, classes)``;
    a student that fails on the data is named in a SettingError before anything trains."""
    try:
        return check_class_outputs(outputs(), "student")
    except SettingError:
        raise
    except Exception as exc:
        raise SettingError(
            f"the student failed on the training data ({type(exc).__name__}: {one_line(exc)}); "
            "check that the data is keyed and shaped for the student"
        ) from exc


@dataclasses.dataclass(frozen=True)
class TeacherOutputs:
    """The teacher's raw outputs over the training data (and the validation data), and their kind."""

    train: np.ndarray
    val: np.ndarray | None
    kind: OutputKind


def run_teacher(
    predict: Callable[[Batch], np.ndarray],
    train: Dataset,
    val: Dataset | None,
    transform: Callable[[Batch], Batch],
    settings: DistillSettings,
    *,
    student_classes: int,
    progress: bool,
) -> TeacherOutputs:
    """Run the teacher once over the training and validation data; refuse a teacher whose number
    of classes is not the student's, labels outside the classes, and a declared output kind the
    outputs cannot be."""
    raw = collect_outputs(predict, train, transform, batch_size=settings.batch_size, who="teacher", progress=progress)
    raw_val = None if val is None else collect_outputs(
        predict, val, transform, batch_size=settings.batch_size, who="teacher", progress=progress)
    classes = raw.shape[1]
    if student_classes != classes:
        raise SettingError(
            f"the teacher has {classes} outputs per sample, the student {student_classes}: "
            "distillation needs the same classes in the same order"
        )
    check_labels(train, classes, "train_data")
    if val is not None:
        check_labels(val, classes, "val_data")
    return TeacherOutputs(raw, raw_val, resolve_output_kind(raw, settings.teacher_outputs, who="teacher"))


def start_history(settings: DistillSettings, teacher: TeacherOutputs, *, student_kind: str, device: str,
                  train: Dataset, val: Dataset | None) -> DistillHistory:
    """The run's empty history (with the teacher's validation top-1), logged as the run starts."""
    teacher_val_top1 = None
    if teacher.val is not None and val is not None and val.labels is not None:
        teacher_val_top1 = top1_percent(teacher.val, val.labels)
    history = new_history(settings, teacher_kind=teacher.kind, student_kind=student_kind, device=device,
                          has_labels=train.labels is not None, val=val, teacher_val_top1=teacher_val_top1)
    logger.info("distilling: teacher outputs %s, student outputs %s, %d samples, device %s",
                teacher.kind, student_kind, len(train), device)
    return history


@dataclasses.dataclass(frozen=True)
class Run:
    """What training starts from: the student's output kind, the teacher's outputs, its soft targets
    at the run's temperature, and the (empty) history."""

    student_kind: OutputKind
    teacher: TeacherOutputs
    targets: np.ndarray
    history: DistillHistory


def start_run(predict: Callable[[Batch], np.ndarray], probe: np.ndarray, train: Dataset, val: Dataset | None,
              transform: Callable[[Batch], Batch], settings: DistillSettings, *, device: str, progress: bool) -> Run:
    """Everything between the student's first outputs (``probe``, from :func:`probe_student`) and
    training, the same in both trainers: the student's output kind, the teacher run once
    (:func:`run_teacher`: its classes must be the student's), the soft targets and the history."""
    student_kind = resolve_output_kind(probe, settings.student_outputs, who="student")
    teacher = run_teacher(predict, train, val, transform, settings, student_classes=probe.shape[1], progress=progress)
    targets = soft_targets(to_log_space(teacher.train, teacher.kind), settings.temperature)
    history = start_history(settings, teacher, student_kind=student_kind, device=device, train=train, val=val)
    return Run(student_kind, teacher, targets, history)
