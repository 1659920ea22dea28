"""Where a sharded search's time goes: one GPU's whole catalogue against its halves, alone and together.

    python -m benchmarks.shard_probe --n-items 100000000 1000000000 --batches 64 1024 --out shard_probe.json

For each catalogue and batch it times (median ms, warm) the whole catalogue on GPU 0; each half alone on its
GPU (GPUs 0 and 1; both on GPU 0 where there is one); both halves one after another from one thread; both from
their own threads (``ShardedBackend``, as served), with each thread's own search time; the host merge of the two
answers; a graphed search cut at its host steps; and the GPU kernels of the whole and of a half
(``kernel_times``). If a half alone takes about half the whole, sharding scales and any loss is the threads' or
the merge's; if a half alone takes much more than half, the search has per-query work that does
not shrink with the shard. Prints a table, saves JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import benchmark_parser, commit, markdown_table
from benchmarks.retrieval import device_name, kernel_times, random_codes, random_word_major, timed


def median_ms(call: Callable[[], Any], repeats: int) -> float:
    return timed(call, repeats, budget_s=float("inf"))[0]


def threaded_ms(shards: list[Any], queries: Any, k: int, repeats: int) -> tuple[float, list[float]]:
    """Both halves from their own threads; the wall time and each thread's own search time (medians)."""
    walls: list[float] = []
    own: list[list[float]] = [[] for _ in shards]

    def one(index: int) -> None:
        started = time.perf_counter()
        shards[index].search(queries, k)
        own[index].append(time.perf_counter() - started)

    for repeat in range(repeats + 1):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(shards))]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if repeat:
            walls.append(time.perf_counter() - started)
    return 1000 * statistics.median(walls), [1000 * statistics.median(times[1:]) for times in own]


def _in_turn(backends: list[Any], queries: Any, k: int) -> None:
    for backend in backends:
        backend.search(queries, k)


def graphed_split_ms(backend: Any, queries: Any, k: int, repeats: int) -> dict[str, float]:
    """A graphed search's wall time cut at its host steps (median ms): queries in, replay launched, GPU done,
    answers copied back and split — says whether time beyond the kernels is the host's or a wait."""
    import torch

    from index.retrieval.chunking import graph_k, graph_queries
    from index.retrieval.torch_backend import split_keys

    n_padded, k_padded = graph_queries(queries.shape[0]), graph_k(k, backend.n_items)
    steps: dict[str, list[float]] = {"queries in": [], "replay": [], "gpu wait": [], "answers out": []}
    with torch.cuda.device(backend.device):
        captured = backend._capture(n_padded, k_padded)
        if captured is None:
            return {}
        for _ in range(repeats):
            torch.cuda.synchronize(backend.device)
            marks = [time.perf_counter()]
            backend._load_queries(captured, queries)
            marks.append(time.perf_counter())
            captured.graph.replay()
            marks.append(time.perf_counter())
            torch.cuda.synchronize(backend.device)
            marks.append(time.perf_counter())
            split_keys(backend._answers([captured.chunk], captured.packed, k_padded)[: queries.shape[0], :k])
            marks.append(time.perf_counter())
            for name, start, end in zip(steps, marks, marks[1:], strict=False):
                steps[name].append(end - start)
    return {name: round(1000 * statistics.median(times), 3) for name, times in steps.items()}


def probe(n_items: int, batches: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from index.retrieval.base import select_topk
    from index.retrieval.sharded import ShardedBackend, shard_bounds
    from index.retrieval.triton_backend import TritonBackend

    n_bytes, gpus = args.bits // 8, torch.cuda.device_count()  # one GPU: both halves on it (threads then contend)
    whole = TritonBackend.from_word_major(random_word_major(n_items, n_bytes, "cuda:0", 0), n_bytes)
    halves = [
        TritonBackend.from_word_major(random_word_major(stop - start, n_bytes, f"cuda:{gpu % gpus}", gpu + 1), n_bytes)
        for gpu, (start, stop) in enumerate(shard_bounds(n_items, 2))
    ]
    sharded = ShardedBackend.from_shards(halves)
    rows = []
    for batch in batches:
        queries = random_codes(batch, n_bytes, seed=batch + 1)
        k = args.k
        parts = [half.search(queries, k) for half in halves]
        distances = np.concatenate([p.distances for p in parts], axis=1)
        ids = np.concatenate([parts[0].ids, parts[1].ids + halves[0].n_items], axis=1)
        threads_wall, threads_own = threaded_ms(halves, queries, k, args.repeats)
        row = {
            "n_items": n_items, "code_bits": args.bits, "batch": batch, "k": k,
            "whole_ms": median_ms(partial(whole.search, queries, k), args.repeats),
            "half0_ms": median_ms(partial(halves[0].search, queries, k), args.repeats),
            "half1_ms": median_ms(partial(halves[1].search, queries, k), args.repeats),
            "halves_in_turn_ms": median_ms(partial(_in_turn, halves, queries, k), args.repeats),
            "halves_threaded_ms": threads_wall,
            "halves_threaded_own_ms": threads_own,
            "sharded_ms": median_ms(partial(sharded.search, queries, k), args.repeats),
            "merge_ms": median_ms(partial(select_topk, distances, ids, k), args.repeats),
            "whole_split": graphed_split_ms(whole, queries, k, args.repeats),
            "half_split": graphed_split_ms(halves[0], queries, k, args.repeats),
            "whole_kernels": kernel_times(partial(whole.search, queries, k)),
            "half_kernels": kernel_times(partial(halves[0].search, queries, k)),
            "device": device_name(), "commit": commit(),
        }  # fmt: skip
        print(json.dumps({key: value for key, value in row.items() if "kernels" not in key}), flush=True)
        rows.append(row)
    del whole, halves, sharded
    torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--n-items", type=int, nargs="+", default=[100_000_000])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--bits", type=int, default=256)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("shard_probe.json"))
    args = parser.parse_args()
    rows = [row for n_items in args.n_items for row in probe(n_items, args.batches, args)]
    args.out.write_text(json.dumps(rows, indent=2))
    columns = ["whole_ms", "half0_ms", "half1_ms", "halves_in_turn_ms", "halves_threaded_ms", "sharded_ms", "merge_ms"]
    header = ["items", "batch", *(c.removesuffix("_ms") for c in columns), "kernels whole / half"]
    table = [
        (f"{row['n_items']:,}", row["batch"], *(f"{row[c]:.2f}" for c in columns),
         f"{row['whole_kernels']['total']:.2f} / {row['half_kernels']['total']:.2f}")
        for row in rows
    ]  # fmt: skip
    print(markdown_table(header, table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
