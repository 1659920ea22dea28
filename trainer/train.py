"""The training loop: BPR over full-graph LightGCN propagation, early stopping on validation.

Read ``train`` top to bottom: build the model and its quantizer, start it (from a checkpoint, a full-precision
stage, or fresh), then an explicit loop of epochs (steps, the quantizer's refresh, a validation that selects
the epoch, a checkpoint) and finally the selected weights restored. The pieces live beside it: the config
(trainer.config), checkpoints (trainer.checkpoint), stopping rules (trainer.stopping), throughput
(trainer.metering), data-parallel gradients (trainer.distributed) and CUDA-graph steps (trainer.step_graph).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from tqdm import tqdm

from trainer.checkpoint import Progress, load_checkpoint, save_checkpoint
from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.distillation import RankingDistillation, load_teacher
from trainer.distributed import (
    SINGLE_PROCESS,
    Batch,
    World,
    assert_in_step,
    average_gradients,
    broadcast_buffers,
    current_world,
    mean_over_ranks,
    rank_device,
    rank_share,
)
from trainer.evaluate import device_metrics, evaluation_users
from trainer.graph import normalized_adjacency, to_torch_sparse
from trainer.hashing import HashedInput, graph_codes, group_indices, parameter_count
from trainer.metering import Throughput, host_peak_gib, peak_memory_mb, reset_peak_memory
from trainer.model import EmbeddingTable, LightGCN
from trainer.objectives import RankingLoss, parallel_objective
from trainer.quantization import Quantizer, RefreshContext, make_quantizer
from trainer.sampling import BPRSampler
from trainer.step_graph import GraphedStep, Step, step_graph_applies
from trainer.stopping import EarlyStopping, TimeBudget, Weights
from trainer.warm_start import load_stage

log = logging.getLogger(__name__)


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
    peak_gpu_reserved_mb: float = 0.0  # the allocator's peak: allocations plus what it cached (trainer.metering)
    device: str = "cpu"
    world_size: int = 1
    samples_per_second: float = 0.0  # BPR triples per second of stepping, all processes, epochs after the first
    first_epoch_seconds: float = 0.0  # the first epoch's stepping, start-up included
    target_seconds: float | None = None  # when the selection metric first reached config.stop_at_metric
    cuda_graph: bool = False  # whether full-size steps were replayed as a CUDA graph (trainer.step_graph)
    graphed_steps: int = 0  # how many steps were graph replays


def train(data: Dataset, config: TrainConfig) -> TrainResult:
    """Train with early stopping on validation; return the best model (weights restored)."""
    schedule = config.schedule
    torch.manual_seed(config.optim.seed)
    np.random.seed(config.optim.seed)
    world = current_world()
    device = pick_device(rank_device(config.runtime.device, world))
    model, quantizer = build_model(data, config, device)
    last_path = config.checkpoint.checkpoint_dir / "last.pt" if config.checkpoint.checkpoint_dir else None
    resume_from = last_path if config.checkpoint.resume and last_path and last_path.is_file() else None
    warm = needs_stage(config, quantizer) and resume_from is None  # a checkpoint already holds the warm start
    stage = pretraining_stage(data, config) if warm else PretrainingStage()
    start_from_stage(model, quantizer, stage, device)
    graphed = step_graph_applies(config.runtime, quantizer, device, world)
    optimizer = torch.optim.Adam([*model.parameters(), *quantizer.parameters()], lr=config.optim.lr, capturable=graphed)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.optim.seed)
    progress = Progress(EarlyStopping(schedule))
    if resume_from is not None:
        progress = load_checkpoint(resume_from, config, model, quantizer, optimizer, generator, capturable=graphed)
    stopping, epochs_trained = progress.stopping, progress.start_epoch
    first = schedule.epochs if stopping.stopped else progress.start_epoch  # a run that had stopped early: return

    # Without validation data (a refit on all training data) the loop runs its epochs and keeps the last.
    validating = schedule.eval_every > 0 and data.valid.nnz > 0
    ranked = evaluation_users(data.valid, schedule.eval_users, config.optim.seed) if validating else None
    reset_peak_memory(device)
    started = time.perf_counter()
    budget = TimeBudget(schedule.max_minutes, world, device)
    if validating and stage.ego is not None:  # the warm start itself is a candidate: fine-tuning that only loses
        stopping.started(evaluate_valid(model, quantizer, data, world, ranked), snapshot(model, quantizer))
    step = training_step(data, config, model, quantizer, optimizer, world, graphed)
    feed = EpochFeed(BPRSampler(data.train, device, mode=config.optim.sampling), generator, config, world, first)
    meter = Throughput()
    bar = tqdm(range(first, schedule.epochs), desc=f"train {config.model.method} d={config.model.dim}", unit="epoch",
               dynamic_ncols=True, disable=not world.main)  # fmt: skip
    for epoch in bar:
        epochs_trained = epoch + 1
        mean_loss, batches = train_epoch(step, feed, epoch, meter, world, device)
        release_graph(step, large_only=True)  # the refresh propagates the whole graph too
        refresh(quantizer, model, batches, epoch, world)
        last_epoch = epoch + 1 == schedule.epochs or budget.spent()
        if not validating:
            stopping.best.epoch = epoch
        elif (epoch + 1) % schedule.eval_every == 0 or last_epoch:
            assert_in_step([model, quantizer], world)
            release_graph(step)
            valid = evaluate_valid(model, quantizer, data, world, ranked)
            seconds = time.perf_counter() - started
            stopping.validated(epoch, mean_loss, seconds, valid, lambda: snapshot(model, quantizer), optimizer)
            score = f"{valid[schedule.select_metric]:.4f}"
            bar.set_postfix(loss=f"{mean_loss:.4f}", **{schedule.select_metric: score}, best=stopping.best.epoch)
            if last_path is not None and world.main:
                save_checkpoint(last_path, config=config, model=model, quantizer=quantizer, optimizer=optimizer,
                                epoch=epoch, stopping=stopping, generator=feed.resume_state)  # fmt: skip
            if (reason := stopping.stop_reason(epoch)) is not None:
                log.info(reason)
                break
        stopping.replay(epoch, optimizer)
        if budget.spent():
            log.info("stopping at epoch %d: time budget of %.1f min reached", epoch, schedule.max_minutes)
            break
    bar.close()
    release_graph(step)  # the export, or the student after this stage, needs the room (and the last cache)
    if stopping.best.weights is not None:
        model.load_state_dict(stopping.best.weights["model"])
        quantizer.load_state_dict(stopping.best.weights["quantizer"])
    return TrainResult(
        model=model,
        quantizer=quantizer,
        best_epoch=stopping.best.epoch,
        best_valid=stopping.best.valid,
        epochs_trained=epochs_trained,
        pretrain_epochs_selected=stage.epochs_selected,
        lr_milestones=stopping.milestones,
        pretrain_lr_milestones=list(stage.lr_milestones),
        history=stopping.history,
        train_seconds=stage.seconds + time.perf_counter() - started,
        peak_gpu_mb=peak_memory_mb(device),
        peak_gpu_reserved_mb=peak_memory_mb(device, reserved=True),
        device=device_name(device),
        world_size=world.size,
        samples_per_second=meter.samples_per_second,
        first_epoch_seconds=meter.first_epoch_seconds,
        target_seconds=stopping.target_seconds,
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
    refit_config = config.with_options(
        epochs=selected.best_epoch + 1,
        pretrain_epochs=selected.pretrain_epochs_selected or config.pretraining.pretrain_epochs,
        lr_milestones=tuple(m for m in selected.lr_milestones if m <= selected.best_epoch),
        pretrain_lr_milestones=tuple(selected.pretrain_lr_milestones),
        warm_start_stage="refit",
        eval_every=0,
        resume=False,
        checkpoint_dir=None,
        max_minutes=None,
        stop_at_metric=None,
    )
    log.info("refit on train + validation for %d epochs", refit_config.schedule.epochs)
    result = train(merged, refit_config)
    return dataclasses.replace(
        result,
        best_epoch=selected.best_epoch,
        best_valid=selected.best_valid,
        history=selected.history,
        epochs_trained=selected.epochs_trained + result.epochs_trained,
        train_seconds=selected.train_seconds + result.train_seconds,
        peak_gpu_mb=max(selected.peak_gpu_mb, result.peak_gpu_mb),
        peak_gpu_reserved_mb=max(selected.peak_gpu_reserved_mb, result.peak_gpu_reserved_mb),
        target_seconds=selected.target_seconds,
    )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not re.fullmatch(r"cuda(:[0-9]+)?", name):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    device = torch.device(name)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA devices")
    return device


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def build_model(data: Dataset, config: TrainConfig, device: torch.device) -> tuple[LightGCN, Quantizer]:
    """LightGCN over this training graph (its input layer a table or hashed codes) and the method's quantizer."""
    adjacency = to_torch_sparse(normalized_adjacency(data.train), device)
    model = LightGCN(data.n_users, data.n_items, config.model.dim, config.model.layers, adjacency).to(device)
    quantizer = make_quantizer(
        config.model.method,
        config.model.dim,
        config.model.layers,
        bits=config.model.bits,
        user_bits=config.model.user_bits,
        item_scales=config.model.item_scales,
    ).to(device)
    if config.input.input_layer == "hash":
        model.inputs = hashed_input(data, config).to(device)
    elif config.input.input_layer != "table":
        raise ValueError(f"input layer must be 'table' or 'hash', got {config.input.input_layer!r}")
    return model, quantizer


