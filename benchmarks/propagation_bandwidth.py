"""How close to the device's memory bandwidth one LightGCN propagation runs, on the graph of the industrial benchmark.

    python -m benchmarks.propagation_bandwidth --users 10000000 --items 10000000 --device cuda

A training step propagates the whole graph 2K times (K layers forward, K backward, since Â is symmetric), and each
propagation is one sparse-dense product Â X (trainer.graph), which is memory-bound. This times that product on the
graph `recsys-generate` draws with the same options (every interaction, not only a training split), beside the
device's copy bandwidth: a large tensor copied on the device, bytes read and written per second, the ceiling a
memory-bound kernel can reach. What the product must move lies between two counts: the CSR arrays, X read once and Y
written (rows of X reused from cache), and the CSR arrays, one row of X per nonzero and Y written (none reused).
The table gives the product's time, the rate under each count and its share of the copy bandwidth, for each index
width asked for (``--indices``: the trainer takes 32-bit indices where the graph fits them, ``trainer.graph``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from benchmarks.harness import RESULTS, append_records, benchmark_parser, commit, markdown_table, progress
from index.threads import usable_cores
from trainer.data.generate import USERS_PER_BLOCK
from trainer.data.synthetic import SyntheticConfig, SyntheticDraw
from trainer.graph import normalized_adjacency, to_torch_sparse

CHECKED_ROWS = 64  # rows of the timed product compared with scipy's: the time is of the right product


def drawn_interactions(config: SyntheticConfig, threads: int) -> sp.csr_matrix:
    """The users × items matrix of the interactions `recsys-generate` writes for ``config``, drawn in memory."""
    draw = SyntheticDraw.build(config)
    blocks = range(-(-config.n_users // USERS_PER_BLOCK))
    with ThreadPoolExecutor(threads) as pool:
        drawn = pool.map(partial(draw.block, users_per_block=USERS_PER_BLOCK), blocks)
        keys = np.concatenate(list(progress(drawn, desc="draw", unit="block")))  # sorted: blocks come in user order
    users, items = np.divmod(keys, config.n_items)
    indptr = np.zeros(config.n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=config.n_users), out=indptr[1:])
    ones = np.ones(keys.size, dtype=np.float32)
    return sp.csr_matrix((ones, items, indptr), shape=(config.n_users, config.n_items))


def median_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float, float]:
    """(median, fastest, slowest) seconds of ``run`` over ``repeats``, after one untimed call."""

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    run()
    synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times), max(times)


def copy_bandwidth(device: torch.device, megabytes: int, repeats: int) -> float:
    """Bytes read plus written per second by a device-to-device copy of ``megabytes``."""
    source = torch.rand(megabytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    seconds, _, _ = median_seconds(lambda: target.copy_(source), device, repeats)
    return 2 * source.numel() * 4 / seconds


def checked(adjacency: sp.csr_matrix, x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise unless rows of ``y`` equal scipy's Â X: a wrong product would be timed for nothing."""
    rows = np.unique(np.linspace(0, adjacency.shape[0] - 1, CHECKED_ROWS).astype(np.int64))
    expected = adjacency[rows] @ x.cpu().numpy()
    if not np.allclose(y[torch.from_numpy(rows).to(y.device)].cpu().numpy(), expected, rtol=1e-4, atol=1e-5):
        raise AssertionError("the timed product differs from scipy's")


def measure(args: Any) -> list[dict[str, Any]]:
    """One record per index width in ``args.indices``, all on the same graph and vectors."""
    device = torch.device(args.device)
    config = SyntheticConfig(
        n_users=args.users, n_items=args.items, mean_items_per_user=args.interactions_per_user,
        max_items_per_user=args.max_items_per_user, activity="power-law", n_communities=args.communities,
        seed=args.seed,
    )  # fmt: skip
    started = time.perf_counter()
    adjacency = normalized_adjacency(drawn_interactions(config, args.threads or usable_cores()))
    built = time.perf_counter() - started
    x = torch.randn(adjacency.shape[0], args.dim, device=device)
    ceiling = copy_bandwidth(device, args.copy_mb, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    nodes, nnz, row_bytes = adjacency.shape[0], adjacency.nnz, args.dim * 4
    records = []
    for width in args.indices:
        on_device = to_torch_sparse(adjacency, device, indices=np.dtype(width))
        checked(adjacency, x, on_device @ x)
        seconds, fastest, slowest = median_seconds(partial(torch.matmul, on_device, x), device, args.repeats)
        index_bytes = np.dtype(width).itemsize
        csr = (nodes + 1) * index_bytes + nnz * (index_bytes + 4)
        least, most = csr + 2 * nodes * row_bytes, csr + nnz * row_bytes + nodes * row_bytes
        records.append({
            "benchmark": "propagation_bandwidth", "commit": commit(), "machine": name, "users": args.users,
            "items": args.items, "interactions": int(adjacency.nnz // 2), "nnz": int(nnz), "dim": args.dim,
            "index_bits": 8 * index_bytes, "graph_seconds": round(built, 1), "product_ms": round(seconds * 1e3, 3),
            "product_ms_range": [round(fastest * 1e3, 3), round(slowest * 1e3, 3)], "repeats": args.repeats,
            "copy_gb_per_s": round(ceiling / 1e9, 1),
            "bytes_least": int(least), "bytes_most": int(most),
            "gb_per_s_least": round(least / seconds / 1e9, 1), "gb_per_s_most": round(most / seconds / 1e9, 1),
            "share_of_copy_least": round(least / seconds / ceiling, 3),
            "share_of_copy_most": round(most / seconds / ceiling, 3),
            "step_propagation_ms": round(2 * args.layers * seconds * 1e3, 3), "layers": args.layers,
        })  # fmt: skip
        del on_device  # the next width's copy is built without this one beside it
    return records


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interactions-per-user", type=float, default=20.1, help="as benchmarks.industrial_scale")
    parser.add_argument("--max-items-per-user", type=int, default=10_000, help="recsys-generate's default")
    parser.add_argument("--communities", type=int, default=100, help="recsys-generate's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3, help="K: a step propagates 2K times")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--copy-mb", type=int, default=4096, help="size of the copied tensor")
    parser.add_argument("--threads", type=int, default=None, help="threads drawing the graph (default: all cores)")
    parser.add_argument("--indices", nargs="+", choices=("int32", "int64"), default=["int32", "int64"],
                        help="CSR index widths to time, each on the same graph")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "propagation_bandwidth.json")
    args = parser.parse_args(argv)
    records = measure(args)
    append_records(args.out, records)
    header = ["machine", "nodes", "nnz", "d", "index bits", "Â X ms", "copy GB/s", "GB/s (reused … not)",
              "share of copy", "2K products ms"]  # fmt: skip
    rows = [[r["machine"], f"{args.users + args.items:,}", f"{r['nnz']:,}", args.dim, r["index_bits"], r["product_ms"],
             r["copy_gb_per_s"], f"{r['gb_per_s_least']} … {r['gb_per_s_most']}",
             f"{r['share_of_copy_least']:.0%} … {r['share_of_copy_most']:.0%}", r["step_propagation_ms"]]
            for r in records]  # fmt: skip
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
