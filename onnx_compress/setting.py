"""One declaration per setting: its default, help text, allowed values, CLI flag and role.

A settings dataclass declares every field with :func:`setting`::

    ratio: float = setting(0.5, range="[0, 1)", flag="--structured", metavar="R", role=SEARCHED,
                           help="fraction of the channels / neurons of every group to remove")

and everything else is derived from that one declaration, never written again:

- validation: :func:`check_fields` (called by ``PassSettings.__post_init__``) checks the type,
  the choices and the range, and raises one-line ``SettingError`` ``"ratio must be a number
  in [0, 1), got 1.5"``; a class adds its own ``__post_init__`` only for rules between fields;
- the CLI flags, their ``--help`` text and defaults, and the settings reference in the README
  (:mod:`onnx_compress.setting_cli`);
- the recipe schema (:func:`json_schema`; recipes are validated by building the settings).

``range`` is an interval ``"[0, 1)"`` / ``"(0, 1]"`` or a bound ``">= 1"`` / ``"> 0"``.
``words`` are strings allowed besides a number (``round_to``: ``auto`` or an integer >= 1).
``role``: :data:`PLAIN`; :data:`SEARCHED` (the pipeline's budget search scales it down, see
``CompressionPass.scaled``); :data:`BUDGET` (filled in from the pipeline's budget by
``BudgetAwareSettings.with_budget``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

from onnx_compress.errors import SettingError

__all__ = ["Setting", "setting", "declared", "check_fields", "overridden", "json_schema", "PLAIN", "SEARCHED",
           "BUDGET"]

PLAIN, SEARCHED, BUDGET = "plain", "searched by the budget", "budget-aware"
#: the kinds of value a setting holds; ``names`` is a tuple of non-empty strings, ``any`` is checked by its class
KINDS = ("bool", "int", "float", "str", "names", "any")


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one field accepts and how it is shown (see the module docstring)."""

    help: str
    kind: str
    choices: tuple[Any, ...] = ()
    range: str | None = None
    words: tuple[str, ...] = ()
    optional: bool = False
    flag: str | None = None
    metavar: str | None = None
    negate: bool = False
    cli: bool = True
    role: str = PLAIN
    callable_ok: bool = False

    def bounds(self) -> tuple[float, float, bool, bool]:
        """``(low, high, low_closed, high_closed)`` of ``range`` (infinite where open-ended)."""
        text = (self.range or "").replace(" ", "")
        if text.startswith((">=", ">")):
            return float(text.lstrip(">=")), math.inf, text.startswith(">="), False
        if text.startswith(("<=", "<")):
            return -math.inf, float(text.lstrip("<=")), False, text.startswith("<=")
        if text:
            low, high = text[1:-1].split(",")
            return float(low), float(high), text[0] == "[", text[-1] == "]"
        return -math.inf, math.inf, False, False

    def allowed(self) -> str:
        """The allowed values in words: ``a number in [0, 1)``, ``one of l1, l2``, ..."""
        if self.kind == "bool":
            text = "true or false"
        elif self.choices:
            text = ("a list of names from " if self.kind == "names" else "one of ") + ", ".join(map(str, self.choices))
        elif self.kind == "names":
            text = "a list of names"
        elif self.kind in ("int", "float"):
            number = "an integer" if self.kind == "int" else "a number"
            text = number if self.range is None else f"{number} {'in ' if self.range[0] in '[(' else ''}{self.range}"
        else:
            text = "a string" if self.kind == "str" else "see the description"
        if self.words:
            text = " or ".join([", ".join(repr(w) for w in self.words), text])
        if self.callable_ok:
            text += " or a callable"
        return f"{text} or None" if self.optional else text

    def check(self, label: str, value: Any) -> Any:
        """``value`` normalized (a list of names becomes a tuple), or SettingError naming ``label``."""
        if (value is None and self.optional) or self.kind == "any" or (self.callable_ok and callable(value)):
            return value
        if isinstance(value, str) and value in self.words:
            return value
        if self.kind == "names" and isinstance(value, (str, list, tuple)):
            value = (value,) if isinstance(value, str) else tuple(value)
            if all(isinstance(v, str) and v for v in value) and all(v in self.choices for v in value if self.choices):
                return value
        elif self._fits(value):
            return value
        raise SettingError(f"{label} must be {self.allowed()}, got {value!r}")

    def _fits(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str) and (not self.choices or value in self.choices)
        if self.kind == "int" and not (isinstance(value, numbers.Integral) and not isinstance(value, bool)):
            return False
        if self.kind == "float" and not (isinstance(value, numbers.Real) and not isinstance(value, bool)
                                         and not math.isnan(value)):
            return False
        low, high, low_closed, high_closed = self.bounds()
        return (value >= low if low_closed else value > low) and (value <= high if high_closed else value < high)


