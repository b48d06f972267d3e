"""The ``recover`` recipe stage: recovery training inside the compression pipeline.

A recipe names ``recover`` after the passes that cut (``prune_structured``,
``prune_unstructured``, ``lowrank``)::

    passes:
      - prune_structured: {ratio: 0.8, reconstruct: true}
      - lowrank: {rank_ratio: 0.5}
      - recover: {epochs: 20, lr: 0.001}
      - quantize: {mode: auto}

The pipeline gives the stage the original model (the teacher) and the training data
(``compress(..., train=...)`` / ``--train``; inputs only, labels optional). Early stopping uses
the last 10 % of the training data (at least one sample, at most 2,000), so the validation data
on which the pipeline checks the budget stays unseen by training, as does the calibration data.

Budget search with recovery: the pipeline hands the stage the cut passes right before it
(:meth:`Recover.absorb`) and searches their strength WITH recovery in the loop (cut at strength
``s``, recover, check the budget; bisect as for any pass), so a cut may go further than it
could without training. When recovery does not improve the cut model on the held-out part of
the training data, the cut model is kept as it is and the result says so with both numbers; a
``recover`` stage alone is then rolled back, with both numbers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir

from onnx_compress.data import Dataset, DataSource, load_data
from onnx_compress.errors import PassRefusedError
from onnx_compress.passes.base import CompressionPass, CompressionResult, PassSettings
from onnx_compress.training.recover import RecoveryResult, RecoverySettings

__all__ = ["Recover", "CutThenRecover", "split_training"]

logger = logging.getLogger(__name__)

#: recipe names of the passes whose strength is searched with recovery in the loop
CUT_PASSES = ("prune_structured", "prune_transformer", "prune_unstructured", "lowrank")


def split_training(data: Dataset, fraction: float = 0.1, most: int = 2000) -> tuple[Dataset, Dataset]:
    """(training part, early-stopping part): the last ``fraction`` of the samples (>= 1, <= most)."""
    if len(data) < 2:
        raise PassRefusedError(f"recover needs at least 2 training samples, got {len(data)}")
    held = min(max(1, int(round(len(data) * fraction))), most, len(data) - 1)
    cut = len(data) - held
    return data.subset(np.arange(cut)), data.subset(np.arange(cut, len(data)))


class Recover(CompressionPass):
    """Distill the model towards the original (the teacher the pipeline supplies)."""

    name: ClassVar[str] = "recover"
    Settings: ClassVar[type[PassSettings]] = RecoverySettings
    #: the pipeline groups these passes, right before this stage, with it (see :meth:`absorb`)
    absorbs: ClassVar[tuple[str, ...]] = CUT_PASSES

    def __init__(self, settings: PassSettings | None = None, /, *, calibration: DataSource | None = None,
                 validation: DataSource | None = None, teacher: ir.Model | None = None,
                 train: DataSource | None = None, progress: bool = True, qat_target: Any = None,
                 **overrides: Any) -> None:
        super().__init__(settings, calibration=calibration, validation=validation, **overrides)
        self.teacher = teacher
        self.train: Dataset | None = None if train is None else load_data(train)
        self.progress = progress
        #: with ``qat: on``, the quantize step to simulate (training.qat.QatTarget; None: static int8)
        self.qat_target = qat_target

    def with_data(self, *, calibration: DataSource | None = None,
                  validation: DataSource | None = None) -> Recover:
        return Recover(self.settings, calibration=calibration, validation=validation, teacher=self.teacher,
                       train=self.train, progress=self.progress, qat_target=self.qat_target)

    def with_teacher(self, teacher: ir.Model, train: Dataset | None) -> Recover:
        """This stage with the original model as teacher and the training data."""
        return Recover(self.settings, calibration=self.calibration, validation=self.validation, teacher=teacher,
                       train=train, progress=self.progress, qat_target=self.qat_target)

    def with_quantize(self, settings: PassSettings, calibration: bool) -> Recover:
        """This stage simulating (``qat: on``) the quantize step that follows it in the recipe."""
        from onnx_compress.training.qat import QatTarget

        return Recover(self.settings, calibration=self.calibration, validation=self.validation, teacher=self.teacher,
                       train=self.train, progress=self.progress,
                       qat_target=QatTarget(settings, calibration))  # type: ignore[arg-type]

    def absorb(self, cuts: Sequence[CompressionPass]) -> CutThenRecover:
        """The cuts and this recovery as one stage, whose strength is searched with recovery."""
        return CutThenRecover(list(cuts), self)

    def check_ready(self) -> None:
        """Raise PassRefusedError when this stage cannot train (no teacher, no training data, started
        under torchrun): checked before any cut, so a stage that cannot recover costs no cutting."""
        if self.teacher is None:
            raise PassRefusedError("recover needs the original model as its teacher (compress() supplies it)")
        if self.train is None:
            raise PassRefusedError("recover needs training data (compress(train=...) / --train train.npz; "
                                   "inputs only, labels optional)")
        from onnx_compress.training.distributed import launched

        if launched():  # every process would run the whole pipeline, and only rank 0 gets the model
            raise PassRefusedError("compress does not train under torchrun; run `onnx-compress recover` under "
                                   "torchrun, then compress the recovered model")

    def recover(self, model: ir.Model) -> RecoveryResult:
        from onnx_compress.training.recover import recover

        self.check_ready()
        assert self.train is not None
        fit, stop = split_training(self.train)
        _, result = recover(model, self.teacher, fit, stop, self.settings,  # type: ignore[arg-type]
                            progress=self.progress, qat_target=self.qat_target)
        return result

    def call(self, model: ir.Model) -> RecoveryResult:
        result = self.recover(model)
        if not result.improved:
            raise PassRefusedError(result.summary())
        return result


@dataclasses.dataclass(frozen=True)
class CutThenRecoverSettings(PassSettings):
    """The settings of the grouped passes, by recipe name, in order."""

    steps: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass
class CutThenRecoverResult(CompressionResult):
    """What each cut did and what recovery did after them."""

    steps: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    recovery: dict[str, Any] = dataclasses.field(default_factory=dict)
    summaries: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return "; ".join(self.summaries)


class CutThenRecover(CompressionPass):
    """Cut passes followed by recovery, searched as one stage (see the module docstring)."""

    Settings: ClassVar[type[PassSettings]] = CutThenRecoverSettings

    def __init__(self, cuts: list[CompressionPass], recovery: Recover) -> None:
        settings = CutThenRecoverSettings(tuple((p.name, p.settings.as_dict()) for p in [*cuts, recovery]))
        super().__init__(settings)
        self.cuts, self.recovery = cuts, recovery
        self.name = "+".join(p.name for p in [*cuts, recovery])  # type: ignore[misc]

    def with_data(self, *, calibration: DataSource | None = None,
                  validation: DataSource | None = None) -> CutThenRecover:
        return CutThenRecover([p.with_data(calibration=calibration, validation=validation) for p in self.cuts],
                              self.recovery.with_data(calibration=calibration, validation=validation))

    def with_teacher(self, teacher: ir.Model, train: Dataset | None) -> CutThenRecover:
        return CutThenRecover(self.cuts, self.recovery.with_teacher(teacher, train))

    def with_quantize(self, settings: PassSettings, calibration: bool) -> CutThenRecover:
        return CutThenRecover(self.cuts, self.recovery.with_quantize(settings, calibration))

    def scaled(self, strength: float) -> CutThenRecover | None:
        scaled = [p.scaled(strength) for p in self.cuts]
        if all(s is None for s in scaled):
            return None
        return CutThenRecover([s if s is not None else p for s, p in zip(scaled, self.cuts)], self.recovery)

    def refinement_keys(self, model: ir.Model) -> list[str]:
        """The parts of the first cut that can be refined (``onnx_compress.budget.refine``)."""
        first = next((p for p in self.cuts if hasattr(p, "refined")), None)
        return first.refinement_keys(model) if first is not None else []  # type: ignore[attr-defined]

    def refined(self, strength: float, full: tuple[str, ...]) -> CutThenRecover:
        """The cuts at ``strength``, the parts in ``full`` of the first refinable cut at full strength."""
        first = next((p for p in self.cuts if hasattr(p, "refined")), None)
        cuts = [p.refined(strength, full) if p is first else (p.scaled(strength) or p)  # type: ignore[attr-defined]
                for p in self.cuts]
        return CutThenRecover(cuts, self.recovery)

    def preview(self, model: ir.Model) -> ir.Model:
        """The model the cuts make, before recovery (the search skips a setting that cuts nothing new)."""
        for cut in self.cuts:
            model = cut(model).model
        return model

    def call(self, model: ir.Model) -> CutThenRecoverResult:
        self.recovery.check_ready()
        current, steps, summaries, modified = model, [], [], False
        for cut in self.cuts:
            result = cut(current)
            steps.append({"pass": cut.name, **result.as_dict()})
            summaries.append(f"{cut.name}: {result.summary()}")
            modified = modified or result.modified
            current = result.model
        recovery = self.recovery.recover(current)
        summaries.append(f"recover: {recovery.summary()}")
        if recovery.improved:
            current, modified = recovery.model, True
        return CutThenRecoverResult(model=current, modified=modified, steps=steps, recovery=recovery.as_dict(),
                                    summaries=summaries)