def hashed_input(data: Dataset, config: TrainConfig) -> HashedInput:
    """The hashed input layer over this training graph (Yeh et al.); codes are fixed, the decoder learns."""
    if config.model.method == "gnaq":
        raise ValueError("gnaq replaces the input layer with its own codebooks: use --input-layer table with it")
    if config.pretraining.warm_start or config.pretraining.warm_start_from is not None:
        raise ValueError("warm start copies an embedding table: not available with --input-layer hash yet")
    hashing, seed = config.input, config.optim.seed
    bits, medians = graph_codes(data.train, hashing.hash_bits, seed=seed, hops=hashing.hash_hops)
    layer = HashedInput(
        group_indices(bits, hashing.hash_groups),
        hashing.hash_bits // hashing.hash_groups,
        config.model.dim,
        user_medians=medians["user"],
        seed=seed,
        hidden=hashing.hash_hidden,
        depth=hashing.hash_depth,
        residual_dim=hashing.hash_residual,
        hops=hashing.hash_hops,
        codebook_backward="bag" if hashing.decode_chunk else "lookup",
        decode_chunk=hashing.decode_chunk,
        propagation={k: v for k, v in medians.items() if k not in ("user", "item")},
    )
    log.info("hashed input layer: %d-bit codes of %s hops in %d groups, %d parameters (host peak so far %.2f GiB)",
             hashing.hash_bits, ",".join(map(str, hashing.hash_hops)), hashing.hash_groups, parameter_count(layer),
             host_peak_gib())  # fmt: skip
    return layer


