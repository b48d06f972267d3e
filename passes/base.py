"""What every onnx-compress pass shares: typed settings, a reporting result, a functional call.

The contract (docs/architecture.md):

- A pass's settings are one frozen dataclass (a :class:`PassSettings` subclass) whose fields
  are declared with :func:`onnx_compress.setting.setting` (help text, choices or range, CLI
  flag, role): :meth:`PassSettings.__post_init__` validates them from that declaration (a
  ``SettingError`` naming the field and what it accepts); a subclass's own ``__post_init__``
  calls it first and adds only the rules between fields. ``Pass(**settings)`` builds it, so a bad setting fails at construction.
  Settings serialize with :meth:`PassSettings.as_dict` and load with
  :meth:`PassSettings.from_dict`, which names an unknown key and the valid ones (recipes).
- ``call(model)`` returns a :class:`CompressionResult` subclass carrying what the pass did, with
  a truthful ``modified``. :meth:`CompressionResult.as_dict` gives its JSON report.
- Passes are *functional* (``onnx_ir.passes.FunctionalPass``): the input model is never
  modified. :meth:`CompressionPass.copy_model` clones the graph and SHARES tensors with the
  input, so a pass must never write into a tensor's array: it assigns a new ``ir.Tensor`` to
  ``value.const_value`` (or creates a new initializer) instead.
- Data is not a setting: a data-aware pass takes ``calibration=`` (statistics, calibration)
  and, when it checks an accuracy budget itself (quantization's sensitivity analysis),
  ``validation=`` held-out data, as constructor keywords (a path, a dict of arrays or a
  :class:`~onnx_compress.data.Dataset`). :meth:`CompressionPass.with_data` returns a copy with
  other data; the pipeline uses it to hand recipe passes their data.
- Budget-aware passes: a pass that checks the accuracy budget itself declares it by its
  settings class deriving from :class:`BudgetAwareSettings` and declaring the fields of
  :data:`BUDGET_FIELDS` with ``role=BUDGET``; the pipeline hands it what is left of the budget
  (:meth:`CompressionPass.with_budget`).
- Budget search: a pass whose aggressiveness can be dialled down implements
  :meth:`CompressionPass.scaled`; the pipeline bisects ``strength`` in (0, 1] for the most
  aggressive setting that keeps the accuracy budget. A pass that returns ``None`` can only be
  kept or rolled back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import onnx_ir as ir

from onnx_compress.data import Dataset, DataSource, load_data
from onnx_compress.errors import RecipeError, SettingError
from onnx_compress.jsonable import jsonable
from onnx_compress.setting import BUDGET, check_fields, declared

__all__ = ["PassSettings", "BudgetAwareSettings", "BUDGET_FIELDS", "CompressionResult", "CompressionPass",
           "check_strength", "jsonable"]

#: the fields a budget-aware pass declares with role BUDGET (see BudgetAwareSettings)
BUDGET_FIELDS = ("max_drop", "metric", "budget_margin", "objective")

S = TypeVar("S", bound="PassSettings")


@dataclasses.dataclass(frozen=True)
class PassSettings:
    """Base of every pass's settings dataclass (see the module docstring)."""

    def __post_init__(self) -> None:
        check_fields(self)

    def as_dict(self) -> dict[str, Any]:
        return jsonable(self)

    @classmethod
    def from_dict(cls: type[S], values: Mapping[str, Any], *, where: str = "") -> S:
        """Build settings from a mapping (a recipe entry); unknown keys are named with the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in values if key not in valid]
        if unknown:
            prefix = f"{where}: " if where else ""
            raise RecipeError(
                f"{prefix}unknown setting(s) {unknown} for {cls.__name__}; valid settings: {', '.join(valid)}"
            )
        converted = {}
        for f in dataclasses.fields(cls):
            if f.name in values:
                value = values[f.name]
                # JSON/YAML have lists where the dataclass keeps tuples
                converted[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(**converted)


@dataclasses.dataclass(frozen=True)
class BudgetAwareSettings(PassSettings):
    """Base of the settings of a pass that keeps the accuracy budget itself.

    Such a pass measures its own candidates on the ``validation=`` data (quantization keeps its
    most sensitive nodes float until the drop holds). Its settings class derives from this one
    and declares, with ``role=BUDGET``, the fields of :data:`BUDGET_FIELDS`: ``max_drop``
    (``None`` = not set), ``metric`` (``"auto"`` = not set), ``budget_margin`` (standard errors
    added to a measured drop, as the pipeline's budget does) and ``objective`` (``"auto"`` = the
    pass decides); construction fails when one is missing. The pipeline hands it what is left of
    the budget, the metric and margin it checks with, and the pipeline's objective when one is
    set (:meth:`CompressionPass.with_budget`); ``max_drop`` and ``metric`` the user gave are kept.
    """

    def __post_init__(self) -> None:
        roles = {field.name for field, meta in declared(self) if meta.role == BUDGET}
        if roles != set(BUDGET_FIELDS):
            raise TypeError(f"{type(self).__name__} must declare exactly {BUDGET_FIELDS} with role=BUDGET, "
                            f"declares {sorted(roles)}")
        super().__post_init__()

    def with_budget(self, max_drop: float | None, metric: Any, *, margin: float | None = None,
                    objective: str | None = None) -> BudgetAwareSettings:
        """These settings with the pipeline's budget filled in (see the class docstring)."""
        mine = {name: getattr(self, name) for name in BUDGET_FIELDS}
        offered = {"max_drop": max_drop if mine["max_drop"] is None else None,
                   "metric": metric if mine["metric"] in (None, "auto") and isinstance(metric, str) else None,
                   "budget_margin": margin, "objective": objective}
        updates = {name: value for name, value in offered.items() if value is not None and value != mine[name]}
        return dataclasses.replace(self, **updates) if updates else self


