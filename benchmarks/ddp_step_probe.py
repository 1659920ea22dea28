"""Where a data-parallel training step's time goes: compute, gradient all-reduce, or the host issuing work.

    torchrun --standalone --nproc-per-node=2 benchmarks/ddp_step_probe.py --data-dir ../shared/data

Per step (median ms over --steps, after a warm-up), on rank 0: `step` (the real step), `no_sync` (the same
without DDP's all-reduce), `all_reduce` (one all-reduce of a tensor the size of the gradients), and
`gpu_busy` (kernel time per step from torch.profiler: when it is well below `step`, the GPU waits on the
host issuing work, not the reverse). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.data import load_dataset  # noqa: E402
from trainer.distributed import World, current_world, rank_device, rank_share, start, stop  # noqa: E402
from trainer.graph import normalized_adjacency, to_torch_sparse  # noqa: E402
from trainer.model import LightGCN  # noqa: E402
from trainer.quantization import make_quantizer  # noqa: E402
from trainer.sampling import BPRSampler  # noqa: E402
from trainer.train import parallel_objective, pick_device  # noqa: E402


def median_ms(run: Callable[[], None], steps: int, device: torch.device) -> float:
    times = []
    for _ in range(steps):
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        run()
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


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
    args = parser.parse_args()
    world = start("auto")
    device = pick_device(rank_device("auto", world))
    world = current_world()
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    adjacency = to_torch_sparse(normalized_adjacency(data.train), device)
    model = LightGCN(data.n_users, data.n_items, 64, 3, adjacency).to(device)
    quantizer = make_quantizer("fp", 64, 3).to(device)
    parameters = [*model.parameters(), *quantizer.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-3, fused=args.fused_adam or None)
    manual = args.sync == "manual" and world.distributed
    objective = parallel_objective(model, quantizer, 1e-4, world if not manual else World())
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    batches = rank_share(BPRSampler(data.train, device).epoch(args.batch_size * world.size, generator), world)
    position = 0

    def step(sync: bool = True) -> None:
        nonlocal position
        users, positives, negatives = batches[position % len(batches)]
        position += 1
        with nullcontext() if sync or not world.distributed or manual else objective.no_sync():  # type: ignore[operator]
            loss = objective(users, positives, negatives)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if manual and sync:
            for parameter in parameters:
                if parameter.grad is not None:
                    torch.distributed.all_reduce(parameter.grad, op=torch.distributed.ReduceOp.AVG)
        optimizer.step()

    gradient = torch.zeros(sum(p.numel() for p in model.parameters()), device=device)
    median_ms(step, 10, device)
    row: dict[str, object] = {
        "world_size": world.size,
        "sync": args.sync,
        "fused_adam": args.fused_adam,
        "batch_size": args.batch_size,
        "device": torch.cuda.get_device_name(device),
        "step": median_ms(step, args.steps, device),
        "no_sync": median_ms(lambda: step(sync=False), args.steps, device),
        "gpu_busy": gpu_busy_ms(step, 20, device),
    }
    if world.distributed:
        row["all_reduce"] = median_ms(lambda: torch.distributed.all_reduce(gradient), args.steps, device)
    if world.main:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
