"""Quantize a trained full-precision bundle after the fact: the bar quantization-aware training must clear.

    python -m benchmarks.post_training_quantization var/bundles/<fp bundle> --dataset ml-100k \\
        --data-dir ../shared/data

Scores the test set (training items masked) with the fp vectors, their signs (1 bit), per-node quartile
codes with per-node level tables (GNAQ's served form, 2 bits) and per-node uniform 2-bit levels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.harness import benchmark_parser
from index.bundle import Bundle
from index.codes import CodeLayout
from trainer.data import load_dataset
from trainer.evaluate import device_metrics
from trainer.quantization.gnaq import bin_means, quartile_bins


def quartile_levels(x: torch.Tensor) -> torch.Tensor:
    codes = quartile_bins(x)
    return bin_means(x, codes).gather(1, codes)


def uniform_two_bit(x: torch.Tensor) -> torch.Tensor:
    """Per node, levels ±a, ±3a with a = mean|x| / 2."""
    step = x.abs().mean(dim=1, keepdim=True) / 2
    return (torch.round((x / step + 3) / 2).clamp(0, 3) * 2 - 3) * step


FORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "fp (32 bits)": lambda x: x,
    "sign (1 bit)": torch.sign,
    "quartile codes + level table (2 bits)": quartile_levels,
    "uniform per node (2 bits)": uniform_two_bit,
}


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("bundle", type=Path, help="an fp bundle, or a root whose CURRENT names one")
    parser.add_argument("--dataset", required=True, help="the dataset it was trained on")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    bundle = Bundle.load(args.bundle)
    if bundle.layout is not CodeLayout.FLOAT32:
        parser.error(f"{bundle.path} holds {bundle.layout} codes; post-training quantization starts from fp")
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    users, items = torch.from_numpy(bundle.user_codes), torch.from_numpy(bundle.item_codes)
    print(f"{'form':<40}{'R@20':>8}{'N@20':>8}")
    for name, quantize in FORMS.items():
        metrics = device_metrics(quantize(users), quantize(items), data.test, data.seen(), integer_scores=False)
        print(f"{name:<40}{metrics['recall@20']:>8.4f}{metrics['ndcg@20']:>8.4f}")


if __name__ == "__main__":
    main()