class CompressionResult(ir.passes.PassResult):
    """A pass result that reports what the pass did. Subclasses add their own fields."""

    def as_dict(self) -> dict[str, Any]:
        """Every field but the model, JSON-friendly."""
        return jsonable(self)

    def summary(self) -> str:
        """One line for a terminal; subclasses say what changed."""
        return "modified" if self.modified else "unchanged"


def check_strength(strength: float) -> None:
    """A :meth:`CompressionPass.scaled` strength is a number in (0, 1]."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise SettingError(f"strength must be in (0, 1], got {strength!r}")


class CompressionPass(ir.passes.FunctionalPass):
    """Base of the compression passes: settings handling and model copying.

    Subclasses set ``name`` (the recipe name) and ``Settings`` (their PassSettings subclass),
    and implement ``call(model) -> CompressionResult``.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type[PassSettings]] = PassSettings

    def __init__(
        self,
        settings: PassSettings | None = None,
        /,
        *,
        calibration: DataSource | None = None,
        validation: DataSource | None = None,
        **overrides: Any,
    ) -> None:
        if settings is not None and not isinstance(settings, self.Settings):
            raise SettingError(
                f"{type(self).__name__} takes {self.Settings.__name__}, got {type(settings).__name__}"
            )
        valid = {f.name for f in dataclasses.fields(self.Settings)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise SettingError(
                f"unknown setting(s) {unknown} for {type(self).__name__}; valid settings: {', '.join(sorted(valid))}"
            )
        base = settings if settings is not None else self.Settings()
        self.settings = dataclasses.replace(base, **overrides) if overrides else base
        self.calibration: Dataset | None = None if calibration is None else load_data(calibration)
        self.validation: Dataset | None = None if validation is None else load_data(validation)

    def with_data(
        self, *, calibration: DataSource | None = None, validation: DataSource | None = None
    ) -> CompressionPass:
        """A copy of this pass with the same settings and the given data."""
        return type(self)(self.settings, calibration=calibration, validation=validation)

    @property
    def keeps_budget(self) -> bool:
        """Whether this pass checks the accuracy budget itself (its settings are :class:`BudgetAwareSettings`)."""
        return isinstance(self.settings, BudgetAwareSettings)

    def with_budget(self, max_drop: float | None, metric: Any, *, margin: float | None = None,
                    objective: str | None = None) -> CompressionPass:
        """This pass given what is left of the pipeline's budget, its metric, margin and objective.

        A pass that keeps the budget itself gets them (see :class:`BudgetAwareSettings`); any
        other pass is returned as it is (the pipeline checks the budget after it).
        """
        if not isinstance(self.settings, BudgetAwareSettings):
            return self
        settings = self.settings.with_budget(max_drop, metric, margin=margin, objective=objective)
        return self if settings is self.settings else self.with_settings(settings)

    def with_settings(self, settings: PassSettings) -> CompressionPass:
        """A copy of this pass with ``settings`` and the same data."""
        return type(self)(settings, calibration=self.calibration, validation=self.validation)

    def scaled(self, strength: float) -> CompressionPass | None:
        """This pass made less aggressive, for the pipeline's budget search.

        ``strength`` is in (0, 1]: 1 is the pass as configured, values towards 0 approach doing
        nothing (a pruning ratio times ``strength``; a low-rank energy of
        ``1 - (1 - energy) * strength``). The data is kept. Return None (the default) when the
        pass has no such knob: the pipeline then keeps it or rolls it back. An implementation
        starts with :func:`check_strength`.
        """
        del strength
        return None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str = "") -> CompressionPass:
        return cls(cls.Settings.from_dict(values, where=where or cls.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings!r})"

    @staticmethod
    def copy_model(model: ir.Model) -> ir.Model:
        """A structural copy of ``model`` that shares tensors (never mutate their arrays)."""
        return model.clone()