@dataclass(frozen=True)
class PretrainingStage:
    """What a full-precision stage hands a quantized method (nothing, when there was none)."""

    ego: torch.Tensor | None = None
    seconds: float = 0.0
    epochs_selected: int | None = None
    lr_milestones: tuple[int, ...] = ()


def needs_stage(config: TrainConfig, quantizer: Quantizer) -> bool:
    """A quantized method starts from full precision when it needs to (gnaq) or is asked to (warm start)."""
    warm = config.pretraining.warm_start or config.pretraining.warm_start_from is not None
    return config.model.method != "fp" and (quantizer.needs_pretraining or warm)


def pretraining_stage(data: Dataset, config: TrainConfig) -> PretrainingStage:
    """Train `fp` (early-stopped, at most ``pretrain_epochs``; checkpoints under ``pretrain/``)."""
    pretraining = config.pretraining
    if pretraining.warm_start_from is not None:
        saved = load_stage(
            pretraining.warm_start_from,
            pretraining.warm_start_stage,
            dataset=data.name,
            n_nodes=data.n_users + data.n_items,
            dim=config.model.dim,
        )
        log.info("%s: warm start from %s (%s stage)", config.model.method, pretraining.warm_start_from,
                 pretraining.warm_start_stage)  # fmt: skip
        return PretrainingStage(ego=saved.ego, seconds=saved.seconds, epochs_selected=saved.epochs)
    log.info("%s: full-precision pre-training (at most %d epochs)", config.model.method, pretraining.pretrain_epochs)
    checkpoints = config.checkpoint.checkpoint_dir
    stage_config = config.with_options(
        method="fp",
        bits=None,
        user_bits=None,
        item_scales=False,
        epochs=pretraining.pretrain_epochs,
        checkpoint_dir=checkpoints / "pretrain" if checkpoints else None,
        warm_start=False,
        distillation=None,  # the stage is the student's starting point, trained on the interactions alone
        lr_milestones=pretraining.pretrain_lr_milestones,
        pretrain_lr_milestones=(),
    )
    result = train(data, stage_config)
    return PretrainingStage(
        ego=result.model.inputs().detach(),
        seconds=result.train_seconds,
        epochs_selected=result.best_epoch + 1,
        lr_milestones=tuple(result.lr_milestones),
    )


