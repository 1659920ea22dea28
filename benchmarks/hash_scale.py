"""Scale run for the hashed input layer: a training step loop on a synthetic graph of millions of nodes.

    python -m benchmarks.hash_scale --users 5000000 --items 5000000 --edges 50000000 --steps 50

Builds a power-law bipartite graph (users uniform, items Zipf-like), computes the 64-bit hash codes
(chunked; R regenerated, never stored), trains LightGCN with the hashed input layer for a few BPR steps
and reports input parameters, bytes the embedding table would need with Adam (weights, gradients, two
moments), peak GPU memory, and seconds per step; `--try-table` also attempts the table-based model on the
same graph and reports whether it fit (`--table-cap-at-hashed-peak`: within the memory the hashed model
peaked at). Writes a JSON record (--out) and prints a table.

Both models average the layers as a running sum (``LightGCN.layer_mean``), and the hashed model decodes
``--decode-chunk`` nodes at a time, recomputing each chunk in the backward: full-graph propagation's activations
are then the same few n × d buffers for both, and what differs is what each keeps per node (the table: weights,
gradient, two Adam moments; the hashed model: its 64-bit codes). ``--decode-chunk 0`` decodes all nodes at once and
keeps the decoder's activations, about as large as the table's state (stop 15's run, BENCHMARKS.md).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from benchmarks.harness import RESULTS, append_records, benchmark_parser
from trainer.graph import normalized_adjacency, to_torch_sparse
from trainer.hashing import HashedInput, graph_codes, group_indices, parameter_count
from trainer.loss import bpr
from trainer.model import LightGCN
from trainer.sampling import BPRSampler


def synthetic_graph(users: int, items: int, edges: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, users, edges)
    cols = np.minimum((rng.pareto(1.2, edges) * items / 50).astype(np.int64), items - 1)
    graph = sp.csr_matrix((np.ones(edges, np.float32), (rows, cols)), shape=(users, items))
    graph.data[:] = 1.0  # duplicates summed: back to 0/1
    return graph


def step_loop(model: LightGCN, train: sp.csr_matrix, steps: int, batch: int, device: torch.device) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = BPRSampler(train, device)
    generator = torch.Generator(device=device).manual_seed(0)
    users, positives = sampler.positives(generator)
    negatives = sampler.negatives(users[: steps * batch], generator)
    started = None
    for step in range(steps):
        if step == 1:  # the first step compiles and allocates
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        s = slice(step * batch, (step + 1) * batch)
        rep = model.layer_mean()
        u, p, n = rep[users[s]], rep[positives[s] + model.n_users], rep[negatives[s] + model.n_users]
        loss = bpr(u, p, n) + 1e-4 * model.ego(torch.cat([users[s], positives[s] + model.n_users])).pow(2).sum() / batch
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    assert started is not None
    return (time.perf_counter() - started) / max(1, steps - 1)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--users", type=int, default=5_000_000)
    parser.add_argument("--items", type=int, default=5_000_000)
    parser.add_argument("--edges", type=int, default=50_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--try-table", action="store_true", help="also try the embedding-table model")
    parser.add_argument(
        "--table-cap-at-hashed-peak",
        action="store_true",
        help="with --try-table on a GPU: give the table model only the hashed model's peak memory",
    )
    parser.add_argument("--hops", type=int, nargs="+", default=[3],
                        help="message-passing steps the codes sketch (as --hash-hops; 0: raw rows)")  # fmt: skip
    parser.add_argument("--decode-chunk", type=int, default=1 << 20,
                        help="hashed model: nodes decoded at a time, recomputed in backward (0: all)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "hash_scale.json")
    args = parser.parse_args()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    started = time.perf_counter()
    train = synthetic_graph(args.users, args.items, args.edges, seed=0)
    bits, medians = graph_codes(train, args.bits, seed=0, hops=tuple(args.hops))
    codes_s = time.perf_counter() - started
    adjacency = to_torch_sparse(normalized_adjacency(train), device)
    model = LightGCN(args.users, args.items, args.dim, args.layers, adjacency)
    model.inputs = HashedInput(group_indices(bits, args.groups), args.bits // args.groups, args.dim,
                               user_medians=medians["user"], decode_chunk=args.decode_chunk,
                               codebook_backward="bag" if args.decode_chunk else "lookup")  # fmt: skip
    del bits
    model = model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = step_loop(model, train, args.steps, args.batch, device)
    nodes = args.users + args.items
    record: dict[str, Any] = {
        "nodes": nodes, "edges": int(train.nnz), "dim": args.dim, "hash_bits": args.bits, "groups": args.groups,
        "hash_hops": args.hops, "decode_chunk": args.decode_chunk, "propagation": "running layer mean",
        "input_parameters": parameter_count(model.inputs), "table_parameters": nodes * args.dim,
        "table_bytes_with_adam": nodes * args.dim * 4 * 4, "hash_codes_seconds": round(codes_s, 1),
        "seconds_per_step": round(seconds, 4), "batch": args.batch,
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "commit": os.environ.get("RECSYS_COMMIT", "unknown"),
    }  # fmt: skip
    if args.try_table:
        del model
        torch.cuda.empty_cache() if device.type == "cuda" else None
        if args.table_cap_at_hashed_peak and device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            # The allocator enforces the fraction on reserved memory: cap at what the hashed run reserved.
            torch.cuda.set_per_process_memory_fraction(torch.cuda.max_memory_reserved(device) / total, device)
            record["table_memory_cap_mb"] = round(torch.cuda.max_memory_reserved(device) / 2**20)
        try:
            table = LightGCN(args.users, args.items, args.dim, args.layers, adjacency).to(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            record["table_seconds_per_step"] = round(step_loop(table, train, args.steps, args.batch, device), 4)
            if device.type == "cuda":
                record["table_peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
        except torch.OutOfMemoryError as error:
            record["table_error"] = f"out of memory: {str(error).splitlines()[0]}"
    append_records(args.out, [record])
    for key, value in record.items():
        print(f"{key:<24} {value}")
    print_table(record)
    return 0


def print_table(record: dict[str, Any]) -> None:
    def mb(key: str) -> str:
        return "-" if record.get(key) is None else f"{record[key]:,} MB"

    rows = [("hashed", record["input_parameters"], mb("peak_gpu_mb"), record["seconds_per_step"])]
    if "table_seconds_per_step" in record or "table_error" in record:
        peak = "out of memory" if "table_error" in record else mb("table_peak_gpu_mb")
        rows.append(("table", record["table_parameters"], peak, record.get("table_seconds_per_step", "-")))
    print(f"\n{'input layer':<14}{'parameters':>14}{'peak GPU':>16}{'s / step':>10}")
    for name, parameters, peak, seconds in rows:
        print(f"{name:<14}{parameters:>14,}{peak:>16}{seconds:>10}")


if __name__ == "__main__":
    sys.exit(main())
