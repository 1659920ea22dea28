"""Where a data-parallel training step's time goes: compute, gradient all-reduce, or the host issuing work.

    torchrun --standalone --nproc-per-node=2 -m benchmarks.ddp_step_probe --data-dir ../shared/data

Per step (median ms over --steps, after a warm-up), on rank 0: `step` (the real step), `no_sync` (the same
without DDP's all-reduce), `all_reduce` (one all-reduce of a tensor the size of the gradients), and
`gpu_busy` (kernel time per step from torch.profiler: when it is well below `step`, the GPU waits on the
host issuing work, not the reverse), `pipelined` (steps issued back to back, no sync between them: what an
epoch sees). `--graph` replays each step as one CUDA graph (trainer.step_graph; manual sync or one GPU).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from trainer.data import load_dataset
from trainer.distributed import World, current_world, rank_device, rank_share, start, stop
from trainer.graph import normalized_adjacency, to_torch_sparse
from trainer.model import LightGCN
from trainer.objectives import parallel_objective
from trainer.quantization import make_quantizer
from trainer.sampling import BPRSampler
from trainer.step_graph import GraphedStep
from trainer.train import pick_device


def median_ms(run: Callable[[], None], steps: int, device: torch.device) -> float:
    times = []
    for _ in range(steps):
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        run()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def pipelined_ms(run: Callable[[], None], steps: int, device: torch.device) -> float:
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - started) / steps


def gpu_busy_ms(run: Callable[[], None], steps: int, device: torch.device) -> float:
    """Kernel time per step (all kernels, as the profiler records them on this rank's GPU)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        for _ in range(steps):
            run()
        torch.cuda.synchronize(device)
    total_us = sum(getattr(event, "self_device_time_total", 0.0) for event in trace.key_averages())
    return float(total_us) / steps / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--dataset", default="gowalla")
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--sync", choices=["ddp", "manual"], default="ddp", help="manual: all_reduce(AVG) per gradient")
    parser.add_argument("--fused-adam", action="store_true")
    parser.add_argument("--graph", action="store_true", help="replay the step as a CUDA graph (needs --sync manual)")
    parser.add_argument("--hang-seconds", type=float, default=0, help="dump every thread's stack and exit after this")
    args = parser.parse_args()
    if args.hang_seconds:
        faulthandler.dump_traceback_later(args.hang_seconds, exit=True)
    world = start("auto")
    device = pick_device(rank_device("auto", world))
    world = current_world()
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    adjacency = to_torch_sparse(normalized_adjacency(data.train), device)
    model = LightGCN(data.n_users, data.n_items, 64, 3, adjacency).to(device)
    quantizer = make_quantizer("fp", 64, 3).to(device)
    parameters = [*model.parameters(), *quantizer.parameters()]
    manual = args.sync == "manual" and world.distributed
    if args.graph and world.distributed and not manual:
        parser.error("--graph needs --sync manual under torchrun (DDP's hooks run on the host)")
    optimizer = torch.optim.Adam(parameters, lr=1e-3, fused=args.fused_adam or None, capturable=args.graph)
    objective = parallel_objective(model, quantizer, 1e-4, world if not manual else World())
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    batches = rank_share(BPRSampler(data.train, device).epoch(args.batch_size * world.size, generator), world)
    position = 0

    def one_step(users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, sync: bool) -> torch.Tensor:
        with nullcontext() if sync or not world.distributed or manual else objective.no_sync():  # type: ignore[operator]
            optimizer.zero_grad(set_to_none=True)
            loss: torch.Tensor = objective(users, positives, negatives)
            loss.backward()  # type: ignore[no-untyped-call]
        if manual and sync:
            for parameter in parameters:
                if parameter.grad is not None:
                    torch.distributed.all_reduce(parameter.grad, op=torch.distributed.ReduceOp.AVG)
        optimizer.step()
        return loss.detach()

    size = batches[0][0].numel()
    graphs = {
        sync: GraphedStep(lambda u, p, n, sync=sync: one_step(u, p, n, sync), optimizer, size, device)
        for sync in ((True, False) if args.graph else ())
    }

    def step(sync: bool = True) -> None:
        nonlocal position
        users, positives, negatives = batches[position % max(1, len(batches) - 1)]  # the last one may be partial
        position += 1
        if graphs:
            graphs[sync](users, positives, negatives)
        else:
            one_step(users, positives, negatives, sync)

    gradient = torch.zeros(sum(p.numel() for p in model.parameters()), device=device)
    median_ms(step, 10, device)
    median_ms(lambda: step(sync=False), 10, device)  # warms up (and captures) the unsynchronised variant too
    row: dict[str, object] = {
        "world_size": world.size,
        "sync": args.sync,
        "fused_adam": args.fused_adam,
        "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name(device),
        "graph": args.graph,
        "step": median_ms(step, args.steps, device),
        "pipelined": pipelined_ms(step, args.steps, device),
        "no_sync": median_ms(lambda: step(sync=False), args.steps, device),
        "gpu_busy": gpu_busy_ms(step, 20, device),
    }
    if world.distributed:
        row["all_reduce"] = median_ms(lambda: torch.distributed.all_reduce(gradient), args.steps, device)
    if world.main:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    graphs.clear()  # a live graph holding NCCL kernels keeps destroy_process_group waiting
    stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
