"""The training loop: BPR over full-graph LightGCN propagation, early stopping on validation.

Read top to bottom: a config, a learning step, an evaluation, an explicit loop with checkpoints
that hold everything needed to resume (model, optimizer, epoch, best metric, config).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from binrec.trainer.data import Dataset
from binrec.trainer.distillation import DistillationConfig, RankingDistillation, load_teacher
from binrec.trainer.distributed import (
    SINGLE_PROCESS,
    Batch,
    World,
    any_rank,
    assert_in_step,
    broadcast_buffers,
    current_world,
    mean_over_ranks,
    rank_device,
    rank_share,
)
from binrec.trainer.evaluate import device_metrics
from binrec.trainer.graph import normalized_adjacency, to_torch_sparse
from binrec.trainer.hashing import HashedInput, graph_codes, group_indices, parameter_count
from binrec.trainer.model import EmbeddingTable, LightGCN
from binrec.trainer.objectives import BPR, LossKind, RankingLoss
from binrec.trainer.quantization import Quantizer, RefreshContext, make_quantizer
from binrec.trainer.sampling import BPRSampler, Sampling
from binrec.trainer.step_graph import GraphedStep
from binrec.trainer.warm_start import Stage, load_stage

log = logging.getLogger(__name__)

GradSync = Literal["allreduce", "ddp"]
GradCompression = Literal["none", "fp16", "bf16"]
COMPRESSION_HOOKS = {"fp16": default_hooks.fp16_compress_hook, "bf16": default_hooks.bf16_compress_hook}
COMPRESSION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainConfig:
    method: str = "fp"
    bits: int | None = None  # hq only: 1 or 2
    user_bits: int | None = None  # hq only: users' bits when above the items' (asymmetric codes)
    item_scales: bool = False  # hq only: each item's levels times its own magnitude (one float per item)
    pretrain_epochs: int = 200  # gnaq, or any method with warm_start: full-precision stage before quantization
    warm_start: bool = False  # start the quantized model from a full-precision pre-training stage
    dim: int = 64
    layers: int = 3
    lr: float = 1e-3
    batch_size: int = 2048  # per process: under torchrun a step trains on world_size × batch_size triples
    reg: float = 1e-4
    loss: LossKind = "bpr"  # trainer.objectives: BPR, or a sampled softmax over the batch's shared negatives
    temperature: float = 1.0  # the softmax's (and the distillation's student's) temperature
    softmax_negatives: int = 0  # shared negatives per step in the softmax and the distillation (0: the batch's)
    distillation: DistillationConfig | None = None  # rank like an fp teacher too (trainer.distillation)
    sampling: Sampling = "user"
    epochs: int = 400
    eval_every: int = 5
    patience: int = 5  # validations without gain (since the last learning-rate decay) before stopping
    lr_decay_patience: int = 0  # validations without gain before the learning rate decays; 0 = never
    lr_decay_factor: float = 0.2
    lr_decays: int = 2  # at most this many decays
    lr_milestones: tuple[int, ...] = ()  # replay: decay after these epochs (a refit repeats the selection run's)
    pretrain_lr_milestones: tuple[int, ...] = ()  # the same for the full-precision stage
    warm_start_from: Path | None = None  # a file saved by an fp run (trainer.warm_start) instead of a new fp stage
    warm_start_stage: Stage = "select"
    input_layer: str = "table"  # "table" (n × d embeddings) or "hash" (trainer.hashing: codes + decoder)
    hash_bits: int = 64
    hash_groups: int = 8
    hash_hidden: int = 0  # the decoder MLP's width (0: the embedding size)
    hash_depth: int = 1  # … and its hidden layers
    hash_residual: int = 0  # per-node residual dimensions beside the decoded code (0: none, no per-node parameters)
    hash_hops: tuple[int, ...] = (3,)  # message-passing steps the code sketches (index.hash_codes); several split it
    select_metric: str = "recall@20"
    seed: int = 2024
    device: str = "auto"
    max_minutes: float | None = None
    grad_sync: GradSync = "allreduce"  # under torchrun: how ranks average gradients (see parallel_objective)
    grad_compression: GradCompression = "none"  # under torchrun: gradients all-reduced as fp16/bf16
    cuda_graph: bool = True  # replay each step as a CUDA graph where it can be (see step_graph_applies)
    stop_at_metric: float | None = None  # stop once the selection metric reaches this (time-to-quality benchmarks)
    checkpoint_dir: Path | None = None
    resume: bool = False

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return str(value) if isinstance(value, Path) else value

        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class TrainResult:
    """The selected model and how it was reached (validation curve, timing, memory)."""

    model: LightGCN
    quantizer: Quantizer
    best_epoch: int
    best_valid: dict[str, float]
    epochs_trained: int = 0
    pretrain_epochs_selected: int | None = None  # the fp stage's validated epoch count (gnaq, warm start)
    lr_milestones: list[int] = field(default_factory=list)  # epochs after which the learning rate decayed
    pretrain_lr_milestones: list[int] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    peak_gpu_mb: float = 0.0
    device: str = "cpu"
    world_size: int = 1
    samples_per_second: float = 0.0  # BPR triples per second of stepping, all processes, epochs after the first
    first_epoch_seconds: float = 0.0  # the first epoch's stepping, start-up included
    target_seconds: float | None = None  # when the selection metric first reached config.stop_at_metric
    cuda_graph: bool = False  # whether full-size steps were replayed as a CUDA graph (trainer.step_graph)
    graphed_steps: int = 0  # how many steps were graph replays


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def ranking_loss(
    model: LightGCN,
    quantizer: Quantizer,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    reg: float,
    loss: RankingLoss = BPR,
    distillation: RankingDistillation | None = None,
) -> torch.Tensor:
    """The ranking loss (BPR by default) on the quantized representations, L2 on the batch's ego embeddings
    (LightGCN's form) and, with a teacher, the distillation term over the same quantized item vectors."""
    user_rep, item_rep = quantizer.node_representations(model)
    u = quantizer(user_rep[users], "user")
    if distillation is None:
        p = quantizer(item_rep[positives], "item")
        n = quantizer(item_rep[negatives], "item")
    else:  # the teacher's lists repeat items many times over: quantize every item once, then gather (quantizers
        # act on each row alone, so the values and gradients are the same)
        items = quantizer(item_rep, "item")
        p, n = items[positives], items[negatives]
    ego = model.ego(torch.cat([users, positives + model.n_users, negatives + model.n_users]))
    l2 = 0.5 * ego.pow(2).sum() / users.numel()
    total = loss(u, p, n, quantizer.score_scale) + reg * l2
    if distillation is not None:
        top = items[distillation.top_items[users]]
        shared, shared_ids = loss.shared(n), loss.shared(negatives)
        total = total + distillation(users, u, top, shared_ids, shared, quantizer.score_scale / loss.temperature)
    return total


@torch.no_grad()
def served_vectors(model: LightGCN, quantizer: Quantizer) -> tuple[torch.Tensor, torch.Tensor]:
    """What serving ranks with: the quantizer's dequantized codes (up to a global positive factor)."""
    model.eval()
    user_rep, item_rep = quantizer.node_representations(model)
    result = quantizer.served(user_rep, "user"), quantizer.served(item_rep, "item")
    model.train()
    return result


def integer_ranking(quantizer: Quantizer) -> bool:
    """Unscaled binary codes score as small integers: ranked exactly, ties by item id."""
    return quantizer.layout.is_binary and quantizer.scale_mode is None


def evaluate_valid(
    model: LightGCN, quantizer: Quantizer, data: Dataset, world: World = SINGLE_PROCESS
) -> dict[str, float]:
    users, items = served_vectors(model, quantizer)
    return device_metrics(users, items, data.valid, data.train, integer_scores=integer_ranking(quantizer), world=world)


class RankingObjective(nn.Module):
    """The training loss as one module, so DistributedDataParallel can average its gradients across ranks."""

    def __init__(
        self,
        model: LightGCN,
        quantizer: Quantizer,
        reg: float,
        loss: RankingLoss = BPR,
        distillation: RankingDistillation | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.quantizer = quantizer
        self.reg = reg
        self.loss = loss
        self.distillation = distillation

    def forward(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        return ranking_loss(
            self.model, self.quantizer, users, positives, negatives, self.reg, self.loss, self.distillation
        )


def parallel_objective(
    model: LightGCN,
    quantizer: Quantizer,
    reg: float,
    world: World,
    compression: GradCompression = "none",
    sync: GradSync = "allreduce",
    loss: RankingLoss = BPR,
    distillation: RankingDistillation | None = None,
) -> nn.Module:
    """The loss module; under torchrun with ``sync="ddp"`` wrapped in DistributedDataParallel.

    The graph is replicated, not synchronised. The embedding table's gradient is complete only at the
    end of the backward pass (it comes through every propagation layer), so DDP's bucketed all-reduce has
    no compute to overlap with, and its per-step hooks cost more than the all-reduce itself (0.6 against
    0.14 ms a step on two H200s, benchmarks/ddp_step_probe.py). The default ``allreduce`` sync therefore
    leaves the module alone and ``average_gradients`` all-reduces each gradient once after backward.
    """
    objective = RankingObjective(model, quantizer, reg, loss, distillation)
    if compression == "bf16" and world.distributed and model.adjacency.device.type != "cuda":
        raise ValueError("--grad-compression bf16 needs GPUs (NCCL); on CPUs (gloo) use fp16")
    if not world.distributed or sync == "allreduce":
        return objective
    # The adjacency (and a hashed input's codebook lookup) are sparse buffers every rank builds identically: DDP
    # must neither broadcast nor check them.
    sparse = [name for name, buffer in objective.named_buffers() if buffer.layout != torch.strided]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(  # type: ignore[no-untyped-call]
        objective, sorted({"model.adjacency", *sparse})
    )
    device = model.adjacency.device
    with warnings.catch_warnings():  # newer torch renames broadcast_buffers; the old name keeps init unsynced
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        parallel = DistributedDataParallel(
            objective,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
            gradient_as_bucket_view=True,  # no copy between the gradients and the all-reduce buffer
        )
    if compression != "none":
        parallel.register_comm_hook(None, COMPRESSION_HOOKS[compression])
    return parallel


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


@dataclass(frozen=True)
class PretrainingStage:
    """What a full-precision stage hands a quantized method (nothing, when there was none)."""

    ego: torch.Tensor | None = None
    seconds: float = 0.0
    epochs_selected: int | None = None
    lr_milestones: tuple[int, ...] = ()


def pretraining_stage(data: Dataset, config: TrainConfig) -> PretrainingStage:
    """Train `fp` (early-stopped, at most ``pretrain_epochs``; checkpoints under ``pretrain/``)."""
    if config.warm_start_from is not None:
        saved = load_stage(
            config.warm_start_from,
            config.warm_start_stage,
            dataset=data.name,
            n_nodes=data.n_users + data.n_items,
            dim=config.dim,
        )
        log.info("%s: warm start from %s (%s stage)", config.method, config.warm_start_from, config.warm_start_stage)
        return PretrainingStage(ego=saved.ego, seconds=saved.seconds, epochs_selected=saved.epochs)
    log.info("%s: full-precision pre-training (at most %d epochs)", config.method, config.pretrain_epochs)
    checkpoints = config.checkpoint_dir / "pretrain" if config.checkpoint_dir else None
    stage_config = dataclasses.replace(
        config,
        method="fp",
        bits=None,
        user_bits=None,
        item_scales=False,
        epochs=config.pretrain_epochs,
        checkpoint_dir=checkpoints,
        warm_start=False,
        distillation=None,  # the stage is the student's starting point, trained on the interactions alone
        lr_milestones=config.pretrain_lr_milestones,
        pretrain_lr_milestones=(),
    )
    result = train(data, stage_config)
    return PretrainingStage(
        ego=result.model.inputs().detach(),
        seconds=result.train_seconds,
        epochs_selected=result.best_epoch + 1,
        lr_milestones=tuple(result.lr_milestones),
    )


def hashed_input(data: Dataset, config: TrainConfig) -> HashedInput:
    """The hashed input layer over this training graph (Yeh et al.); codes are fixed, the decoder learns."""
    if config.method == "gnaq":
        raise ValueError("gnaq replaces the input layer with its own codebooks: use --input-layer table with it")
    if config.warm_start or config.warm_start_from is not None:
        raise ValueError("warm start copies an embedding table: not available with --input-layer hash yet")
    bits, medians = graph_codes(data.train, config.hash_bits, seed=config.seed, hops=config.hash_hops)
    layer = HashedInput(
        group_indices(bits, config.hash_groups),
        config.hash_bits // config.hash_groups,
        config.dim,
        user_medians=medians["user"],
        seed=config.seed,
        hidden=config.hash_hidden,
        depth=config.hash_depth,
        residual_dim=config.hash_residual,
        hops=config.hash_hops,
        propagation={k: v for k, v in medians.items() if k not in ("user", "item")},
    )
    log.info("hashed input layer: %d-bit codes of %s hops in %d groups, %d parameters", config.hash_bits,
             ",".join(map(str, config.hash_hops)), config.hash_groups, parameter_count(layer))  # fmt: skip
    return layer


INPUT_LAYER_FIELDS = ("input_layer", "hash_bits", "hash_groups", "hash_hops", "seed")  # what fixes the hash codes


def refuse_other_input_layer(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    """A checkpoint's hash codes come back with it: resuming under other code settings would train and export a
    model whose codes are not the ones its settings say."""
    if saved.get("input_layer", "table") != "hash" and config.input_layer != "hash":
        return
    old_defaults = {"input_layer": "table", "hash_hops": [0]}  # checkpoints from before those options

    def plain(value: object) -> object:  # the config's tuples come back from JSON as lists
        return list(value) if isinstance(value, tuple | list) else value

    for name in INPUT_LAYER_FIELDS:
        was, now = plain(saved.get(name, old_defaults.get(name))), plain(getattr(config, name))
        if was != now:
            raise ValueError(f"--resume: {path} was trained with {name} {was}, this run asks for {now}")


def match_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Set Adam's ``capturable`` after loading a state saved by another kind of run; its step counters move to
    where that mode keeps them (the parameter's device when capturable, the host otherwise)."""
    for group in optimizer.param_groups:
        group["capturable"] = capturable
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if isinstance(state.get("step"), torch.Tensor):
                where = parameter.device if capturable else torch.device("cpu")
                state["step"] = state["step"].to(device=where, dtype=torch.float32)


def step_graph_applies(config: TrainConfig, quantizer: Quantizer, device: torch.device, world: World) -> bool:
    """CUDA-graph steps need a CUDA device, a quantizer without host syncs, and no DDP (its hooks run on the host)."""
    return (
        config.cuda_graph
        and device.type == "cuda"
        and quantizer.capturable
        and not (world.distributed and config.grad_sync == "ddp")
    )


def average_gradients(
    parameters: list[torch.nn.Parameter], world: World, compression: GradCompression = "none"
) -> None:
    """Every rank's mean gradient, in place (``allreduce`` sync); ``compression`` sends it in 16 bits."""
    if not world.distributed:
        return
    for parameter in parameters:
        if parameter.grad is None:  # the same on every rank: they run the same graph
            continue
        sent = parameter.grad if compression == "none" else parameter.grad.to(COMPRESSION_DTYPES[compression])
        torch.distributed.all_reduce(sent)  # a sum: gloo has no average
        if sent is not parameter.grad:
            parameter.grad.copy_(sent)
        parameter.grad.div_(world.size)


def _decay_learning_rate(optimizer: torch.optim.Optimizer, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] *= factor
    return float(optimizer.param_groups[0]["lr"])


def _snapshot(model: LightGCN, quantizer: Quantizer) -> dict[str, Any]:
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "quantizer": {k: v.detach().clone() for k, v in quantizer.state_dict().items()},
    }


def train(data: Dataset, config: TrainConfig) -> TrainResult:
    """Train with early stopping on validation; return the best model (weights restored)."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    world = current_world()
    device = pick_device(rank_device(config.device, world))
    adjacency = to_torch_sparse(normalized_adjacency(data.train), device)
    model = LightGCN(data.n_users, data.n_items, config.dim, config.layers, adjacency).to(device)
    quantizer = make_quantizer(
        config.method,
        config.dim,
        config.layers,
        bits=config.bits,
        user_bits=config.user_bits,
        item_scales=config.item_scales,
    ).to(device)
    if config.input_layer == "hash":
        model.inputs = hashed_input(data, config).to(device)
    elif config.input_layer != "table":
        raise ValueError(f"input layer must be 'table' or 'hash', got {config.input_layer!r}")
    last_path = config.checkpoint_dir / "last.pt" if config.checkpoint_dir else None
    resuming = config.resume and last_path is not None and last_path.is_file()
    warm = config.method != "fp" and (
        quantizer.needs_pretraining or config.warm_start or config.warm_start_from is not None
    )
    stage = pretraining_stage(data, config) if warm and not resuming else PretrainingStage()
    ego = stage.ego.to(device) if stage.ego is not None else None  # a saved stage is loaded on the CPU
    propagated = None
    if ego is not None and isinstance(model.inputs, EmbeddingTable):
        with torch.no_grad():
            model.inputs.weight.copy_(ego)
            propagated = quantizer.represent(model())
    replacement = quantizer.input_layer(data.n_users + data.n_items, config.dim, ego, propagated)
    if replacement is not None:
        model.inputs = replacement.to(device)
    trained = [*model.parameters(), *quantizer.parameters()]
    graphed = step_graph_applies(config, quantizer, device, world)
    optimizer = torch.optim.Adam(trained, lr=config.lr, capturable=graphed)
    sampler = BPRSampler(data.train, device, mode=config.sampling)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)

    start_epoch, best_epoch, best_score, stale, epochs_trained = 0, -1, -math.inf, 0, 0
    best_state: dict[str, Any] | None = None
    best_valid: dict[str, float] = {}
    history: list[dict[str, float]] = []
    milestones: list[int] = []
    if resuming:
        assert last_path is not None
        checkpoint = torch.load(last_path, map_location=device, weights_only=False)
        refuse_other_input_layer(checkpoint.get("config", {}), config, last_path)
        model.load_state_dict(checkpoint["model"])
        quantizer.load_state_dict(checkpoint["quantizer"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        match_capturable(optimizer, graphed)  # the checkpoint's run may have stepped with(out) graphs
        start_epoch, best_epoch, best_score = (
            checkpoint["epoch"] + 1,
            checkpoint["best_epoch"],
            checkpoint["best_score"],
        )
        best_state, best_valid, history = checkpoint["best_state"], checkpoint["best_valid"], checkpoint["history"]
        stale, epochs_trained = checkpoint.get("stale", 0), start_epoch
        milestones = list(checkpoint.get("lr_milestones", []))
        if stale >= config.patience:
            start_epoch = config.epochs  # it had already stopped early: restore the best state and return
        generator.set_state(checkpoint["generator"].to(generator.get_state().device))
        log.info("resumed from %s at epoch %d", last_path, start_epoch)

    # Without validation data (a refit on all training data) the loop runs its epochs and keeps the last.
    validating = config.eval_every > 0 and data.valid.nnz > 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    deadline = started + config.max_minutes * 60 if config.max_minutes else math.inf
    if validating and stage.ego is not None:
        # The warm start itself is a candidate: fine-tuning that only loses is not selected.
        start = evaluate_valid(model, quantizer, data, world)
        history.append({"epoch": -1, "loss": math.nan, "seconds": 0.0, **start})
        log.info(json.dumps({"event": "valid", "epoch": -1, **start}))
        best_epoch, best_score, best_valid, best_state = (
            -1,
            start[config.select_metric],
            start,
            _snapshot(model, quantizer),
        )
    replay = set(config.lr_milestones)
    distillation = (
        load_teacher(
            config.distillation,
            config.warm_start_stage,
            dataset=data.name,
            n_users=data.n_users,
            adjacency=adjacency,
            layers=config.layers,
            seen=data.train,
        )
        if config.distillation is not None
        else None
    )
    objective = parallel_objective(
        model,
        quantizer,
        config.reg,
        world,
        config.grad_compression,
        config.grad_sync,
        RankingLoss(config.loss, config.temperature, config.softmax_negatives),
        distillation,
    )
    manual_sync = world.distributed and config.grad_sync == "allreduce"

    def eager_step(users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss: torch.Tensor = objective(users, positives, negatives)
        loss.backward()  # type: ignore[no-untyped-call]
        if manual_sync:
            average_gradients(trained, world, config.grad_compression)
        optimizer.step()
        quantizer.after_step(model)
        return loss.detach()

    step = (
        GraphedStep(eager_step, optimizer, config.batch_size, device, quantizer.graph_constants)
        if graphed
        else eager_step
    )
    # Throughput is counted over the epochs after this run's first: that one also pays one-time start-up
    # (CUDA-graph warm-up and capture, cuSPARSE/NCCL set-up, ranks arriving at the first all-reduce apart).
    step_seconds, samples, target_seconds = 0.0, 0, None
    first_epoch_seconds, first_epoch_samples = 0.0, 0
    progress = tqdm(
        range(start_epoch, config.epochs),
        desc=f"train {config.method}",
        unit="epoch",
        dynamic_ncols=True,
        disable=not world.main,
    )

    def draw_epoch() -> tuple[list[Batch], list[Batch]]:
        batches = sampler.epoch(config.batch_size * world.size, generator)  # identical on every rank
        return batches, rank_share(batches, world)

    resume_generator = generator.get_state()  # what a resumed run draws its next epoch from
    upcoming = draw_epoch() if start_epoch < config.epochs else ([], [])
    for epoch in progress:
        epochs_trained = epoch + 1
        stepping = time.perf_counter()
        total = torch.zeros((), device=device)
        batches, mine = upcoming
        for users, positives, negatives in mine:
            total += step(users, positives, negatives)
        # The next epoch is drawn before this one's steps are waited for: on a GPU its host work (sampling,
        # splitting) overlaps them, where it used to leave the GPU idle at every epoch start.
        resume_generator = generator.get_state()
        upcoming = draw_epoch() if epoch + 1 < config.epochs else ([], [])
        queued = time.perf_counter() - stepping
        mean_loss = float(mean_over_ranks(total / len(mine), world))  # a sync point, once per epoch
        window = time.perf_counter() - stepping
        trained_samples = sum(batch[0].numel() for batch in batches if batch[0].numel() >= world.size)
        log.debug(json.dumps({"event": "epoch", "epoch": epoch, "rank": world.rank, "seconds": round(window, 5),
                              "host_seconds": round(queued, 5), "samples": trained_samples}))  # fmt: skip
        if epoch == start_epoch:
            first_epoch_seconds, first_epoch_samples = window, trained_samples
        else:
            step_seconds, samples = step_seconds + window, samples + trained_samples
        refreshed = quantizer.refresh(RefreshContext(model=model, batches=batches, epoch=epoch))
        if refreshed:
            broadcast_buffers(quantizer, world)
            quantizer.buffers_synced()
            log.info(json.dumps({"event": "refresh", "epoch": epoch, **refreshed}))
        last_epoch = epoch + 1 == config.epochs or any_rank(time.perf_counter() > deadline, world, device)
        if not validating:
            best_epoch = epoch
        elif (epoch + 1) % config.eval_every == 0 or last_epoch:
            assert_in_step([model, quantizer], world)
            valid = evaluate_valid(model, quantizer, data, world)
            elapsed = time.perf_counter() - started
            history.append({"epoch": epoch, "loss": mean_loss, "seconds": elapsed, **valid})
            score = valid[config.select_metric]
            log.info(json.dumps({"event": "valid", "epoch": epoch, "loss": round(mean_loss, 5), **valid}))
            if score > best_score:
                best_epoch, best_score, best_valid, stale = epoch, score, valid, 0
                best_state = _snapshot(model, quantizer)
            else:
                stale += 1
                if (
                    config.lr_decay_patience
                    and stale >= config.lr_decay_patience
                    and len(milestones) < config.lr_decays
                ):
                    lr = _decay_learning_rate(optimizer, config.lr_decay_factor)
                    milestones.append(epoch)
                    stale = 0
                    log.info(json.dumps({"event": "lr", "epoch": epoch, "lr": lr}))
            progress.set_postfix(loss=f"{mean_loss:.4f}", **{config.select_metric: f"{score:.4f}"}, best=best_epoch)
            if config.stop_at_metric is not None and score >= config.stop_at_metric and target_seconds is None:
                target_seconds = elapsed
            if last_path is not None and world.main:
                _save_checkpoint(
                    last_path,
                    {
                        "config": config.to_json(),
                        "model": model.state_dict(),
                        "quantizer": quantizer.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                        "best_epoch": best_epoch,
                        "best_score": best_score,
                        "stale": stale,
                        "lr_milestones": milestones,
                        "best_state": best_state,
                        "best_valid": best_valid,
                        "history": history,
                        "generator": resume_generator,
                    },
                )
            if stale >= config.patience:
                log.info("early stop at epoch %d: no %s gain in %d evaluations", epoch, config.select_metric, stale)
                break
            if target_seconds is not None:
                log.info("stop at epoch %d: %s reached %.4f", epoch, config.select_metric, config.stop_at_metric)
                break
        if epoch in replay:
            lr = _decay_learning_rate(optimizer, config.lr_decay_factor)
            milestones.append(epoch)
            log.info(json.dumps({"event": "lr", "epoch": epoch, "lr": lr}))
        if any_rank(time.perf_counter() > deadline, world, device):
            log.info("stopping at epoch %d: time budget of %.1f min reached", epoch, config.max_minutes)
            break
    progress.close()
    if best_state is not None:
        model.load_state_dict(best_state["model"])
        quantizer.load_state_dict(best_state["quantizer"])
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return TrainResult(
        model=model,
        quantizer=quantizer,
        best_epoch=best_epoch,
        best_valid=best_valid,
        epochs_trained=epochs_trained,
        pretrain_epochs_selected=stage.epochs_selected,
        lr_milestones=milestones,
        pretrain_lr_milestones=list(stage.lr_milestones),
        history=history,
        train_seconds=stage.seconds + time.perf_counter() - started,
        peak_gpu_mb=peak,
        device=device_name(device),
        world_size=world.size,
        samples_per_second=(
            samples / step_seconds if step_seconds else first_epoch_samples / max(first_epoch_seconds, 1e-9)
        ),
        first_epoch_seconds=first_epoch_seconds,
        target_seconds=target_seconds,
        cuda_graph=isinstance(step, GraphedStep) and not step.failed,
        graphed_steps=step.replays if isinstance(step, GraphedStep) else 0,
    )


def refit(data: Dataset, config: TrainConfig, selected: TrainResult) -> TrainResult:
    """Retrain on train + validation for the number of epochs validation selected.

    Validation decides *how long* to train; the final model then learns from every training
    interaction, as a deployed model would. Test data is still touched only once, after this.
    """
    empty = sp.csr_matrix(data.valid.shape, dtype=data.valid.dtype)
    merged = dataclasses.replace(data, train=data.seen(), valid=empty)
    refit_config = dataclasses.replace(
        config,
        epochs=selected.best_epoch + 1,
        pretrain_epochs=selected.pretrain_epochs_selected or config.pretrain_epochs,
        lr_milestones=tuple(m for m in selected.lr_milestones if m <= selected.best_epoch),
        pretrain_lr_milestones=tuple(selected.pretrain_lr_milestones),
        warm_start_stage="refit",
        eval_every=0,
        resume=False,
        checkpoint_dir=None,
        max_minutes=None,
        stop_at_metric=None,
    )
    log.info("refit on train + validation for %d epochs", refit_config.epochs)
    result = train(merged, refit_config)
    return dataclasses.replace(
        result,
        best_epoch=selected.best_epoch,
        best_valid=selected.best_valid,
        history=selected.history,
        epochs_trained=selected.epochs_trained + result.epochs_trained,
        train_seconds=selected.train_seconds + result.train_seconds,
        peak_gpu_mb=max(selected.peak_gpu_mb, result.peak_gpu_mb),
        target_seconds=selected.target_seconds,
    )
