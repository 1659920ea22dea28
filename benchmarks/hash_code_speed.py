"""Seconds and peak host memory of the hashed input layer's codes (index.hash_codes.graph_codes) per thread count.

    python -m benchmarks.hash_code_speed --users 1000000 --items 1000000 --edges 14000000 --threads 1 2

Builds benchmarks.hash_scale's power-law graph, codes it with the trainer's default options (64 bits, 3 hops) once
per ``--threads`` value and checks that every thread count gave the first one's codes and arrays, bit for bit.
Peak memory is the process's (ru_maxrss), which the graph's construction may already have set: ``before`` says
what the process held when coding started.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import RESULTS, append_records, benchmark_parser, commit, markdown_table
from benchmarks.hash_scale import synthetic_graph
from index.hash_codes import graph_codes


def gib(kib: int) -> float:
    return round(kib / 2**20, 2)


def resident_kib() -> int:
    """The process's resident memory now (ru_maxrss only gives the peak)."""
    fields = Path("/proc/self/status").read_text().split("VmRSS:")[1].split()
    return int(fields[0])


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--edges", type=int, default=14_000_000, help="interactions drawn (duplicates merged)")
    parser.add_argument("--bits", type=int, default=64, help="as --hash-bits")
    parser.add_argument("--hops", type=int, nargs="+", default=[3], help="as --hash-hops")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to time, in turn")
    parser.add_argument("--out", type=Path, default=RESULTS / "hash_code_speed.json")
    args = parser.parse_args()
    train = synthetic_graph(args.users, args.items, args.edges, seed=0)
    first: tuple[np.ndarray[Any, Any], dict[str, np.ndarray[Any, Any]]] | None = None
    rows = []
    for threads in args.threads:
        before = resident_kib()
        started = time.perf_counter()
        codes, arrays = graph_codes(train, args.bits, seed=0, hops=tuple(args.hops), threads=threads)
        seconds = time.perf_counter() - started
        first = first or (codes, arrays)
        same = np.array_equal(codes, first[0]) and all(a.tobytes() == first[1][k].tobytes() for k, a in arrays.items())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows.append({"benchmark": "hash_code_speed", "commit": commit(), "users": args.users, "items": args.items,
                     "nnz": int(train.nnz), "bits": args.bits, "hops": args.hops, "threads": threads,
                     "seconds": round(seconds, 2), "rss_before_gib": gib(before), "peak_rss_gib": gib(peak),
                     "same_bits": same})  # fmt: skip
        del codes, arrays
    append_records(args.out, rows)
    keys = ("threads", "seconds", "rss_before_gib", "peak_rss_gib", "same_bits")
    print(markdown_table(keys, [[row[k] for k in keys] for row in rows]))


if __name__ == "__main__":
    main()