def setting(default: Any = None, *, help: str, kind: str | None = None, factory: Any = None, **meta: Any) -> Any:
    """A dataclass field with its :class:`Setting` (the kind is the default's type when not given;
    ``default=dataclasses.MISSING``: a required setting, its ``kind`` given)."""
    if kind is None:
        sample = default if factory is None else factory()
        kind = ("bool" if isinstance(sample, bool) else "int" if isinstance(sample, int)
                else "float" if isinstance(sample, float) else "names" if isinstance(sample, tuple) else "str")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if default is None and factory is None:
        meta.setdefault("optional", True)
    info = {"setting": Setting(help=" ".join(help.split()), kind=kind, **meta)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=info)
    if default is dataclasses.MISSING:  # a required setting
        return dataclasses.field(metadata=info)
    return dataclasses.field(default=default, metadata=info)


def declared(cls: Any) -> Iterator[tuple[dataclasses.Field[Any], Setting]]:
    """The fields of a settings dataclass declared with :func:`setting`, in order."""
    for field in dataclasses.fields(cls):
        if "setting" in field.metadata:
            yield field, field.metadata["setting"]


def check_fields(obj: Any) -> None:
    """Check every declared field of the dataclass instance ``obj`` (normalizes lists to tuples)."""
    for field, meta in declared(obj):
        value = getattr(obj, field.name)
        checked = meta.check(field.name, value)
        if checked is not value:
            object.__setattr__(obj, field.name, checked)


def overridden(settings: Any, overrides: Mapping[str, Any], *, where: str) -> Any:
    """``settings`` with single settings given as keyword arguments (``epochs=3``) put on top, checked
    again; a name that is no field of its class is a TypeError, as for any unknown keyword of ``where``."""
    unknown = sorted(set(overrides) - {field.name for field in dataclasses.fields(settings)})
    if unknown:
        raise TypeError(f"{where} got unexpected keyword arguments {unknown}")
    return dataclasses.replace(settings, **overrides) if overrides else settings


def json_schema(cls: Any) -> dict[str, Any]:
    """A JSON Schema of the settings of ``cls`` (what a recipe step may hold), from the declarations."""
    types = {"bool": "boolean", "int": "integer", "float": "number", "str": "string", "names": "array"}
    properties: dict[str, Any] = {}
    for field, meta in declared(cls):
        schema: dict[str, Any] = {"description": meta.help}
        if field.default is not dataclasses.MISSING:
            schema["default"] = list(field.default) if isinstance(field.default, tuple) else field.default
        if meta.kind in types:
            schema["type"] = types[meta.kind]
        if meta.kind == "names":
            schema["items"] = {"type": "string", **({"enum": list(meta.choices)} if meta.choices else {})}
        elif meta.choices:
            schema["enum"] = list(meta.choices)
        if meta.range is not None:
            low, high, low_closed, high_closed = meta.bounds()
            if low > -math.inf:
                schema["minimum" if low_closed else "exclusiveMinimum"] = low
            if high < math.inf:
                schema["maximum" if high_closed else "exclusiveMaximum"] = high
        alternatives = [{"enum": list(meta.words)}] if meta.words else []
        alternatives += [{"type": "null"}] if meta.optional else []
        if alternatives:
            schema = {"description": schema.pop("description"), "anyOf": [schema, *alternatives]}
        properties[field.name] = schema
    return {"type": "object", "properties": properties, "additionalProperties": False}
