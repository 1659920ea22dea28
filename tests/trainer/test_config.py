"""The training config: sections built from the CLI by option name, flat construction, the recorded JSON."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest
import torch

from trainer.cli import build_parser, train_config
from trainer.config import SECTIONS, OptimConfig, TrainConfig
from trainer.distillation import DistillationConfig
from trainer.quantization import check_options
from trainer.warm_start import SavedStage, save_stages


def option_hints() -> dict[str, object]:
    """Every option by name with its annotation, read from the sections' fields (names are unique across them)."""
    config = TrainConfig()
    hints = {"distillation": typing.get_type_hints(TrainConfig)["distillation"]}
    for section in SECTIONS:
        fields = typing.get_type_hints(type(getattr(config, section)))
        assert not set(fields) & set(hints), f"{section} repeats an option name"
        hints |= fields
    return hints


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"dim": "64"}, "option dim takes int, got '64'"),
        ({"dim": True}, "option dim takes int, got True"),
        ({"lr": "fast"}, "option lr takes float, got 'fast'"),
        ({"bits": 1.0}, "option bits takes"),
        ({"input_layer": "dense"}, "option input_layer takes 'table' or 'hash', got 'dense'"),
        ({"hash_hops": [0, 3]}, "option hash_hops takes"),
        ({"hash_hops": (0, "3")}, "option hash_hops takes"),
        ({"checkpoint_dir": "runs"}, "option checkpoint_dir takes"),
        ({"distillation": "teacher.pt"}, "option distillation takes"),
    ],
)
def test_a_flat_option_of_the_wrong_type_is_refused_by_name(options: dict[str, object], error: str) -> None:
    with pytest.raises(TypeError, match=re.escape(error)):
        TrainConfig.of(**options)
    with pytest.raises(TypeError, match=re.escape(error)):
        TrainConfig().with_options(**options)


def test_flat_options_of_the_declared_types_are_taken() -> None:
    config = TrainConfig.of(lr=1, bits=None, hash_hops=(0, 3), checkpoint_dir=None, max_minutes=2)  # int for float
    assert (config.optim.lr, config.model.bits, config.input.hash_hops, config.schedule.max_minutes) == (
        1,
        None,
        (0, 3),
        2,
    )


def test_of_puts_each_option_in_its_section() -> None:
    config = TrainConfig.of(method="hq", bits=1, hash_hops=(0, 2), lr=5e-3, patience=3, grad_sync="ddp", resume=True)
    assert (config.model.method, config.model.bits, config.input.hash_hops) == ("hq", 1, (0, 2))
    assert (config.optim.lr, config.schedule.patience, config.runtime.grad_sync) == (5e-3, 3, "ddp")
    assert config.checkpoint.resume and config.optim == dataclasses.replace(OptimConfig(), lr=5e-3)
    again = config.with_options(lr=1e-3, epochs=7)
    assert again.optim.lr == 1e-3 and again.schedule.epochs == 7 and again.model == config.model
    assert config.optim.lr == 5e-3  # sections are frozen: with_options copies
    with pytest.raises(TypeError, match="no option learning_rate"):
        TrainConfig.of(learning_rate=1.0)


def test_cli_defaults_are_the_config_defaults_and_options_land_by_name(tmp_path: Path) -> None:
    parser = build_parser()
    assert train_config(parser.parse_args([])) == TrainConfig()
    teacher = tmp_path / "fp.pt"
    stage = SavedStage(ego=torch.zeros(3, 2), seconds=1.0, epochs=1)
    save_stages(teacher, "ml-100k", {"select": stage}, temperature=0.2)  # a softmax model's, at T = 0.2
    args = parser.parse_args(
        ["--method", "hq", "--bits", "2", "--hash-hops", "0", "3", "--no-cuda-graph", "--epochs", "9", "--loss",
         "softmax", "--temperature", "0.5", "--teacher", str(teacher), "--checkpoint-dir", str(tmp_path), "--resume"]
    )  # fmt: skip
    expected = TrainConfig.of(
        method="hq", bits=2, hash_hops=(0, 3), cuda_graph=False, epochs=9, loss="softmax", temperature=0.5,
        checkpoint_dir=tmp_path, resume=True, distillation=DistillationConfig(teacher, temperature=0.2),
    )  # fmt: skip
    assert train_config(args) == expected  # the teacher is read at its own temperature, not the student's


def test_json_is_flat_by_option_name_as_checkpoints_and_manifests_record_it(tmp_path: Path) -> None:
    config = TrainConfig.of(method="hq", bits=2, checkpoint_dir=tmp_path, distillation=DistillationConfig(tmp_path))
    recorded = json.loads(json.dumps(config.to_json()))
    assert set(recorded) == set(option_hints())
    assert recorded["method"] == "hq" and recorded["bits"] == 2 and recorded["checkpoint_dir"] == str(tmp_path)
    assert recorded["distillation"] == {"teacher": str(tmp_path), "weight": 1.0, "top": 20, "temperature": 1.0}
    assert TrainConfig.of(**config.flat()) == config  # the inverse of flat


@pytest.mark.parametrize(
    ("method", "dim", "options", "error"),
    [
        ("ste", 12, {}, "--dim must be a multiple of 8 for binary codes, got 12"),
        ("hq", 20, {"bits": 2}, "--dim must be a multiple of 8"),
        ("fp", 12, {}, None),  # float vectors: any size
        ("ste", 16, {"bits": 2}, "apply to hq only"),
        ("hq", 16, {"bits": 2, "user_bits": 1}, "at least the items' bits"),
        ("bigear", 16, {"item_scales": True}, "applies to hq only"),
        ("nope", 16, {}, "unknown method 'nope'"),
    ],
)
def test_method_options_are_checked_without_building_a_quantizer(
    method: str, dim: int, options: dict[str, typing.Any], error: str | None
) -> None:
    if error is None:
        check_options(method, dim, **options)
        return
    with pytest.raises(ValueError, match=error):
        check_options(method, dim, **options)
