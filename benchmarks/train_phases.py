"""Where a training run's time and host memory go, phase by phase, on a synthetic graph of any size.

    OMP_NUM_THREADS=2 python -m benchmarks.train_phases --users 1000000 --items 1000000 --steps 3 \
        --batch-size 1000000 --eval-users 10000

Runs the pieces ``recsys-train --input-layer hash --method hq`` runs, in its order, each timed alone: the
synthetic dataset, the normalised adjacency (and its torch copy), the hashed input layer's codes, the BPR
sampler, one epoch's draw, ``--steps`` optimizer steps (every one propagates the whole graph), a validation
and the test evaluation on the device path and on the served path (``index.ItemIndex``). After each phase it
reads the most resident memory the phase held (the kernel's high-water mark, started again at each phase), what
it left resident and, on a GPU, the peak allocated and reserved since the phase began. On ``--device cpu`` the
tensors a GPU run would keep on the card are on the host, so the phase peaks count them too.
Steps per epoch are train interactions / batch size, so an epoch's time is steps × s/step plus the draw.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from benchmarks.harness import benchmark_parser, commit, markdown_table
from trainer.config import TrainConfig
from trainer.data import SyntheticConfig, load_dataset
from trainer.distributed import SINGLE_PROCESS
from trainer.evaluate import device_metrics, evaluation_users, served_path_metrics
from trainer.graph import normalized_adjacency, to_torch_sparse
from trainer.model import LightGCN
from trainer.quantization import make_quantizer
from trainer.sampling import BPRSampler
from trainer.train import evaluate_valid, hashed_input, integer_ranking, served_vectors, training_step

T = TypeVar("T")


def resident_mb() -> tuple[float, float]:
    """(peak, current) resident set of this process, MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/statm") as statm:
        current = int(statm.read().split()[1]) * resource.getpagesize() / 2**20
    return peak, current


def reset_phase_peak() -> None:
    """Start the kernel's resident high-water mark (VmHWM) again, so that it reads one phase's peak; the kernel
    starts ``ru_maxrss`` again with it, so the run's own peak is kept by ``Phases``."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def phase_peak_mb() -> float | None:
    """The resident high-water mark since ``reset_phase_peak``, MB (None where /proc does not give it)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


class Phases:
    """Times each phase and records the memory it left behind and the most it held on the way."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.rows = device, []  # type: ignore[var-annotated]
        self.run_peak_mb = resident_mb()[0]  # the process's peak before the first phase (imports, set-up)

    def run(self, name: str, work: Callable[[], T], **extra: Any) -> T:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        reset_phase_peak()
        started = time.perf_counter()
        out = work()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - started
        peak, current = resident_mb()
        phase_peak = phase_peak_mb()
        self.run_peak_mb = peak = max(self.run_peak_mb, peak, phase_peak or 0.0)
        if isinstance(out, dict):  # an evaluation: its Recall@20 and, on a sample, the standard error
            extra |= {k: round(v, 5) for k, v in out.items() if k in ("recall@20", "recall@20_se")}
        gpu = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else 0.0
        reserved = torch.cuda.max_memory_reserved(self.device) / 2**20 if self.device.type == "cuda" else 0.0
        self.rows.append({"phase": name, "seconds": round(seconds, 3), "peak_rss_mb": round(peak),
                          "phase_peak_rss_mb": None if phase_peak is None else round(phase_peak),
                          "rss_mb": round(current), "peak_gpu_mb": round(gpu), "peak_gpu_reserved_mb": round(reserved),
                          **extra})  # fmt: skip
        print(json.dumps(self.rows[-1]), flush=True)
        return out


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps timed (after one warm-up step)")
    parser.add_argument("--eval-users", type=int, default=0, help="sampled users per evaluation (0: all)")
    parser.add_argument("--served", action="store_true", help="also rank the test users on the served path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="append the rows to this JSON list")
    args = parser.parse_args()
    device = torch.device(args.device)
    config = TrainConfig.of(method="hq", bits=2, input_layer="hash", batch_size=args.batch_size, device=args.device,
                            eval_users=args.eval_users)  # fmt: skip
    phases = Phases(device)
    synthetic = SyntheticConfig(n_users=args.users, n_items=args.items, seed=config.optim.seed)
    data = phases.run("dataset", lambda: load_dataset("synthetic", synthetic=synthetic))
    adjacency = phases.run("adjacency", lambda: to_torch_sparse(normalized_adjacency(data.train), device),
                           nnz=2 * data.train.nnz)  # fmt: skip
    model = LightGCN(data.n_users, data.n_items, 64, 3, adjacency).to(device)
    quantizer = make_quantizer("hq", 64, 3, bits=2, user_bits=None, item_scales=False).to(device)
    model.inputs = phases.run("hash codes", lambda: hashed_input(data, config).to(device))
    sampler = phases.run("sampler", lambda: BPRSampler(data.train, device))
    generator = torch.Generator(device=device).manual_seed(0)
    batches = phases.run("epoch draw", lambda: sampler.epoch(args.batch_size, generator))
    optimizer = torch.optim.Adam([*model.parameters(), *quantizer.parameters()], lr=1e-3)
    step = training_step(data, config, model, quantizer, optimizer, SINGLE_PROCESS, graphed=False)
    phases.run("warm-up step", lambda: float(step(*batches[0])))
    steps = min(args.steps, len(batches))

    def stepping() -> None:
        for users, positives, negatives in batches[:steps]:
            float(step(users, positives, negatives))

    per_epoch = math.ceil(data.train.nnz / args.batch_size)
    phases.run("steps", stepping, steps=steps, steps_per_epoch=per_epoch, batch_size=args.batch_size)
    ranked = evaluation_users(data.valid, args.eval_users, config.optim.seed)
    validate = lambda: evaluate_valid(model, quantizer, data, users=ranked)  # noqa: E731
    phases.run("validation", validate, users=int(ranked.size))
    users, items = served_vectors(model, quantizer)
    seen = phases.run("seen", data.seen)
    integer = integer_ranking(quantizer)
    sample = evaluation_users(data.test, args.eval_users, config.optim.seed)
    phases.run("test, device path", lambda: device_metrics(users, items, data.test, seen, integer_scores=integer,
                                                           users=sample, spread=True))  # fmt: skip
    if args.served:
        with torch.no_grad():
            user_rep, item_rep = quantizer.node_representations(model)
            codes = quantizer.export(user_rep, "user"), quantizer.export(item_rep, "item")
        phases.run(
            "test, served path",
            lambda: served_path_metrics(
                codes[0].codes, codes[1].codes, quantizer.layout, quantizer.code_dim, data.test, seen, users=sample
            ),
        )
    print(markdown_table(["phase", "s", "phase's peak RSS MB", "RSS MB after", "peak GPU MB", "reserved MB"],
                         [[r["phase"], r["seconds"], r["phase_peak_rss_mb"], r["rss_mb"], r["peak_gpu_mb"],
                           r["peak_gpu_reserved_mb"]] for r in phases.rows]))  # fmt: skip
    print(f"{data.summary()}; {per_epoch} steps/epoch at batch {args.batch_size}, commit {commit()}")
    if args.out is not None:
        records = json.loads(args.out.read_text()) if args.out.is_file() else []
        records += [{**row, "users": args.users, "items": args.items, "commit": commit()} for row in phases.rows]
        args.out.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
