"""What one training run is asked to do, in sections that follow the parts of the trainer they steer.

Every section field with an ``option(...)`` is also a ``recsys-train`` option of the same name (``--hash-bits``
sets ``input.hash_bits``); the CLI builds each section from its parsed arguments by field name. Option names
are unique across sections, so a run can also be written flat, as tests and benchmarks do::

    config = TrainConfig.of(method="hq", bits=1, dim=32, epochs=20, device="cpu")
    resumed = config.with_options(epochs=40, resume=True)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainer.distillation import DistillationConfig
from trainer.distributed import GradCompression, GradSync
from trainer.objectives import LossKind
from trainer.options import check_bounds, check_option, option
from trainer.quantization import METHODS, bit_choices, method_choices, offering
from trainer.sampling import Sampling
from trainer.warm_start import Stage

InputLayer = Literal["table", "hash"]


@dataclass(frozen=True)
class ModelConfig:
    """The LightGCN and the quantizer whose codes it serves."""

    method: str = option(
        "fp", "; ".join(f"{m.name}: {m.description}" for m in METHODS.values()), choices=method_choices()
    )
    bits: int | None = option(
        None, f"code bits per dimension ({offering(lambda m: m.chooses_bits)} only)", choices=bit_choices()
    )
    user_bits: int | None = option(
        None,
        f"{offering(lambda m: m.user_bits)} only: users' code bits when above --bits (asymmetric codes: 2-bit users "
        "score 1-bit items exactly; the index keeps the items' bits)",
        choices=bit_choices(),
    )
    item_scales: bool = option(
        False,
        f"{offering(lambda m: m.item_scales)} only: each item's levels times its own magnitude (one float per item "
        "beside its code; served by Hamming candidates re-ranked exactly with it)",
    )
    dim: int = option(64, "embedding size (a multiple of 8 for binary codes)", at_least=1)
    layers: int = option(3, "LightGCN propagation layers K", at_least=1)


@dataclass(frozen=True)
class InputLayerConfig:
    """Where the ego embeddings come from: a table, or fixed adjacency hash codes and a decoder (trainer.hashing)."""

    input_layer: InputLayer = option(
        "table",
        "ego embeddings from an n × d table, or decoded from fixed adjacency hash codes (Yeh et al. KDD'22)",
    )
    hash_bits: int = option(64, "hash code bits per node", at_least=1)
    hash_groups: int = option(8, "codebooks the code splits into", at_least=1)
    hash_hidden: int = option(0, "width of the hashed decoder's MLP (0: the embedding size)", at_least=0)
    hash_depth: int = option(1, "hidden layers of that MLP", at_least=1)
    hash_residual: int = option(0, "per-node residual dimensions beside the decoded code (0: none)", at_least=0)
    decode_chunk: int = option(
        0,
        "decode the hashed input this many nodes at a time, each chunk again in the backward: the decoder then "
        "holds one chunk's activations, not a few n × d floats (0: all nodes at once)",
        at_least=0,
    )
    hash_hops: tuple[int, ...] = option(
        (3,),
        "message-passing steps the hash code sketches: 0 the raw adjacency row, h >= 1 the row of the "
        "normalised adjacency smoothed h times (users and items share one projection); several split the bits",
        at_least=0,
    )


@dataclass(frozen=True)
class PretrainingConfig:
    """A full-precision stage a quantized method starts from (gnaq always; others with a warm start)."""

    warm_start: bool = option(
        False, "start a quantized method from a full-precision pre-training stage (gnaq always does)"
    )
    warm_start_from: Path | None = option(
        None,
        "start a quantized method from the file an fp run wrote with --save-warm-start (implies --warm-start)",
    )
    pretrain_epochs: int = option(
        200, "most epochs of the full-precision stage (gnaq, --warm-start); it stops early on validation", at_least=1
    )
    warm_start_stage: Stage = "select"  # which of a saved file's stages: a refit starts from the fp run's refit
    pretrain_lr_milestones: tuple[int, ...] = ()  # the stage's learning-rate decays to replay (a refit's)


@dataclass(frozen=True)
class OptimConfig:
    """The objective and the steps that minimise it."""

    batch_size: int = option(
        2048, "BPR triples per step and process (under torchrun a step trains world size × this many)", at_least=1
    )
    lr: float = option(1e-3, "Adam learning rate (0: the weights stay as they start)", at_least=0)
    reg: float = option(1e-4, "L2 weight on the batch's ego embeddings", at_least=0)
    loss: LossKind = option(
        "bpr", "'bpr': each positive against its one negative; 'softmax': against all of the batch's negatives"
    )
    temperature: float = option(
        1.0,
        "divides the softmax's logits (smaller: harder negatives weigh more); also the distilled student's",
        above=0,
    )
    softmax_negatives: int = option(
        0,
        "negatives each user is compared with in the softmax and the distillation: the first N of the "
        "batch's (0: all --batch-size of them)",
        at_least=0,
    )
    sampling: Sampling = option(
        "user",
        "BPR positives: 'user' draws users uniformly (LightGCN), 'interaction' visits every pair once per epoch",
    )
    seed: int = option(2024, "seed for init, sampling and the split", at_least=0, at_most=2**32 - 1)


@dataclass(frozen=True)
class ScheduleConfig:
    """How long to train: validation, early stopping, learning-rate decay on a plateau, budgets."""

    epochs: int = option(400, "maximum epochs (0: none, the starting point is exported: a warm start)", at_least=0)
    eval_every: int = option(5, "epochs between validations (0: never)", at_least=0)
    patience: int = option(5, "validations without gain before stopping", at_least=1)
    lr_decay_patience: int = option(
        0,
        "validations without gain before the learning rate is multiplied by --lr-decay-factor (0: never)",
        at_least=0,
    )
    lr_decay_factor: float = option(0.2, "learning-rate decay", above=0, below=1)
    lr_decays: int = option(2, "most learning-rate decays", at_least=0)
    max_minutes: float | None = option(None, "stop training after this wall time", above=0)
    eval_users: int = option(
        0,
        "rank a seeded uniform sample of this many users (the same at every validation; test ranks a sample of "
        "its own users) and record Recall/NDCG's standard error across them; 0: every user with held-out items",
        at_least=0,
    )
    stop_at_metric: float | None = option(
        None,
        "stop once validation Recall@20 reaches this (records target_seconds: time-to-quality benchmarks)",
        at_least=0,
        at_most=1,
    )
    select_metric: str = "recall@20"  # the validation metric that selects the epoch
    lr_milestones: tuple[int, ...] = ()  # decay after these epochs too: a refit replays the selection run's


@dataclass(frozen=True)
class RuntimeConfig:
    """Where the steps run: the device, how torchrun's ranks share gradients, CUDA-graph replay."""

    grad_sync: GradSync = option(
        "allreduce", "under torchrun: one all-reduce per gradient after backward, or DistributedDataParallel's hooks"
    )
    grad_compression: GradCompression = option(
        "none", "under torchrun: all-reduce gradients in 16 bits (half the traffic, slightly noisier steps)"
    )
    cuda_graph: bool = option(
        True,
        "on a GPU, launch every step's kernels from Python instead of replaying one captured CUDA graph",
        flag="--no-cuda-graph",
    )
    device: str = option("auto", "'auto' (CUDA when present), 'cpu' or 'cuda[:N]'")


