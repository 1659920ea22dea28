"""How much collaborative signal do the fixed hash codes carry before any training? (issue #6)

    python -m benchmarks.hash_code_probe --dataset gowalla --data-dir ../shared/data --bits 192 --hops 0 1 2 3 4 5

For each hop count the codes of index.hash_codes.graph_codes are made from the training graph and every
user's validation items are ranked by Hamming agreement between the user's code and each item's code (training
items excluded, ties by item id): no decoder, no training. Propagated codes (hops ≥ 1) hash both sides with
one item-side projection, so agreement means similar smoothed neighbourhoods; raw-row codes (hops 0) use one
projection per side, so their agreement is chance. A CPU job; prints a table and writes --out (JSON list).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import RESULTS, append_records, benchmark_parser, progress
from index.hash_codes import graph_codes
from trainer.data import load_dataset
from trainer.evaluate import device_metrics


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--dataset", default="gowalla", help="a dataset name under --data-dir, or a path")
    parser.add_argument("--data-dir", type=Path, default=None, help="where named datasets live")
    parser.add_argument("--bits", type=int, default=192, help="hash code bits per node")
    parser.add_argument("--hops", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="hop counts to probe")
    parser.add_argument("--seed", type=int, default=2024, help="the projection's seed (and the split's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "hash_code_probe.json")
    args = parser.parse_args()
    data = load_dataset(args.dataset, data_dir=args.data_dir, seed=args.seed)
    rows = []
    for hops in progress(args.hops, "hop counts", "code"):
        started = time.perf_counter()
        codes, _ = graph_codes(data.train, args.bits, seed=args.seed, hops=(hops,))
        code_seconds = time.perf_counter() - started
        signs = torch.from_numpy(codes.astype(np.float32) * 2 - 1)
        metrics = device_metrics(
            signs[: data.n_users], signs[data.n_users :], data.valid, data.train, integer_scores=True
        )
        rows.append({"dataset": data.name, "bits": args.bits, "hops": hops, "code_seconds": round(code_seconds, 2),
                     **{f"valid_{k}": round(v, 5) for k, v in metrics.items()}})  # fmt: skip
    append_records(args.out, rows)
    print(f"\n{data.name}, {args.bits}-bit codes, items ranked by code agreement alone (validation split)")
    print(f"{'hops':>5}{'R@20':>9}{'N@20':>9}{'R@50':>9}{'codes s':>9}")
    for row in rows:
        print(f"{row['hops']:>5}{row['valid_recall@20']:>9.4f}{row['valid_ndcg@20']:>9.4f}"
              f"{row['valid_recall@50']:>9.4f}{row['code_seconds']:>9.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
