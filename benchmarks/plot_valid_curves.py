"""Plot validation Recall@20 against training time from `recsys-train` logs (one curve per log).

    python -m benchmarks.plot_valid_curves fp.log ste.log --out benchmarks/results/gowalla_valid_curves.png

The trainer logs one JSON object per validation (`"event": "valid"`); refit runs log none.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

from benchmarks.harness import benchmark_parser

matplotlib.use("Agg")
import matplotlib.pyplot as plt

EVENT = re.compile(r"(\{\"event\": \"valid\".*\})")


def read_curve(log: Path) -> tuple[list[int], list[float]]:
    epochs, recall = [], []
    for match in EVENT.finditer(log.read_text(errors="replace")):
        record = json.loads(match.group(1))
        epochs.append(record["epoch"] + 1)
        recall.append(record["recall@20"])
    return epochs, recall


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("logs", nargs="+", type=Path, help="recsys-train logs; the file stem labels the curve")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default="Validation Recall@20 while training")
    args = parser.parse_args()
    figure, axes = plt.subplots(figsize=(7, 4))
    print(f"{'run':<12}{'evals':>6}{'best R@20':>11}{'at epoch':>10}")
    for log in args.logs:
        epochs, recall = read_curve(log)
        axes.plot(epochs, recall, label=log.stem)
        best = max(range(len(recall)), key=recall.__getitem__)
        print(f"{log.stem:<12}{len(recall):>6}{recall[best]:>11.4f}{epochs[best]:>10}")
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation Recall@20")
    axes.set_title(args.title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
