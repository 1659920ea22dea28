"""Inductive cold start: users held out of training entirely, served through the history path.

    python -m benchmarks.cold_start --dataset ml-100k --data-dir ../shared/data --method hq --bits 1 \\
        --extra "--epochs 400 --eval-every 5 --patience 6 --lr-decay-patience 3 --batch-size 4096 --lr 5e-3"

A seeded 10 % of the users with test items lose every training and validation interaction (the model never
sees them). Two models are trained with the same options: `trained-on` on all users, `held-out` without those
users. For the held-out users, Recall/NDCG on their test items are reported three ways: (1) their codes
derived from their training items by the bundle's cold-start path (service.cold_start, the same code the
service computes for `histories`), (2) the `trained-on` model's own codes for them, (3) popular items. Seen
items are excluded in all three. Records go to --out (JSON list) and a table is printed.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from benchmarks.harness import RESULTS, append_records, benchmark_parser, markdown_table
from index.bundle import Bundle
from index.item_index import ItemIndex
from service.cold_start import ColdStart
from trainer.cli import build_parser, train_config
from trainer.config import TrainConfig
from trainer.data import Dataset, load_dataset
from trainer.export import export_bundle
from trainer.metrics import ranking_metrics
from trainer.quantization import METHODS
from trainer.train import refit, train


def without_users(data: Dataset, users: np.ndarray) -> Dataset:
    keep = np.ones(data.n_users, dtype=np.float32)
    keep[users] = 0
    mask = sp.diags(keep)
    return dataclasses.replace(data, train=sp.csr_matrix(mask @ data.train), valid=sp.csr_matrix(mask @ data.valid))


def trained_bundle(data: Dataset, config: TrainConfig, use_refit: bool, root: Path) -> Bundle:
    result = train(data, config)
    if use_refit:
        result = refit(data, config, result)
    return Bundle.load(export_bundle(result, data, config, root).bundle_path)


def evaluate(topk: np.ndarray, users: np.ndarray, truth: sp.csr_matrix) -> dict[str, float]:
    return {k: round(v, 5) for k, v in ranking_metrics(topk, users, truth).items()}


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    coded = [name for name, method in METHODS.items() if method.encoder is not None]  # those that code new users
    parser.add_argument("--method", default="hq", choices=coded)
    parser.add_argument("--bits", type=int, default=None)
    parser.add_argument("--input-layer", default="hash", choices=["hash", "table"])
    parser.add_argument("--fraction", type=float, default=0.1, help="share of users held out")
    parser.add_argument("--refit", action="store_true")
    parser.add_argument("--extra", default="", help="recsys-train options (epochs, lr, batch size, ...)")
    parser.add_argument("--out", type=Path, default=RESULTS / "cold_start.json")
    args = parser.parse_args()
    train_args = build_parser().parse_args(
        ["--method", args.method, "--input-layer", args.input_layer, *(["--bits", str(args.bits)] if args.bits else []),
         *shlex.split(args.extra)]
    )  # fmt: skip
    config = train_config(train_args)
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    testers = np.flatnonzero(np.diff(data.test.indptr) > 0)
    rng = np.random.default_rng(config.optim.seed)
    cold = np.sort(rng.choice(testers, size=max(1, int(args.fraction * testers.size)), replace=False))
    seen = data.seen()
    k = 50
    with tempfile.TemporaryDirectory() as tmp:
        full = trained_bundle(data, config, args.refit, Path(tmp) / "full")
        held = trained_bundle(without_users(data, cold), config, args.refit, Path(tmp) / "held")
        histories = [seen.indices[seen.indptr[u] : seen.indptr[u + 1]].astype(np.int64) for u in cold]
        assert held.cold_start is not None
        cold_codes = np.stack([ColdStart(held.cold_start, use_hashed_ego=True).code(h) for h in histories])
        held_index = ItemIndex.for_bundle(held, device="cpu")
        from_history = held_index.search(cold_codes, k, exclude=histories).ids
        zero_ego = ColdStart(held.cold_start, use_hashed_ego=False)
        from_history_zero_ego = held_index.search(
            np.stack([zero_ego.code(h) for h in histories]), k, exclude=histories
        ).ids
        full_index = ItemIndex.for_bundle(full, device="cpu")
        trained_on = full_index.search(np.asarray(full.user_codes[cold]), k, exclude=histories).ids
    counts = np.bincount(seen.indices, minlength=data.n_items)
    order = np.lexsort((np.arange(data.n_items), -counts))
    popular = np.stack([order[~np.isin(order, h)][:k] for h in histories])
    results = {
        "cold start, decoded hash ego": evaluate(from_history, cold, data.test),
        "cold start, zero ego (served)": evaluate(from_history_zero_ego, cold, data.test),
        "trained on": evaluate(trained_on, cold, data.test),
        "popular": evaluate(popular, cold, data.test),
    }
    method = f"{args.input_layer}+{args.method}{args.bits or ''}"
    record: dict[str, Any] = {
        "dataset": data.name, "method": method, "held_out_users": int(cold.size), "extra": args.extra,
        "refit": args.refit, **results,
    }  # fmt: skip
    append_records(args.out, [record])
    base = results["trained on"]["recall@20"]
    print(f"\n{data.name}, {cold.size} held-out users, {record['method']}")
    rows = [
        (name, f"{metrics['recall@20']:.4f}", f"{metrics['ndcg@20']:.4f}", f"{metrics['recall@20'] / base:.0%}")
        for name, metrics in results.items()
    ]
    print(markdown_table(("path", "Recall@20", "NDCG@20", "of trained-on"), rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
