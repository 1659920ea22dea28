"""Time one training step's decoder work for the hashed input layer: the fixed-lookup backward against
embedding_bag's own (issue #6).

    python -m benchmarks.hash_decoder_speed --nodes 70839 --codes 192/24 1024/256 1536/384

A step decodes every node (the propagation's input) and the batch's nodes again (the L2 term on 3 × 8,192
ego embeddings), then back-propagates into the codebooks and the MLP. Group indices are uniform random (the
median thresholds make every bit balanced, so real codes fill the codebooks about as evenly). Runs on CUDA
when torch sees it, else the CPU; prints a table and appends to --out (JSON list).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.harness import RESULTS, append_records, benchmark_parser, progress
from trainer.hashing import HashedInput, parameter_count


def step_seconds(layer: HashedInput, batch: torch.Tensor, repeats: int) -> float:
    """Median seconds of forward + backward over ``repeats`` steps, after two warm-up steps."""
    times = []
    for number in range(repeats + 2):
        if batch.is_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss = layer().pow(2).mean() + layer.ego(batch).pow(2).mean()
        loss.backward()  # type: ignore[no-untyped-call]
        if batch.is_cuda:
            torch.cuda.synchronize()
        if number >= 2:
            times.append(time.perf_counter() - started)
        layer.zero_grad(set_to_none=True)
    return float(np.median(times))


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--nodes", type=int, default=70_839, help="users + items (default: Gowalla's)")
    parser.add_argument("--codes", nargs="+", default=["64/8", "192/24", "1024/256", "1536/384"],
                        help="BITS/GROUPS per configuration")  # fmt: skip
    parser.add_argument("--dim", type=int, default=64, help="embedding size")
    parser.add_argument("--batch", type=int, default=3 * 8192, help="ego embeddings in the L2 term of a step")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    parser.add_argument("--out", type=Path, default=RESULTS / "hash_decoder_speed.json")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)  # fmt: skip
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.integers(0, args.nodes, args.batch)).to(device)
    rows: list[dict[str, Any]] = []
    for spec in progress(args.codes, "codes", "config"):
        bits, groups = (int(part) for part in spec.split("/"))
        indices = rng.integers(0, 1 << (bits // groups), (args.nodes, groups))
        row: dict[str, Any] = {"nodes": args.nodes, "bits": bits, "groups": groups, "device": str(device)}
        for backward in ("bag", "lookup"):
            layer = HashedInput(indices, bits // groups, args.dim, codebook_backward=backward).to(device)  # type: ignore[arg-type]
            row["parameters"] = parameter_count(layer)
            row[f"{backward}_ms"] = round(1e3 * step_seconds(layer, batch, args.repeats), 2)
        rows.append(row)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    for row in rows:
        row["device_name"] = name
    append_records(args.out, rows)
    print(f"\n{args.nodes} nodes, d = {args.dim}, batch {args.batch}, {name}: ms per step (forward + backward)")
    print(f"{'code':>10}{'params':>10}{'bag ms':>10}{'lookup ms':>11}{'speed-up':>10}")
    for row in rows:
        print(f"{row['bits']:>5}/{row['groups']:<4}{row['parameters']:>10}{row['bag_ms']:>10.1f}"
              f"{row['lookup_ms']:>11.1f}{row['bag_ms'] / row['lookup_ms']:>9.1f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