def start_from_stage(model: LightGCN, quantizer: Quantizer, stage: PretrainingStage, device: torch.device) -> None:
    """Copy the stage's ego embeddings into the table; a quantizer with its own input layer builds it from them."""
    ego = stage.ego.to(device) if stage.ego is not None else None  # a saved stage is loaded on the CPU
    propagated = None
    if ego is not None and isinstance(model.inputs, EmbeddingTable):
        with torch.no_grad():
            model.inputs.weight.copy_(ego)
            propagated = quantizer.represent(model())
    replacement = quantizer.input_layer(model.n_users + model.n_items, model.dim, ego, propagated)
    if replacement is not None:
        model.inputs = replacement.to(device)


def teacher(data: Dataset, config: TrainConfig, model: LightGCN) -> RankingDistillation | None:
    """The fp teacher's ranking to distil, propagated over this run's graph (none without ``distillation``)."""
    if config.distillation is None:
        return None
    return load_teacher(
        config.distillation,
        config.pretraining.warm_start_stage,
        dataset=data.name,
        n_users=data.n_users,
        adjacency=model.adjacency,
        layers=config.model.layers,
        seen=data.train,
    )


def training_step(
    data: Dataset,
    config: TrainConfig,
    model: LightGCN,
    quantizer: Quantizer,
    optimizer: torch.optim.Optimizer,
    world: World,
    graphed: bool,
) -> Step:
    """One optimizer step on a batch of triples, returning its loss; replayed as a CUDA graph when ``graphed``."""
    optim, runtime = config.optim, config.runtime
    loss = RankingLoss(optim.loss, optim.temperature, optim.softmax_negatives)
    objective = parallel_objective(
        model,
        quantizer,
        optim.reg,
        world,
        runtime.grad_compression,
        runtime.grad_sync,
        loss,
        teacher(data, config, model),
    )
    trained = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    manual_sync = world.distributed and runtime.grad_sync == "allreduce"

    def eager_step(users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss: torch.Tensor = objective(users, positives, negatives)
        loss.backward()  # type: ignore[no-untyped-call]
        if manual_sync:
            average_gradients(trained, world, runtime.grad_compression)
        optimizer.step()
        quantizer.after_step(model)
        return loss.detach()

    if not graphed:
        return eager_step
    return GraphedStep(eager_step, optimizer, optim.batch_size, model.adjacency.device, quantizer.graph_constants)


class EpochFeed:
    """Each epoch's batches, drawn one epoch ahead: identical on every rank, then split into this rank's share."""

    def __init__(
        self, sampler: BPRSampler, generator: torch.Generator, config: TrainConfig, world: World, first: int
    ) -> None:
        self.sampler, self.generator, self.world = sampler, generator, world
        self.batch_size, self.epochs = config.optim.batch_size, config.schedule.epochs
        self.resume_state = generator.get_state()  # what a resumed run draws its next epoch from
        self.upcoming = self.draw(first)

    def draw(self, epoch: int) -> tuple[list[Batch], list[Batch]]:
        """The epoch's global batches and this rank's share of them (none past the last epoch)."""
        if epoch >= self.epochs:
            return [], []
        batches = self.sampler.epoch(self.batch_size * self.world.size, self.generator)
        return batches, rank_share(batches, self.world)

    def advance(self, epoch: int) -> None:
        """Draw ``epoch`` as the upcoming one, remembering the generator state it was drawn from."""
        self.resume_state = self.generator.get_state()
        self.upcoming = self.draw(epoch)


def release_graph(step: Step, *, large_only: bool = False) -> None:
    """Before eager work that needs room (validation, export; with ``large_only``, work that needs it only when the
    graph's pool is large): a captured step's pool and the allocator's cache back to the device."""
    if isinstance(step, GraphedStep):
        step.release_if_large() if large_only else step.release()


def train_epoch(
    step: Step, feed: EpochFeed, epoch: int, meter: Throughput, world: World, device: torch.device
) -> tuple[float, list[Batch]]:
    """Step through the epoch's batches; its mean loss over all ranks, and the global batches it trained on."""
    stepping = time.perf_counter()
    total = torch.zeros((), device=device)
    batches, mine = feed.upcoming
    for users, positives, negatives in mine:
        total += step(users, positives, negatives)
    # The next epoch is drawn before this one's steps are waited for: on a GPU its host work (sampling,
    # splitting) overlaps them, where it used to leave the GPU idle at every epoch start.
    feed.advance(epoch + 1)
    queued = time.perf_counter() - stepping
    mean_loss = float(mean_over_ranks(total / len(mine), world))  # a sync point, once per epoch
    window = time.perf_counter() - stepping
    samples = sum(batch[0].numel() for batch in batches if batch[0].numel() >= world.size)
    log.debug(json.dumps({"event": "epoch", "epoch": epoch, "rank": world.rank, "seconds": round(window, 5),
                          "host_seconds": round(queued, 5), "samples": samples}))  # fmt: skip
    meter.add(window, samples)
    return mean_loss, batches


def refresh(quantizer: Quantizer, model: LightGCN, batches: list[Batch], epoch: int, world: World) -> None:
    """The quantizer's epoch-end update (HQ's δ), estimated on rank 0 and sent to every rank."""
    refreshed = quantizer.refresh(RefreshContext(model=model, batches=batches, epoch=epoch))
    if refreshed:
        broadcast_buffers(quantizer, world)
        quantizer.buffers_synced()
        log.info(json.dumps({"event": "refresh", "epoch": epoch, **refreshed}))


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
    model: LightGCN,
    quantizer: Quantizer,
    data: Dataset,
    world: World = SINGLE_PROCESS,
    users: npt.NDArray[np.int64] | None = None,
) -> dict[str, float]:
    """Validation metrics over ``users`` (default: all with validation items; a sample adds standard errors)."""
    user_vectors, items = served_vectors(model, quantizer)
    sampled = users is not None and bool(users.size < np.count_nonzero(np.diff(data.valid.indptr)))
    return device_metrics(user_vectors, items, data.valid, data.train, integer_scores=integer_ranking(quantizer),
                          world=world, users=users, spread=sampled)  # fmt: skip


def snapshot(model: LightGCN, quantizer: Quantizer) -> Weights:
    """A copy of the weights, to restore if no later validation beats them."""
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "quantizer": {k: v.detach().clone() for k, v in quantizer.state_dict().items()},
    }
