from pathlib import Path

import numpy as np

from benchmarks.serve_start import Timed, percentile_ms, slowest


def test_the_slowest_requests_carry_their_users_seen_counts(tmp_path: Path) -> None:
    np.savez(tmp_path / "seen.npz", indptr=np.array([0, 1, 5001, 5011]), indices=np.zeros(5011, dtype=np.int64))
    timed = [Timed("light", 0.0, 0.010), Timed("heavy", 0.5, 0.400), Timed("unknown-3", 0.2, 0.300),
             *(Timed("middle", 0.1 * n, 0.012) for n in range(197))]  # fmt: skip
    worst = slowest(timed, tmp_path, {"light": 0, "heavy": 1, "middle": 2})
    assert worst == [{"ms": 400.0, "sent_s": 0.5, "seen": 5000}, {"ms": 300.0, "sent_s": 0.2, "seen": None}]


def test_percentiles_are_read_from_sorted_latencies_and_stay_in_range() -> None:
    latencies = [n / 1000 for n in range(1, 1001)]
    assert percentile_ms(latencies, 0.5) == 501.0 and percentile_ms(latencies, 0.999) == 1000.0
    assert percentile_ms([0.002], 0.999) == 2.0
