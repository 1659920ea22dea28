"""Numeric options: every one has bounds, and a number outside them is one line naming the flag, typed or in code."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import pytest

from trainer.cli import OPTION_GROUPS, main
from trainer.config import TrainConfig
from trainer.options import OPTION, Bounds, Option, flag_of, options_of


def numeric_options() -> list[tuple[dataclasses.Field[object], type]]:
    """Every recsys-train option that takes numbers of its own (not from a list of choices), with their type."""
    found = []
    for _, section in OPTION_GROUPS:
        hints = typing.get_type_hints(section)
        for field in options_of(section):
            annotation = hints[field.name]
            if typing.get_origin(annotation) is typing.Literal or field.metadata[OPTION].choices is not None:
                continue
            kinds = {annotation, *typing.get_args(annotation)}
            number = next((kind for kind in (float, int) if kind in kinds), None)
            if number is not None:
                found.append((field, number))
    return found


def outside(bounds: Bounds, number: type) -> list[float]:
    """Values just outside each limit, and for floats the ones that are no number at all."""
    values: list[float] = []
    step = 1 if number is int else 1e-9
    if bounds.at_least is not None:
        values.append(bounds.at_least - step)
    if bounds.above is not None:
        values.append(bounds.above)
    if bounds.at_most is not None:
        values.append(bounds.at_most + step)
    if bounds.below is not None:
        values.append(bounds.below)
    if number is float:
        values += [math.nan, math.inf]
    return [int(v) if number is int else v for v in values]


CASES = [
    pytest.param(field, value, id=f"{flag_of(field)}={value}")
    for field, number in numeric_options()
    for value in outside(field.metadata[OPTION].bounds, number)
]


def test_every_numeric_option_is_bounded_below() -> None:
    options = numeric_options()
    assert len(options) >= 30  # the list is read from the sections, not kept by hand
    bounds = {flag_of(field): field.metadata[OPTION].bounds for field, _ in options}
    unbounded = [flag for flag, b in bounds.items() if b.at_least is None and b.above is None]
    assert not unbounded, f"options that take any number: {unbounded}"


@pytest.mark.parametrize(("field", "value"), CASES)
def test_a_number_out_of_bounds_is_refused_on_the_command_line(
    field: dataclasses.Field[object], value: float, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [f"{flag_of(field)}={value}", "--bundle-root", str(tmp_path / "b")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"recsys-train: error: {flag_of(field)} must be ") and err.count("\n") == 1, err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(("field", "value"), [case for case in CASES if case.values[0].name in TrainConfig().flat()])
def test_a_number_out_of_bounds_is_refused_in_a_flat_config(field: dataclasses.Field[object], value: float) -> None:
    with pytest.raises(ValueError, match=f"^{flag_of(field)} must be "):
        TrainConfig.of(**{field.name: (value,) if isinstance(field.default, tuple) else value})


@pytest.mark.parametrize(
    ("bounds", "value", "refusal"),
    [
        (Bounds(at_least=1), 0, "must be >= 1, got 0"),
        (Bounds(above=0), 0.0, "must be > 0, got 0"),
        (Bounds(above=0, below=1), 1.5, "must be > 0 and < 1, got 1.5"),
        (Bounds(at_least=0, at_most=2**32 - 1), 2**32, "must be >= 0 and <= 4294967295, got 4294967296"),
        (Bounds(), math.inf, "must be a finite number, got inf"),
        (Bounds(at_least=0), math.nan, "must be >= 0, got nan"),
    ],
)
def test_bounds_say_what_they_want(bounds: Bounds, value: float, refusal: str) -> None:
    assert bounds.refusal(value) == refusal


@pytest.mark.parametrize("value", [1, 0.5, 1e-12])
def test_numbers_inside_the_bounds_are_taken(value: float) -> None:
    assert Bounds(above=0, at_most=1).refusal(value) is None


def test_the_edges_of_the_bounds_are_taken_or_refused_as_declared() -> None:
    spec: Option = dataclasses.fields(TrainConfig().optim)[0].metadata[OPTION]  # batch_size: at least 1
    assert spec.bounds.refusal(1) is None and spec.bounds.refusal(0) is not None
    # 0 where it means something: no validation, no decay, every user, no epochs (a refit of a warm start)
    assert TrainConfig.of(eval_every=0, lr_decay_patience=0, eval_users=0, epochs=0).schedule.eval_every == 0
