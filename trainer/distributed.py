"""Data-parallel training over several processes (``torchrun``): what each rank does and how they agree.

The graph and the model are replicated; every rank draws the same epoch of BPR triples from the same
seeded generator and trains on its own share of each global batch of ``world × batch_size`` triples;
the gradients are averaged across ranks (one all-reduce each, or DistributedDataParallel's hooks).
Validation splits the users across ranks and gathers the rankings, so every rank reaches the same
selection decisions; only rank 0 writes files.

One process (no ``torchrun``) is the world of size 1 and none of this communicates.
"""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE_PROCESS = World()


def launched_world() -> World:
    """The world ``torchrun`` describes in the environment (size 1 when not launched by it)."""
    try:
        return World(
            rank=int(os.environ.get("RANK", "0")),
            size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )
    except ValueError as error:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {error}") from error


def current_world() -> World:
    """The initialised process group as a World; a single process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=launched_world().local_rank)


def rank_device(device: str, world: World) -> str:
    """``auto``/``cuda`` under torchrun mean this rank's own GPU (LOCAL_RANK); CPU ranks share the CPU."""
    if world.distributed and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{world.local_rank}"
    return device


def start(device: str, timeout_s: float = 600.0) -> World:
    """Join the process group torchrun set up: NCCL between GPUs, gloo on CPUs. No-op for one process."""
    world = launched_world()
    if not world.distributed or dist.is_initialized():
        return current_world()
    on_gpu = rank_device(device, world).startswith("cuda")
    if on_gpu:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(
        backend="nccl" if on_gpu else "gloo",
        timeout=timedelta(seconds=timeout_s),
        device_id=torch.device("cuda", world.local_rank) if on_gpu else None,
    )
    return current_world()


def stop() -> None:
    """Leave the process group once every rank is done with it.

    DistributedDataParallel sits in reference cycles, so its reducer (which holds the group and its threads)
    would otherwise be freed by the interpreter's final collection, after the group is gone: gloo then aborts
    the process ("terminate called without an active exception"). Collect first, then meet, then leave.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


@contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block first (downloads, caches), the other ranks after it is done."""
    if world.distributed and not world.main:
        dist.barrier()
    yield
    if world.distributed and world.main:
        dist.barrier()


def rank_share(batches: Sequence[Batch], world: World) -> list[Batch]:
    """This rank's part of each global batch (near-equal contiguous parts; batches too small to split are dropped)."""
    if not world.distributed:
        return list(batches)
    return [
        (users, positives, negatives)
        for users, positives, negatives in (
            tuple(torch.tensor_split(part, world.size)[world.rank] for part in batch)
            for batch in batches
            if batch[0].numel() >= world.size
        )
    ]


def gather_rows(rows: npt.NDArray[np.int64], world: World) -> npt.NDArray[np.int64]:
    """Every rank's rows, concatenated in rank order, on every rank."""
    if not world.distributed:
        return rows
    parts: list[npt.NDArray[np.int64] | None] = [None] * world.size
    dist.all_gather_object(parts, rows)
    return np.concatenate([part for part in parts if part is not None])


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank when it is true on any: decisions that depend on a clock must agree."""
    if not world.distributed:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    if not world.distributed:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world.size


def broadcast_buffers(module: nn.Module, world: World) -> None:
    """Rank 0's buffers everywhere: state an epoch-end hook estimated from random probes stays identical."""
    if world.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def assert_in_step(modules: Sequence[nn.Module], world: World) -> None:
    """Raise when any rank's parameters or buffers differ from rank 0's (they are updated identically)."""
    if not world.distributed:
        return
    tensors = [t for module in modules for t in (*module.parameters(), *module.buffers()) if not t.is_sparse_csr]
    fingerprint = torch.stack(
        [t.detach().double().sum() for t in tensors] + [t.detach().double().pow(2).sum() for t in tensors]
    )
    reference = fingerprint.clone()
    dist.broadcast(reference, src=0)
    if not torch.equal(fingerprint, reference):
        worst = int((fingerprint - reference).abs().argmax()) % len(tensors)
        raise RuntimeError(f"rank {world.rank} diverged from rank 0 (tensor {worst} of {len(tensors)} differs)")


GradSync = Literal["allreduce", "ddp"]
GradCompression = Literal["none", "fp16", "bf16"]
COMPRESSION_HOOKS = {"fp16": default_hooks.fp16_compress_hook, "bf16": default_hooks.bf16_compress_hook}
COMPRESSION_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def data_parallel(
    objective: nn.Module,
    world: World,
    device: torch.device,
    compression: GradCompression = "none",
    sync: GradSync = "allreduce",
) -> nn.Module:
    """The loss module; under torchrun with ``sync="ddp"`` wrapped in DistributedDataParallel.

    The graph is replicated, not synchronised. The embedding table's gradient is complete only at the
    end of the backward pass (it comes through every propagation layer), so DDP's bucketed all-reduce has
    no compute to overlap with, and its per-step hooks cost several times the all-reduce itself
    (benchmarks/ddp_step_probe.py). The default ``allreduce`` sync therefore
    leaves the module alone and ``average_gradients`` all-reduces each gradient once after backward.
    """
    if compression == "bf16" and world.distributed and device.type != "cuda":
        raise ValueError("--grad-compression bf16 needs GPUs (NCCL); on CPUs (gloo) use fp16")
    if not world.distributed or sync == "allreduce":
        return objective
    # The adjacency (and a hashed input's codebook lookup) are sparse buffers every rank builds identically: DDP
    # must neither broadcast nor check them.
    sparse = [name for name, buffer in objective.named_buffers() if buffer.layout != torch.strided]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(  # type: ignore[no-untyped-call]
        objective, sorted({"model.adjacency", *sparse})
    )
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
        dist.all_reduce(sent)  # a sum: gloo has no average
        if sent is not parameter.grad:
            parameter.grad.copy_(sent)
        parameter.grad.div_(world.size)
