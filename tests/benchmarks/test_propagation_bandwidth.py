"""benchmarks.propagation_bandwidth: the product it times is the trainer's, on the graph recsys-generate writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.propagation_bandwidth import checked, drawn_interactions, main
from trainer.data.generate import write_synthetic
from trainer.data.synthetic import SyntheticConfig
from trainer.graph import normalized_adjacency

CONFIG = SyntheticConfig(n_users=70_000, n_items=3_000, mean_items_per_user=8.0, activity="power-law", seed=4)


def test_the_drawn_graph_is_the_one_recsys_generate_writes(tmp_path: Path) -> None:
    """Several blocks of users, drawn in threads: the same pairs as the file, in the same order."""
    written = write_synthetic(CONFIG, tmp_path / "graph.csv", threads=2)
    pairs = np.loadtxt(written.path, delimiter=",", skiprows=1, dtype=np.int64)
    drawn = drawn_interactions(CONFIG, threads=3).tocoo()
    assert drawn.nnz == written.interactions == len(pairs)
    assert np.array_equal(drawn.row, pairs[:, 0]) and np.array_equal(drawn.col, pairs[:, 1])


def test_a_product_that_is_not_the_adjacencys_is_refused() -> None:
    adjacency = normalized_adjacency(drawn_interactions(CONFIG, threads=2))
    x = torch.randn(adjacency.shape[0], 8)
    y = torch.from_numpy(adjacency @ x.numpy())
    checked(adjacency, x, y)
    y[-1, 0] += 1e-2  # the last row is among those compared
    with pytest.raises(AssertionError, match="differs from scipy"):
        checked(adjacency, x, y)


def test_the_record_counts_the_graph_and_its_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bandwidth.json"
    argv = ["--users", "3000", "--items", "2000", "--interactions-per-user", "10", "--device", "cpu", "--dim", "16",
            "--repeats", "3", "--copy-mb", "16", "--threads", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    narrow, wide = json.loads(out.read_text())  # both widths by default, on the same graph
    nodes = 5000
    assert (narrow["index_bits"], wide["index_bits"]) == (32, 64) and narrow["nnz"] == wide["nnz"]
    for record, index_bytes in ((narrow, 4), (wide, 8)):
        assert record["nnz"] == 2 * record["interactions"] >= 2 * 3 * 3000  # every user has at least 3 items
        csr = (nodes + 1) * index_bytes + record["nnz"] * (index_bytes + 4)
        assert record["bytes_least"] == csr + 2 * nodes * 64  # X read once and Y written, d = 16 floats a row
        assert record["bytes_most"] == csr + record["nnz"] * 64 + nodes * 64  # a row of X per nonzero
        assert 0 < record["product_ms_range"][0] <= record["product_ms"] <= record["product_ms_range"][1]
        assert record["share_of_copy_least"] <= record["share_of_copy_most"]
        assert record["step_propagation_ms"] == pytest.approx(6 * record["product_ms"], rel=0.01)
    assert "| cpu (" in capsys.readouterr().out
