"""benchmarks.train_phases: each phase's memory peak is that phase's, not the run's so far."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.train_phases import Phases, phase_peak_mb


@pytest.mark.skipif(phase_peak_mb() is None, reason="needs Linux's /proc/self/status")
def test_a_phase_peak_counts_that_phase_alone() -> None:
    phases = Phases(torch.device("cpu"))

    def hold(megabytes: int) -> int:
        block = np.ones(megabytes * 2**20 // 8)  # touched: resident
        return int(block[-1])

    phases.run("large", lambda: hold(400))
    phases.run("small", lambda: hold(1))
    large, small = phases.rows
    assert large["phase_peak_rss_mb"] >= small["rss_mb"] + 350
    assert small["phase_peak_rss_mb"] < large["phase_peak_rss_mb"] - 350  # the large phase's peak is not carried over
    assert small["peak_rss_mb"] >= large["phase_peak_rss_mb"]  # the process's own peak still is