@dataclass(frozen=True)
class CheckpointConfig:
    """Resumable checkpoints (trainer.checkpoint)."""

    checkpoint_dir: Path | None = option(None, "write resumable checkpoints here")
    resume: bool = option(False, "resume from --checkpoint-dir/last.pt")


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Sections are built from the CLI's option groups (trainer.cli) or flat with ``of``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputLayerConfig = field(default_factory=InputLayerConfig)
    pretraining: PretrainingConfig = field(default_factory=PretrainingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distillation: DistillationConfig | None = None  # rank like an fp teacher too (trainer.distillation)

    @classmethod
    def of(cls, **options: object) -> TrainConfig:
        """The defaults, with these options (by option name) in whichever section holds them."""
        return cls().with_options(**options)

    def with_options(self, **options: object) -> TrainConfig:
        """A copy with these options replaced, each in the section that holds it.

        Each value is checked against its field's annotation here, since the fields are the only list of
        options: a misspelt name or a value of the wrong type is a TypeError naming the option.
        """
        changes: dict[str, Any] = dict(options)
        replaced: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            hints = typing.get_type_hints(type(section))
            fields = {f.name: f for f in dataclasses.fields(section) if f.name in changes}
            mine = {name: changes.pop(name) for name in fields}
            for given, value in mine.items():
                check_option(given, hints[given], value)
                check_bounds(fields[given], value)
            if mine:
                replaced[name] = dataclasses.replace(section, **mine)
        if "distillation" in changes:
            teacher = changes.pop("distillation")
            check_option("distillation", typing.get_type_hints(TrainConfig)["distillation"], teacher)
            replaced["distillation"] = teacher
        if changes:
            raise TypeError(f"TrainConfig has no option {', '.join(sorted(changes))}")
        return dataclasses.replace(self, **replaced)

    def flat(self) -> dict[str, Any]:
        """Every option by name: the inverse of ``of``."""
        values: dict[str, Any] = {}
        for name in SECTIONS:
            section = getattr(self, name)
            values |= {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
        return values | {"distillation": self.distillation}

    def to_json(self) -> dict[str, Any]:
        """The options by name as JSON values: what checkpoints and bundle manifests record (flat, so records
        written before the sections keep their keys and older checkpoints resume)."""

        def plain(value: Any) -> Any:
            if isinstance(value, DistillationConfig):
                return {k: plain(v) for k, v in dataclasses.asdict(value).items()}
            return str(value) if isinstance(value, Path) else value

        return {name: plain(value) for name, value in self.flat().items()}


SECTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "distillation")
