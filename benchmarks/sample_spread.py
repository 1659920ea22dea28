"""How many keys the Triton backend's tight bound lets through when the catalogue is numbered cluster by cluster.

    python -m benchmarks.sample_spread
    python -m benchmarks.sample_spread --items 200000 --queries 8

The threshold pass bounds each query's answer from the distances of a sample of items, and the collect pass keeps
every item within that bound in a buffer of ``plan_chunks(...).capacity`` slots; more than that is a redo (a host
round trip and another pass over the codes). The bound's arithmetic assumes a sample that is random with respect to
the codes. This simulates it exactly, on the CPU, for a catalogue whose ids follow its clusters (items numbered by
category, by cluster, by when they were added): random centres, each item its centre with ``--noise`` of its bits
flipped, ids in cluster order, queries from the last cluster. Two samples of the same size are compared: the
catalogue's first items (the backend before the spread sample) and ``chunking.spread_sample``. The JSON record goes
to benchmarks/results/sample_spread.json; a table ends the output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from benchmarks.harness import RESULTS, append_records, benchmark_parser, commit, markdown_table
from index.hamming import hamming_distances
from index.retrieval.chunking import plan_chunks, sample_group, spread_sample, tight_rank


def distances(query: npt.NDArray[np.uint8], codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.int32]:
    return hamming_distances(query[None, :], codes)[0]


def tight_bound(query: npt.NDArray[np.uint8], sampled: npt.NDArray[np.uint8], k: int, n_items: int) -> int:
    """The backend's tight bound from ``sampled`` codes: the j-th smallest group minimum (``TritonBackend.bounds``)."""
    near = distances(query, sampled)
    group = sample_group(sampled.shape[0], k)
    padded = np.r_[near, np.full(-near.size % group, np.iinfo(np.int32).max, np.int32)]
    minima = np.sort(padded.reshape(-1, group).min(axis=1))
    return int(minima[tight_rank(n_items, sampled.shape[0], k) - 1])


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--bits", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--noise", type=float, default=0.15, help="share of an item's bits flipped from its centre")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--queries", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64, help="queries per search (sets the plan's sample size)")
    parser.add_argument("--out", type=Path, default=RESULTS / "sample_spread.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 2, (args.clusters, args.bits), dtype=np.uint8)
    cluster = np.sort(rng.integers(0, args.clusters, args.items))  # ids in cluster order
    codes = np.packbits(centres[cluster] ^ (rng.random((args.items, args.bits)) < args.noise), axis=1)
    queries = np.packbits(centres[-1] ^ (rng.random((args.queries, args.bits)) < args.noise), axis=1)
    plan = plan_chunks(args.items, args.batch, args.k)
    samples = {"first items": np.arange(plan.n_sample), "spread": spread_sample(args.items, plan.n_sample)}
    rows = []
    for name, sample in samples.items():
        passed = [
            int(np.count_nonzero(distances(query, codes) <= tight_bound(query, codes[sample], args.k, args.items)))
            for query in tqdm(queries, desc=name, unit="query", leave=False)
        ]
        rows.append({
            "sample": name, "items": args.items, "bits": args.bits, "clusters": args.clusters, "k": args.k,
            "n_sample": plan.n_sample, "capacity": plan.capacity, "queries": args.queries,
            "keys_median": int(np.median(passed)), "keys_max": max(passed),
            "redone": sum(count > plan.capacity for count in passed), "commit": commit(),
        })  # fmt: skip
    append_records(args.out, rows)
    header = ["sample", "sampled items", "key slots", "keys passed, median", "max", "queries redone"]
    print(markdown_table(header, [[r["sample"], r["n_sample"], r["capacity"], r["keys_median"], r["keys_max"],
                                   f"{r['redone']} of {r['queries']}"] for r in rows]))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
