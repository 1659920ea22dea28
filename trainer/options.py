"""Configuration fields that are also command-line options: one declaration holds the default and the help.

A section of the training configuration declares each option once::

    @dataclass(frozen=True)
    class ModelConfig:
        dim: int = option(64, "embedding size")

``add_options(parser.add_argument_group("model"), ModelConfig)`` then adds ``--dim`` (its type, choices,
``nargs`` and ``store_true``/``store_false`` action follow from the field's annotation), and
``from_args(ModelConfig, args)`` builds the section from the parsed arguments by field name, so nothing
is copied by hand between the parser and the configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import operator
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T")
Section = TypeVar("Section", bound="DataclassInstance")

OPTION = "option"  # the metadata key a field's Option is kept under


@dataclass(frozen=True)
class Bounds:
    """The numbers a numeric option takes: finite, and inside these limits (None: no limit on that side)."""

    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None

    def refusal(self, value: float) -> str | None:
        """Why ``value`` is refused ("must be > 0, got -1"), or None when it is taken."""
        limits = [(self.at_least, ">=", operator.ge), (self.above, ">", operator.gt),
                  (self.at_most, "<=", operator.le), (self.below, "<", operator.lt)]  # fmt: skip
        given = [(limit, sign, holds) for limit, sign, holds in limits if limit is not None]
        if math.isfinite(value) and all(holds(value, limit) for limit, _, holds in given):
            return None
        wanted = " and ".join(f"{sign} {_number(limit)}" for limit, sign, _ in given) or "a finite number"
        return f"must be {wanted}, got {_number(value)}"


def _number(value: float) -> str:
    return str(int(value)) if isinstance(value, int) or value.is_integer() and abs(value) < 1e16 else f"{value:g}"


@dataclass(frozen=True)
class Option:
    """How a configuration field appears on the command line."""

    help: str
    flag: str | None = None  # default: --the-field-name (a True default's store_false flag must be named)
    choices: Sequence[object] | None = None  # default: a Literal annotation's values
    bounds: Bounds = Bounds()  # numbers only; every float must also be finite


def option(
    default: T,
    help: str,
    *,
    flag: str | None = None,
    choices: Sequence[object] | None = None,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
) -> T:
    """A dataclass field with this default that is also the command-line option ``flag``; a number outside the
    bounds given (or a float that is not finite) is refused, naming the flag, whether typed or set in code."""
    bounds = Bounds(at_least, above, at_most, below)
    return dataclasses.field(default=default, metadata={OPTION: Option(help, flag, choices, bounds)})


def flag_of(field: dataclasses.Field[Any]) -> str:
    spec: Option = field.metadata[OPTION]
    return spec.flag or "--" + field.name.replace("_", "-")


def check_bounds(field: dataclasses.Field[Any], value: object) -> None:
    """ValueError naming the option's flag when a number in ``value`` (one, or each of a tuple's) is out of bounds.

    Checked where options become a configuration, not where a run uses them: a batch of -1 or a learning rate of
    inf would otherwise train without complaint and publish what it got.
    """
    spec: Option | None = field.metadata.get(OPTION)
    if spec is None:
        return
    for number in value if isinstance(value, tuple) else (value,):
        if isinstance(number, int | float) and not isinstance(number, bool):
            if (reason := spec.bounds.refusal(number)) is not None:
                raise ValueError(f"{flag_of(field)} {reason}")


def options_of(section: type[DataclassInstance]) -> list[dataclasses.Field[Any]]:
    """The section's fields that are command-line options (the others are set by the trainer itself)."""
    return [field for field in dataclasses.fields(section) if OPTION in field.metadata]


def _value_type(annotation: Any) -> tuple[Any, Sequence[object] | None, bool]:
    """The type argparse converts one value to, a Literal's choices, and whether the option takes several."""
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):  # X | None: None is the default, never typed in
        return _value_type(arguments[0])
    if origin is tuple:
        kind, choices, _ = _value_type(arguments[0])
        return kind, choices, True
    if origin is Literal:
        return type(arguments[0]), arguments, False
    return annotation, None, False


def add_options(group: argparse._ArgumentGroup | argparse.ArgumentParser, section: type[DataclassInstance]) -> None:
    """Add an option for each of the section's option fields, in declaration order."""
    hints = typing.get_type_hints(section)
    for field in options_of(section):
        spec: Option = field.metadata[OPTION]
        flag = flag_of(field)
        if hints[field.name] is bool:
            action = "store_false" if field.default else "store_true"
            group.add_argument(flag, dest=field.name, action=action, help=spec.help)
            continue
        kind, choices, several = _value_type(hints[field.name])
        default: Any = field.default
        group.add_argument(
            flag,
            dest=field.name,
            type=kind,
            nargs="+" if several else None,
            choices=spec.choices if spec.choices is not None else choices,
            default=list(default) if several else default,
            help=spec.help,
        )


def check_option(name: str, annotation: Any, value: object) -> None:
    """Raise TypeError unless ``value`` is of the field's annotated type (an int passes for a float, a bool for
    neither): the fields are the one list of options, so a flat ``TrainConfig.of(...)`` is checked against them
    when it runs rather than by a second, hand-kept list for the type checker."""
    if not _conforms(value, annotation):
        raise TypeError(f"option {name} takes {_describe(annotation)}, got {value!r}")


def _conforms(value: object, annotation: Any) -> bool:
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, argument) for argument in arguments)
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in arguments)
    if origin is tuple:
        return isinstance(value, tuple) and all(_conforms(item, arguments[0]) for item in value)
    if annotation in (int, float):
        return isinstance(value, int | float if annotation is float else int) and not isinstance(value, bool)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " or ".join(repr(choice) for choice in typing.get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation)


def from_args(section: type[Section], args: argparse.Namespace) -> Section:
    """The section from parsed arguments, field by field name; fields that are not options keep their defaults."""
    hints = typing.get_type_hints(section)
    given = {}
    for field in options_of(section):
        value = getattr(args, field.name)
        several = typing.get_origin(hints[field.name]) is tuple
        given[field.name] = tuple(value) if several else value
        check_bounds(field, given[field.name])
    return section(**given)
