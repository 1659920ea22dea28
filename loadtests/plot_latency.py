"""Latency percentiles against the request rate, from locust's ``--csv-full-history`` time series.

    python loadtests/plot_latency.py var/loadtest/locust_stats_history.csv var/loadtest/latency.png

While users ramp up (``--spawn-rate``) the offered rate climbs, so one run traces where latency starts
to bend. Uses the "Aggregated" rows (all requests). Prints a note and exits 0 when matplotlib is absent
(the load-test image has none): the CSV and HTML reports are what gates a run.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

PERCENTILES = ("50%", "95%", "99%")


def read_history(path: Path) -> list[dict[str, float]]:
    """(requests/s, p50, p95, p99) per sample of the aggregated row, samples with traffic only."""
    rows = []
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get("Name") != "Aggregated":
                continue
            try:
                point = {"rps": float(row["Requests/s"]), **{p: float(row[p]) for p in PERCENTILES}}
            except (KeyError, ValueError):  # "N/A" before the first response
                continue
            if point["rps"] > 0:
                rows.append(point)
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: plot_latency.py LOCUST_STATS_HISTORY_CSV OUT_PNG", file=sys.stderr)
        return 2
    source, target = Path(argv[0]), Path(argv[1])
    try:
        import matplotlib
    except ImportError:
        print("plot_latency: matplotlib is not installed; no latency plot", file=sys.stderr)
        return 0
    points = read_history(source) if source.is_file() else []
    if not points:
        print(f"plot_latency: no traffic samples in {source}; no latency plot", file=sys.stderr)
        return 0
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    points.sort(key=lambda point: point["rps"])
    for percentile in PERCENTILES:
        axis.plot([p["rps"] for p in points], [p[percentile] for p in points], marker=".", label=f"p{percentile[:-1]}")
    axis.set(xlabel="requests/s (all endpoints)", ylabel="latency (ms)", title="Latency against request rate")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    print(f"plot_latency: {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
