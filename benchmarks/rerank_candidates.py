"""How many candidates does the re-rank of scaled codes (bigear, gnaq) need? Served vs exact Recall@20.

    python -m benchmarks.rerank_candidates var/bundles --dataset gowalla --data-dir ../shared/data \\
        --factors 10 40 200 --heavy 0 500 --out benchmarks/results/rerank_candidates.json

For each (Hamming candidates per requested item, largest-norm items added) it scores the test set through
``ItemIndex`` exactly as the service would, beside the exact ranking stored in the bundle's manifest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.harness import benchmark_parser
from index.bundle import Bundle
from index.item_index import ItemIndex
from trainer.data import load_dataset
from trainer.evaluate import served_path_metrics


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("bundle", type=Path, help="a bundle with scales, or a root whose CURRENT names one")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--factors", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--heavy", type=int, nargs="+", default=[0, 500])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    bundle = Bundle.load(args.bundle)
    if bundle.item_scales is None:
        parser.error(f"{bundle.path} has no item scales: its codes are searched exactly, without re-ranking")
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    exact = bundle.manifest.training["test_device_path"]["recall@20"]
    rows = []
    print(f"{'factor':>7}{'heavy':>7}{'R@20':>9}{'of exact':>10}{'seconds':>9}")
    for factor in args.factors:
        for heavy in args.heavy:
            index = ItemIndex.build(
                bundle.item_codes, bundle.layout, bundle.dim, device="cpu", item_scales=bundle.item_scales,
                scale_mode=bundle.manifest.scale_mode, rerank_factor=factor, heavy_items=heavy,
            )  # fmt: skip
            started = time.perf_counter()
            metrics = served_path_metrics(
                bundle.user_codes, bundle.item_codes, bundle.layout, bundle.dim, data.test, data.seen(),
                user_scales=bundle.user_scales, item_scales=bundle.item_scales,
                scale_mode=bundle.manifest.scale_mode, index=index,
            )  # fmt: skip
            seconds = time.perf_counter() - started
            rows.append({"factor": factor, "heavy": heavy, "recall@20": metrics["recall@20"], "seconds": seconds})
            print(
                f"{factor:>7}{heavy:>7}{metrics['recall@20']:>9.4f}{metrics['recall@20'] / exact:>9.0%}{seconds:>9.1f}"
            )
    print(f"exact Recall@20 {exact:.4f} ({bundle.manifest.method}, {bundle.manifest.model_version})")
    if args.out is not None:
        args.out.write_text(
            json.dumps({"bundle": bundle.manifest.model_version, "exact": exact, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
